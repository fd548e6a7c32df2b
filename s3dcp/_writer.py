"""``S3StorageWriter``: DCP's ``StorageWriter`` for S3.

DCP calls, in this order (torch 2.13, ``dcp.save``/``dcp.async_save``):

0. all ranks: ``reset(checkpoint_id)`` when a checkpoint id is passed;
1. all ranks: ``set_up_storage_writer(is_coordinator, rank=..., use_collectives=...)``;
2. all ranks: ``prepare_local_plan(plan)``: the coordinator checks that no
   complete checkpoint is in the way, then starts storing the save marker
   ``.s3dcp-saving`` in the background, while the plans are gathered;
3. coordinator: ``prepare_global_plan(plans)``: gives each rank its key stem
   (prefix strategy), waits for the marker and, when overwriting, removes
   the old ``.metadata`` so a crash mid-save cannot leave old metadata over
   new shards;
4. all ranks: ``write_data(plan, planner)``: streams shard objects to S3;
5. coordinator: ``finish(metadata, results)``: writes ``.metadata`` last,
   the commit record; create-only unless overwriting (see ``commit``); then
   lists the checkpoint and removes the marker and the shard objects earlier
   saves left there that the new metadata does not reference.

This module only adapts DCP to the pieces below it (``shard``, ``upload``,
``client``); it holds no S3 mechanics of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.futures import Future

from s3dcp._compat.torch import StreamTransform, dcp_version, storage_rank, stream_transform_class
from s3dcp._format.layout import METADATA_NAME, SHARD_SUFFIX
from s3dcp._s3.client import S3Client
from s3dcp._commit import commit_metadata, put_saving_marker, tidy_after_commit
from s3dcp._config import S3ClientConfig, resolve_settings, validate_part_size
from s3dcp._s3.download import object_exists
from s3dcp._errors import CheckpointExistsError, UnsafeCheckpointError
from s3dcp._format.metadata import check_relative_key, dump_metadata
from s3dcp._prefix import DefaultPrefixStrategy, PrefixStrategy, is_prefix_strategy, stems_for
from s3dcp._stats import PhaseCallback, PhaseStats, report_phase
from s3dcp._format.shard import item_nbytes, split_items, write_items
from s3dcp._s3.upload import ObjectUpload, PartBuffers, TransferPool, choose_part_size
from s3dcp._uri import S3Uri, is_s3_uri, parse_s3_uri

__all__ = ["S3StorageWriter"]


def _check_extensions(extensions: Sequence[StreamTransform] | None) -> tuple[StreamTransform, ...]:
    """The writer's stream transforms as a tuple; a ``TypeError`` saying what to pass otherwise."""
    if extensions is None:
        return ()
    if isinstance(extensions, (str, bytes)) or not isinstance(extensions, Sequence):
        raise TypeError(
            "extensions must be a list of DCP StreamTransformExtension instances, e.g. [ZStandard()] "
            f"from torch.distributed.checkpoint._extension, not {type(extensions).__name__}"
        )
    if not extensions:
        return ()
    extension_class = stream_transform_class()
    if extension_class is None:
        raise TypeError(
            "extensions need DCP stream transforms, which this torch does not provide "
            f"(torch {torch.__version__} has no torch.distributed.checkpoint._extension, or a changed one); "
            "save without them, or with a newer torch"
        )
    for extension in extensions:
        if not isinstance(extension, extension_class):
            raise TypeError(
                "each of extensions must be a DCP StreamTransformExtension instance, e.g. ZStandard() "
                f"from torch.distributed.checkpoint._extension, not {extension!r}"
            )
    return tuple(extensions)



@dataclass(frozen=True)
class _RankPrefix:
    """Per-rank storage data of a save plan: the key stem of its shard files."""

    stem: str


class S3StorageWriter(StorageWriter):
    """Save DCP checkpoints straight to ``s3://bucket/prefix``.

    Args:
        region: AWS region of the bucket, or ``None`` for ``AWS_REGION`` /
            ``AWS_DEFAULT_REGION`` / the profile's region.
        path: ``s3://bucket/prefix`` of the checkpoint; ``.metadata`` lands at
            ``prefix/.metadata``.
        s3client_config: endpoint, credentials profile, retries, part size and
            concurrency; defaults suit AWS.
        prefix_strategy: where each rank's shard objects go (see
            :mod:`s3dcp._prefix`); default ``prefix/__{rank}_{i}.distcp``.
        thread_count: shard objects per rank, written in parallel and
            balanced by size. Default 1. Like ``FileSystemWriter``, each rank
            writes exactly this many, empty ones for threads (or a rank) with
            nothing to store, so a synced directory holds the same files.
        part_size: multipart part size in bytes; overrides the config's.
        overwrite: allow saving over a complete checkpoint. Default ``False``:
            raise :class:`~s3dcp._errors.CheckpointExistsError` instead.
        on_phase: called with a :class:`~s3dcp._stats.PhaseStats` as each
            phase of a save ends on this rank (bytes, seconds, MB/s); the
            latest save's phases are also kept in ``last_stats``.
        extensions: DCP stream transforms to pass every item through, as
            ``FileSystemWriter(_extensions=...)`` does, e.g. ``[ZStandard()]``
            (needs ``s3dcp[zstd]``). Default none: items are stored as is.
            Each item's storage record names them (``transform_descriptors``),
            so ``FileSystemReader`` and ``S3StorageReader`` undo them on load.
    """

    def __init__(
        self,
        region: str | None,
        path: str | os.PathLike[str],
        s3client_config: S3ClientConfig | None = None,
        prefix_strategy: PrefixStrategy | None = None,
        *,
        thread_count: int = 1,
        part_size: int | None = None,
        overwrite: bool = False,
        on_phase: PhaseCallback | None = None,
        extensions: Sequence[StreamTransform] | None = None,
    ) -> None:
        super().__init__()
        self.extensions = _check_extensions(extensions)
        if not isinstance(thread_count, int) or isinstance(thread_count, bool) or thread_count < 1:
            raise ValueError(f"thread_count must be an int >= 1, got {thread_count!r}")
        if part_size is not None:
            validate_part_size(part_size)
        if prefix_strategy is not None and not is_prefix_strategy(prefix_strategy):
            raise TypeError(
                "prefix_strategy must be an S3PrefixStrategyBase (e.g. HexPrefixStrategy()) or have a "
                f"generate_prefix(rank) method, not {type(prefix_strategy).__name__}"
            )
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be a bool, got {overwrite!r}")
        self.region = region
        self.s3client_config = s3client_config
        self.prefix_strategy: PrefixStrategy = prefix_strategy or DefaultPrefixStrategy()
        self.thread_count = thread_count
        self.overwrite = overwrite
        self.uri: S3Uri = parse_s3_uri(path)
        self._client = S3Client(resolve_settings(region, s3client_config))
        self.part_size = part_size or self._client.settings.config.part_size
        self._part_buffers = PartBuffers(self._client.settings.config.max_concurrency)
        self.save_id = str(uuid.uuid4())
        self.is_coordinator = False
        self.rank: int | None = None
        self._existing_checkpoint = False
        self._marker: ConcurrentFuture[None] | None = None
        self.on_phase = on_phase
        self.last_stats: list[PhaseStats] = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_marker"] = None  # a request in flight in this process stays here
        return state

    def __repr__(self) -> str:
        return (
            f"S3StorageWriter(path={str(self.uri)!r}, endpoint="
            f"{self._client.settings.describe_endpoint()!r}, thread_count={self.thread_count}, "
            f"part_size={self.part_size}, overwrite={self.overwrite})"
        )

    @property
    def checkpoint_id(self) -> str:
        """The ``s3://`` URI this writer saves to."""
        return str(self.uri)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return is_s3_uri(checkpoint_id)

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.uri = parse_s3_uri(checkpoint_id)
        self._client = S3Client(resolve_settings(self.region, self.s3client_config))
        self.save_id = str(uuid.uuid4())
        self._existing_checkpoint = False
        self._marker = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.last_stats = []
        self.is_coordinator = is_coordinator
        self.rank = storage_rank(kwargs.get("rank"))
        if not kwargs.get("use_collectives", True):
            raise ValueError(
                "S3StorageWriter needs DCP's collective mode (use_collectives=True) "
                "so that one coordinator commits .metadata"
            )

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.checkpoint_id, save_id=self.save_id)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        if self.is_coordinator:
            self._existing_checkpoint = self._metadata_exists()
            if self._existing_checkpoint and not self.overwrite:
                raise CheckpointExistsError(
                    f"{self.uri} already holds a complete checkpoint; save to a new path "
                    "or pass overwrite=True to replace it",
                    bucket=self.uri.bucket,
                    key=self.uri.key(METADATA_NAME),
                )
            # stored while the other ranks' plans are gathered, not after
            self._marker = _in_background(lambda: put_saving_marker(self._client, self.uri, self.save_id))
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        stems = self._key_stems(len(plans))
        marker, self._marker = self._marker, None
        if marker is None:  # prepare_local_plan was not run on this writer (not through dcp.save)
            put_saving_marker(self._client, self.uri, self.save_id)
        else:
            marker.result()
        if self._existing_checkpoint:
            # Un-commit before any shard is replaced, so no crash can leave the old
            # .metadata describing a mix of old and new shard objects.
            self._client.call("delete_object", self.uri.bucket, self.uri.key(METADATA_NAME))
        return [dataclasses.replace(plan, storage_data=_RankPrefix(stem)) for plan, stem in zip(plans, stems)]

    def _key_stems(self, world_size: int) -> list[str]:
        """Each rank's key stem from the prefix strategy, checked before anything is written."""
        strategy = self.prefix_strategy
        name = type(strategy).__name__
        stems = stems_for(strategy, world_size)
        for rank, stem in enumerate(stems):
            try:
                check_relative_key(f"{stem}0{SHARD_SUFFIX}" if isinstance(stem, str) else stem, name)
            except UnsafeCheckpointError:
                raise ValueError(
                    f"{name} gave rank {rank} the key stem {stem!r}, which is not a relative key inside "
                    "the checkpoint (no leading '/', no empty, '.' or '..' segments, no control characters)"
                ) from None
        seen: dict[str, int] = {}
        for rank, stem in enumerate(stems):
            if stem in seen:
                raise ValueError(
                    f"{name} gave ranks {seen[stem]} and {rank} the same key stem {stem!r}; "
                    "their shard objects would overwrite each other"
                )
            seen[stem] = rank
        return stems

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """Upload this rank's shard objects; stops within seconds on Ctrl-C or SIGTERM.

        An interrupt (or any failure) sends no queued part, ends retries,
        aborts every multipart upload and re-raises, so nothing is committed.
        While it runs in the main thread of a process that left SIGTERM at its
        default, SIGTERM raises ``SystemExit(143)`` instead of ending the
        process without that clean-up (see ``_sigterm_raises``). DCP reports
        either as a ``CheckpointException`` whose ``failures`` hold the
        ``KeyboardInterrupt`` or ``SystemExit``.
        """
        stem = plan.storage_data.stem
        buckets = split_items(plan.items, self.thread_count)
        started = time.monotonic()
        # every shard object fills one part while others are sent: keep the two together
        # within about max_concurrency parts, the memory bound the config promises
        in_flight = max(1, self._client.settings.config.max_concurrency - len(buckets) + 1)
        pool = TransferPool(in_flight, self._part_buffers)

        def write_file(index: int) -> list[WriteResult]:
            relative = f"{stem}{index}{SHARD_SUFFIX}"
            items = buckets[index]
            expected = sum(item_nbytes(item) for item in items)
            # torch.save adds about a kilobyte of framing per tensor
            part_size = choose_part_size(expected + 4096 * len(items), self.part_size)
            with ObjectUpload(
                self._client,
                pool,
                self.uri.bucket,
                self.uri.key(relative),
                part_size,
                size_hint=expected + 4096 * len(items),
            ) as upload:
                written = write_items(upload, items, planner, relative, extensions=self.extensions)
            requests.append(upload.requests)  # list.append is atomic: no lock needed
            return written

        requests: list[int] = []

        results: list[WriteResult] = []
        try:
            with _sigterm_raises():
                if len(buckets) <= 1:
                    for index in range(len(buckets)):
                        results.extend(write_file(index))
                else:
                    shards = ThreadPoolExecutor(len(buckets), thread_name_prefix="s3dcp-shard")
                    try:
                        written = [shards.submit(write_file, index) for index in range(len(buckets))]
                        wait_for(written, return_when=FIRST_EXCEPTION)
                        for shard in written:
                            error = shard.exception() if shard.done() else None
                            if error is not None:
                                raise error  # the first to fail; the others are stopped below
                        for shard in written:
                            results.extend(shard.result())
                    except BaseException:
                        pool.stop()  # the other shards give up too, rather than upload on
                        raise
                    finally:
                        shards.shutdown(wait=True, cancel_futures=True)
        except BaseException:
            # Ctrl-C, SIGTERM or a failure: queued parts are never sent, retries end, and each
            # upload aborts as its block exits, so the error reaches DCP within seconds
            pool.stop()
            raise
        finally:
            pool.shutdown()
        self._report(
            "save.write",
            items=len(results),
            objects=len(buckets),
            requests=sum(requests),
            size=sum(r.size_in_bytes for r in results),
            started=started,
        )
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        started = time.monotonic()
        metadata.version = dcp_version()
        metadata.storage_data = {wr.index: wr.storage_data for rank in results for wr in rank}
        metadata.storage_meta = self.storage_meta()
        body = dump_metadata(metadata)
        commit_metadata(
            self._client,
            self.uri.bucket,
            self.uri.key(METADATA_NAME),
            body,
            exclusive=not self.overwrite,
        )
        self._report("save.commit", items=len(metadata.storage_data), objects=1, requests=1, size=len(body),
                     started=started)
        # never raises for a failed request: the checkpoint is committed (see tidy_after_commit)
        tidy_after_commit(self._client, self.uri, {info.relative_path for info in metadata.storage_data.values()})

    def _report(self, phase: str, *, items: int, objects: int, requests: int, size: int, started: float) -> None:
        self.last_stats.append(report_phase(
            phase, rank=self.rank, checkpoint=str(self.uri), items=items, objects=objects, requests=requests,
            size=size, seconds=time.monotonic() - started, callback=self.on_phase,
        ))

    def _metadata_exists(self) -> bool:
        return object_exists(self._client, self.uri.bucket, self.uri.key(METADATA_NAME))


def _in_background(work: Callable[[], None]) -> ConcurrentFuture[None]:
    """Run ``work`` on a daemon thread (a failed plan must not keep the process alive for it)."""
    future: ConcurrentFuture[None] = ConcurrentFuture()

    def run() -> None:
        try:
            work()
        except BaseException as error:  # handed to whoever waits for the result
            future.set_exception(error)
        else:
            future.set_result(None)

    threading.Thread(target=run, name="s3dcp-marker", daemon=True).start()
    return future


SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` in the main thread.

    By default SIGTERM ends a process at once, leaving its multipart uploads
    open (billed until someone aborts them). As an exception it unwinds the
    save like Ctrl-C does. Installed only in the main thread (the only one
    Python delivers signals to) and only over the default action, so a
    handler the application installed is never replaced; the previous
    handler is restored on the way out, and after the first SIGTERM, so a
    second one ends the process at once as usual.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop_saving(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(SIGTERM_EXIT_STATUS)

    signal.signal(signal.SIGTERM, stop_saving)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is stop_saving:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
