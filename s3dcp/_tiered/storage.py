"""Tiered checkpoints: a fast local copy now, a durable S3 copy in the background.

``TieredStorageWriter`` writes each checkpoint to ``local_dir/name`` in
DCP's own layout (what ``FileSystemWriter`` writes, plus s3dcp's per-item
digests), returns as soon as that copy is complete, and copies every
``s3_every``-th checkpoint to ``s3_path/name``, in the background or
before returning. ``TieredStorageReader`` loads from the local copy when
it is there and each item's digest checks out, and fetches from S3 the
items that are missing or damaged locally. This module adapts DCP to
:mod:`s3dcp._tiered.local` and :mod:`s3dcp._tiered.upload`; the mechanics live there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections import defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from concurrent.futures import Future as PoolFuture
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem, SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from s3dcp._compat.torch import called_from_dcp_load, storage_rank
from s3dcp._format.layout import METADATA_NAME, SHARD_SUFFIX
from s3dcp._catalog import latest_checkpoint
from s3dcp._format.layout import parse_step
from s3dcp._s3.client import S3Client
from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._errors import CheckpointDamagedError, CheckpointExistsError, CheckpointNotFoundError, S3DCPError, UploadFailedError
from s3dcp._format.integrity import digest, get_checksum
from s3dcp._tiered.local import complete_local_checkpoints, mark_uploading, prune_local, read_local_metadata, \
    write_local_metadata, write_shard_file
from s3dcp._format.metadata import commit_record
from s3dcp._prefix import PrefixStrategy, checked_strategy
from s3dcp._save import checked_stems
from s3dcp._load import deliver_item, name_items
from s3dcp._reader import S3StorageReader
from s3dcp._format.transforms import descriptors_of
from s3dcp._format.shard import split_items
from s3dcp._stats import PhaseCallback, PhaseStats, report_phase
from s3dcp._tiered.upload import DEFAULT_UPLOAD_TIMEOUT, UploadJob, UploadStatus, uploader
from s3dcp._uri import S3Uri, parse_s3_uri

__all__ = ["TieredStorageWriter", "TieredStorageReader", "latest_tiered_checkpoint", "UploadStatus"]

log = logging.getLogger("s3dcp")

# saves made per (local root, S3 root) in this process: decides which go to S3. Kept
# here, not on the writer, because dcp.async_save's process executor pickles a fresh
# copy of the writer for every save.
_SAVE_COUNTS: dict[tuple[str, str], int] = defaultdict(int)
_COUNT_LOCK = threading.Lock()
# local items read ahead of their delivery to the planner
_LOCAL_READS = 4


def _checkpoint_name(checkpoint_id: str | os.PathLike[str]) -> str:
    """A checkpoint's name under both roots: one directory name such as ``step_100``."""
    name = os.fspath(checkpoint_id)
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
            or name.startswith(".") or any(ord(c) < 32 for c in name):
        raise ValueError(
            "a tiered checkpoint id is the name of one checkpoint under local_dir and s3_path, such as "
            f"'step_100' (no '/', not starting with '.'), not {name!r}"
        )
    return name


@dataclass(frozen=True)
class _TierPlan:
    """What the coordinator tells every rank about one save."""

    stem: str
    to_s3: bool
    world_size: int
    save_id: str


class TieredStorageWriter(StorageWriter):
    """Save to a local directory first; copy to S3 every ``s3_every``-th save.

    Name each checkpoint with DCP's ``checkpoint_id``::

        writer = TieredStorageWriter("/local_nvme/ckpt", "s3://bucket/run-7", s3_every=5, keep_local=3)
        dcp.save(state_dict, checkpoint_id=f"step_{step}", storage_writer=writer)

    Args:
        local_dir: root of the local tier (node-local NVMe, ``/dev/shm``);
            checkpoint ``name`` goes to ``local_dir/name``. Ranks on one node
            share it.
        s3_path: ``s3://bucket/prefix`` root of the durable tier.
        s3client_config: as for :class:`~s3dcp.S3StorageWriter`.
        prefix_strategy: shard file names (the same in both tiers).
        region: the bucket's region, or ``None`` for the standard chain.
        s3_every: copy the first save and every ``s3_every``-th after it to
            S3 (counted per process and pair of roots; the coordinator's
            count decides for every rank). ``0``: never.
        background: copy in a background thread after the save returns
            (default), or before the save returns (``False``).
        keep_local: keep only the newest N local checkpoints (``None``: all).
            Checkpoints still being copied are kept until their upload ends.
        thread_count: shard files per rank, written in parallel.
        sync_files: fsync local files before the save returns, as
            ``FileSystemWriter`` does by default.
        overwrite: allow replacing a complete checkpoint of the same name
            (in either tier).
        upload_attempts: tries per background upload before it is reported
            as failed (each S3 request also retries on its own; the pauses
            between tries follow the same retry policy).
        upload_timeout: seconds the coordinator waits for other ranks'
            uploads of a checkpoint before giving up on committing its S3
            copy (default 600). The upload thread is a daemon: at exit a
            process waits for its queued uploads at most this long in all,
            then logs those it leaves unfinished, so a rank that died
            delays the coordinator's exit by at most ``upload_timeout``.
            Raise it when ranks' uploads can run far apart (very large
            shards, slow links); call :meth:`wait_for_uploads` to wait
            for every upload before exiting.
        on_upload: called with an :class:`UploadStatus` at every change of
            an upload of this process (queued, uploading, uploaded,
            committed, failed), on the upload thread.
        on_phase: per-phase statistics, as for ``S3StorageWriter``.
    """

    def __init__(
        self,
        local_dir: str | os.PathLike[str],
        s3_path: str | os.PathLike[str],
        s3client_config: S3ClientConfig | None = None,
        prefix_strategy: PrefixStrategy | None = None,
        *,
        region: str | None = None,
        s3_every: int = 1,
        background: bool = True,
        keep_local: int | None = None,
        thread_count: int = 1,
        sync_files: bool = True,
        overwrite: bool = False,
        upload_attempts: int = 3,
        upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
        on_upload: Callable[[UploadStatus], object] | None = None,
        on_phase: PhaseCallback | None = None,
    ) -> None:
        super().__init__()
        for name, value, low in (("s3_every", s3_every, 0), ("thread_count", thread_count, 1),
                                 ("upload_attempts", upload_attempts, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if keep_local is not None and (not isinstance(keep_local, int) or isinstance(keep_local, bool)
                                       or keep_local < 1):
            raise ValueError(f"keep_local must be None or an int >= 1, got {keep_local!r}")
        if not upload_timeout > 0:
            raise ValueError(f"upload_timeout must be > 0 seconds, got {upload_timeout!r}")
        self.local_root = Path(local_dir).absolute()
        self.s3_root: S3Uri = parse_s3_uri(s3_path)
        self.region = region
        self.s3client_config = s3client_config
        self.prefix_strategy = checked_strategy(prefix_strategy)
        self.s3_every = s3_every
        self.background = background
        self.keep_local = keep_local
        self.thread_count = thread_count
        self.sync_files = sync_files
        self.overwrite = overwrite
        self.upload_attempts = upload_attempts
        self.upload_timeout = upload_timeout
        self.on_upload = on_upload
        self.on_phase = on_phase
        self.last_stats: list[PhaseStats] = []
        self._client = S3Client(resolve_settings(region, s3client_config))
        self.name: str | None = None
        self.is_coordinator = False
        self.rank = 0
        self._plan: _TierPlan | None = None
        self._prune_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_prune_lock"]  # dcp.async_save's process executor pickles the writer
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._prune_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"TieredStorageWriter(local_dir={str(self.local_root)!r}, s3_path={str(self.s3_root)!r}, "
                f"s3_every={self.s3_every}, background={self.background}, keep_local={self.keep_local})")

    # -- DCP's StorageWriter ---------------------------------------------------------
    @property
    def checkpoint_id(self) -> str | None:
        return self.name

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        try:
            _checkpoint_name(checkpoint_id)
        except (ValueError, TypeError):
            return False
        return True

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.name = _checkpoint_name(checkpoint_id)
        self._client = S3Client(resolve_settings(self.region, self.s3client_config))
        self._plan = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if self.name is None:
            raise ValueError(
                "TieredStorageWriter needs a checkpoint name: dcp.save(state_dict, "
                "checkpoint_id='step_100', storage_writer=writer)"
            )
        if not kwargs.get("use_collectives", True):
            raise ValueError("TieredStorageWriter needs DCP's collective mode (use_collectives=True)")
        self.is_coordinator = is_coordinator
        self.rank = storage_rank(kwargs.get("rank"))
        self.last_stats = []

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.name, save_id=self._plan.save_id if self._plan else "")

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        if self.is_coordinator and (self._local_dir / METADATA_NAME).exists() and not self.overwrite:
            raise CheckpointExistsError(
                f"{self._local_dir} already holds a complete checkpoint; save under a new name "
                "or pass overwrite=True"
            )
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        stems = checked_stems(self.prefix_strategy, len(plans))
        with _COUNT_LOCK:
            key = (str(self.local_root), str(self.s3_root))
            count = _SAVE_COUNTS[key]
            _SAVE_COUNTS[key] += 1
        to_s3 = self.s3_every > 0 and count % self.s3_every == 0
        # un-commit the old local copy before any of its files is replaced
        (self._local_dir / METADATA_NAME).unlink(missing_ok=True)
        save_id = str(uuid.uuid4())
        return [dataclasses.replace(plan, storage_data=_TierPlan(stem, to_s3, len(plans), save_id))
                for plan, stem in zip(plans, stems)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        tier: _TierPlan = plan.storage_data
        self._plan = tier
        started = time.monotonic()
        buckets = split_items(plan.items, self.thread_count)
        relatives = [f"{tier.stem}{index}{SHARD_SUFFIX}" for index in range(len(buckets))]
        self._local_dir.mkdir(parents=True, exist_ok=True)

        def write_file(index: int) -> list[WriteResult]:
            return write_shard_file(self._local_dir, relatives[index], buckets[index], planner,
                                    sync=self.sync_files)

        results: list[WriteResult] = []
        with ThreadPoolExecutor(max(1, len(buckets)), thread_name_prefix="s3dcp-local") as files:
            for written in files.map(write_file, range(len(buckets))):
                results.extend(written)
        self._report("save.local", items=len(results), objects=len(buckets),
                     size=sum(r.size_in_bytes for r in results), started=started)
        if tier.to_s3:
            self._upload(self._job(relatives, tier))
        if not self.is_coordinator:
            self._prune()
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        started = time.monotonic()
        assert self._plan is not None
        body = commit_record(metadata, results, self.storage_meta())
        write_local_metadata(self._local_dir, body, sync=self.sync_files)
        self._report("save.commit", items=len(metadata.storage_data), objects=1, size=len(body), started=started)
        if self._plan.to_s3:
            self._upload(dataclasses.replace(self._job([], self._plan), metadata=body))
        self._prune()

    # -- uploads -------------------------------------------------------------------
    def wait_for_uploads(self, timeout: float | None = None) -> list[UploadStatus]:
        """Block until this process has no upload of this writer's checkpoints running.

        Returns the statuses of every upload to this S3 root this process has run. Call it
        before a job ends to be sure its last checkpoint reached S3.

        Raises:
            UploadFailedError: an upload under these roots failed (names each).
            TimeoutError: uploads still run after ``timeout`` seconds.
        """
        uploader().wait(timeout, root=self.local_root)
        statuses = self.upload_statuses()
        failed = [s for s in statuses if s.state == "failed"]
        if failed:
            listed = "; ".join(f"{s.checkpoint} (rank {s.rank}): {s.error}" for s in failed)
            raise UploadFailedError(f"{len(failed)} upload(s) to {self.s3_root} failed: {listed}. "
                                    "The local copies are intact; copy them with `s3dcp cp` once S3 works")
        return statuses

    def upload_statuses(self) -> list[UploadStatus]:
        """Final statuses of the uploads this process has run to this writer's S3 root."""
        root = f"{self.s3_root}/"
        return [s for s in uploader().statuses() if s.uri.startswith(root)]

    def _job(self, relatives: list[str], tier: _TierPlan) -> UploadJob:
        assert self.name is not None
        return UploadJob(
            client=self._client, checkpoint_dir=self._local_dir, uri=self.s3_root.child(self.name),
            rank=self.rank, world_size=tier.world_size, save_id=tier.save_id, files=relatives,
            overwrite=self.overwrite, attempts=self.upload_attempts, timeout=self.upload_timeout,
            on_status=self.on_upload,
        )

    def _upload(self, job: UploadJob) -> None:
        # the coordinator's commit job reads no local file: only file uploads hold off retention
        mark = mark_uploading(self.local_root, job.name, self.rank) if job.files else None

        def done() -> None:
            if mark is not None:
                mark.unlink(missing_ok=True)
            self._prune()

        job.on_done = done
        if self.background:
            uploader().submit(job)
            return
        status = uploader().run_now(job)
        if status.state == "failed":
            raise UploadFailedError(f"copying {self.name} to {job.uri} failed: {status.error}; the local copy "
                                    f"{self._local_dir} is complete", bucket=job.uri.bucket)

    def _prune(self) -> None:
        """Local retention; runs after each save and after each upload ends (on its thread)."""
        if self.keep_local is None or self._plan is None or self.name is None:
            return
        with self._prune_lock:
            removed = prune_local(self.local_root, self.keep_local, current=self.name, own_stem=self._plan.stem,
                                  coordinator=self.is_coordinator)
        if removed:
            log.info("s3dcp local retention removed %s from %s", ", ".join(removed), self.local_root)

    @property
    def _local_dir(self) -> Path:
        assert self.name is not None
        return self.local_root / self.name

    def _report(self, phase: str, *, items: int, objects: int, size: int, started: float) -> None:
        self.last_stats.append(report_phase(
            phase, rank=self.rank, checkpoint=str(self._local_dir), items=items, objects=objects, requests=0,
            size=size, seconds=time.monotonic() - started, callback=self.on_phase,
        ))


class TieredStorageReader(StorageReader):
    """Load a tiered checkpoint: local items when intact, the rest from S3.

    ``dcp.load(state_dict, checkpoint_id="step_100", storage_reader=TieredStorageReader(local, s3))``.
    The local ``.metadata`` is used when present and readable, else S3's.
    Each local item is checked against its digest; an item whose local
    file is missing or whose bytes differ is fetched from S3 instead, with a
    warning. Before any item is taken from S3, the S3 copy is checked to be
    the same save as the local one.

    Args:
        local_dir, s3_path, s3client_config, region: as for :class:`TieredStorageWriter`.
        verify: check each item's digest (default). With ``False`` local
            files are used only under a local ``.metadata``, never to fill in
            for an S3 one, since nothing would show they belong to it.
        on_phase: per-phase statistics (``load.local`` plus the S3 reader's).
    """

    def __init__(
        self,
        local_dir: str | os.PathLike[str],
        s3_path: str | os.PathLike[str],
        s3client_config: S3ClientConfig | None = None,
        *,
        region: str | None = None,
        verify: bool = True,
        on_phase: PhaseCallback | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(verify, bool):
            raise TypeError(f"verify must be a bool, got {verify!r}")
        self.local_root = Path(local_dir).absolute()
        self.s3_root = parse_s3_uri(s3_path)
        self.region = region
        self.s3client_config = s3client_config
        self.verify = verify
        self.on_phase = on_phase
        self.name: str | None = None
        self.source: str | None = None  # "local" or "s3": where the metadata came from
        self.last_stats: list[PhaseStats] = []
        self.storage_data: dict[MetadataIndex, Any] = {}
        self._s3: S3StorageReader | None = None
        self._save_id: str | None = None
        self._kept_error: S3DCPError | None = None
        self.rank: int | None = None

    def __repr__(self) -> str:
        return f"TieredStorageReader(local_dir={str(self.local_root)!r}, s3_path={str(self.s3_root)!r})"

    @property
    def checkpoint_id(self) -> str | None:
        return self.name

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return TieredStorageWriter.validate_checkpoint_id(checkpoint_id)

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.name = _checkpoint_name(checkpoint_id)
        self._s3 = None
        self.source = None
        self.storage_data = {}
        self._kept_error = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self.name is None:
            raise ValueError("TieredStorageReader needs a checkpoint name: dcp.load(state_dict, "
                             "checkpoint_id='step_100', storage_reader=reader)")
        self.last_stats = []
        self._s3 = S3StorageReader(self.region, str(self.s3_root.child(self.name)), self.s3client_config,
                                   verify=self.verify, on_phase=self._collect)
        local = read_local_metadata(self._local_dir)
        if local is not None:
            self.source = "local"
            metadata = local[0]
            if metadata.storage_meta is None:
                metadata.storage_meta = StorageMeta()
            self._save_id = metadata.storage_meta.save_id
            return metadata
        self.source = "s3"
        self._save_id = None
        try:
            return self._s3.read_metadata(*args, **kwargs)
        except S3DCPError as error:
            if not called_from_dcp_load():
                raise self._not_found(error) if isinstance(error, CheckpointNotFoundError) else error
            self._kept_error = error  # raised from set_up_storage_reader: see S3StorageReader
            return Metadata(state_dict_metadata={})

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        assert self._s3 is not None, "read_metadata() first"
        if self._kept_error is not None:
            error, self._kept_error = self._kept_error, None
            raise self._not_found(error) if isinstance(error, CheckpointNotFoundError) else error
        self.rank = storage_rank(kwargs.get("rank", self.rank))
        self._s3.set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)  # checks every path
        self.storage_data = self._s3.storage_data

    def _not_found(self, error: CheckpointNotFoundError) -> S3DCPError:
        """No S3 copy: absent if there is no local ``.metadata`` either, damaged if there is one that did not load."""
        local_metadata = self._local_dir / METADATA_NAME
        if local_metadata.exists():
            return CheckpointDamagedError(
                f"checkpoint {self.name!r} is damaged: its local {local_metadata} exists but does not load "
                f"(see the warning logged), and {self.s3_root.child(self.name or '')}/{METADATA_NAME} does not "
                "exist. Restore the local files, or load an older checkpoint explicitly; the checkpoint was "
                "saved, so this is no reason to start from scratch",
                key=str(local_metadata),
            )
        return CheckpointNotFoundError(
            f"no complete checkpoint {self.name!r}: neither {local_metadata} nor "
            f"{self.s3_root.child(self.name or '')}/{METADATA_NAME} exists (wrong name, or its save "
            "never finished)", bucket=error.bucket, key=error.key,
        )

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Read and check items on worker threads; hand them to the planner on this thread.

        The planner hooks and copies see the caller's thread-local modes (as in
        :meth:`S3StorageReader.read_data`); at most ``_LOCAL_READS`` items are
        read ahead of delivery, so memory stays bounded by a few items.
        """
        started = time.monotonic()
        use_local = self.source == "local" or self.verify
        by_file: dict[str, list[ReadItem]] = defaultdict(list)
        for item in plan.items:
            by_file[self.storage_data[item.storage_index].relative_path].append(item)
        missing: list[ReadItem] = []
        waiting: deque[tuple[Path, ReadItem]] = deque()
        for relative, items in by_file.items():
            path = self._local_dir / relative
            if use_local and path.is_file():
                for item in items:  # items stored through DCP stream transforms are decoded by the S3 path
                    if descriptors_of(self.storage_data[item.storage_index]):
                        missing.append(item)
                    else:
                        waiting.append((path, item))
                continue
            if use_local and self.source == "local":
                log.warning("s3dcp: local file %s is missing; reading its %d items from S3", path, len(items))
            missing.extend(items)

        def read_item(path: Path, item: ReadItem) -> memoryview | None:
            """The item's bytes if the local copy has them intact; ``None`` (and a warning) if not."""
            info = self.storage_data[item.storage_index]
            data = memoryview(bytearray(info.length))
            with path.open("rb", buffering=0) as stream:
                got = _read_at(stream, info.offset, data)
            problem = _local_problem(info, data, got, self.verify)
            if problem:
                log.warning("s3dcp: local copy damaged: %s item %r %s; reading it from S3", path,
                            item.storage_index.fqn, problem)
                return None
            return data

        local_bytes = 0
        in_flight: dict[PoolFuture[memoryview | None], ReadItem] = {}
        with ThreadPoolExecutor(_LOCAL_READS, thread_name_prefix="s3dcp-local") as pool:
            try:
                while waiting or in_flight:
                    while waiting and len(in_flight) < _LOCAL_READS:
                        path, item = waiting.popleft()
                        in_flight[pool.submit(read_item, path, item)] = item
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        item = in_flight.pop(future)
                        data = future.result()
                        if data is None:
                            missing.append(item)
                            continue
                        deliver_item(item, data, planner)
                        local_bytes += data.nbytes
            finally:
                for future in in_flight:
                    future.cancel()
        self.last_stats.append(report_phase(
            "load.local", rank=self.rank, checkpoint=str(self._local_dir), items=len(plan.items) - len(missing),
            objects=len(by_file), requests=0, size=local_bytes, seconds=time.monotonic() - started,
            callback=self.on_phase,
        ))
        if missing:
            self._read_from_s3(missing, planner)
        future_done: Future[None] = Future()
        future_done.set_result(None)
        return future_done

    def _read_from_s3(self, items: list[ReadItem], planner: LoadPlanner) -> None:
        """Read the items the local copy lacks from S3; with no usable S3 copy the checkpoint is damaged."""
        assert self._s3 is not None
        try:
            if self.source == "local":
                self._check_same_save(items)
            self._s3.read_data(LoadPlan(items), planner).wait()
        except S3DCPError:
            log.error("s3dcp: %d item(s) of the local copy %s are missing or damaged, and the S3 copy "
                      "could not supply them", len(items), self._local_dir)
            raise

    def _check_same_save(self, items: list[ReadItem]) -> None:
        """The S3 copy must be the save the local metadata describes, or its items would be mixed in."""
        assert self._s3 is not None
        try:
            s3_metadata = self._s3.read_metadata()
        except CheckpointNotFoundError as err:
            raise self._local_damaged(
                items, f"S3 holds no copy of it ({self._s3.uri}/{METADATA_NAME} does not exist)"
            ) from err
        theirs = s3_metadata.storage_meta.save_id if s3_metadata.storage_meta else None
        if self._save_id and theirs != self._save_id:
            raise self._local_damaged(
                items, f"the S3 copy {self._s3.uri} is from another save (different save ids), so it cannot "
                "stand in for them"
            )

    def _local_damaged(self, items: list[ReadItem], why: str) -> CheckpointDamagedError:
        """The local checkpoint is committed (its .metadata exists) but items of it cannot be read."""
        return CheckpointDamagedError(
            f"checkpoint {self.name!r} is damaged: its local copy {self._local_dir} is committed, but items "
            f"{name_items(items)} are missing or damaged in it, and {why}. Restore the local files, or load an older "
            "checkpoint explicitly; the checkpoint was saved, so this is no reason to start from scratch",
            key=str(self._local_dir / METADATA_NAME),
        )

    def _collect(self, stats: PhaseStats) -> None:
        self.last_stats.append(stats)
        if self.on_phase is not None:
            self.on_phase(stats)

    @property
    def _local_dir(self) -> Path:
        assert self.name is not None
        return self.local_root / self.name


def _read_at(stream: Any, offset: int, into: memoryview) -> int:
    """Fill ``into`` from ``offset``; fewer bytes only at end of file (one read() stops near 2 GiB)."""
    stream.seek(offset)
    got = 0
    while got < len(into):
        count = stream.readinto(into[got:])
        if not count:
            break
        got += count
    return got


def _local_problem(info: Any, data: memoryview, got: int, verify: bool) -> str | None:
    """Why a local item cannot be used, or ``None`` when it can."""
    if got != info.length:
        return f"is cut short (bytes {info.offset}-{info.offset + info.length - 1} expected, {got} read)"
    expected = get_checksum(info)
    if verify and expected is not None:
        actual = digest(data)
        if actual != expected:
            return f"does not match its recorded checksum ({expected}, read {actual})"
    return None


def latest_tiered_checkpoint(
    local_dir: str | os.PathLike[str],
    s3_path: str | os.PathLike[str],
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> str | None:
    """The name of the newest checkpoint complete in either tier, or ``None``.

    Newest by ``step_N`` (a local copy wins a tie: it loads faster). When S3
    cannot be reached the newest local checkpoint is returned, with a
    warning; with nothing local the S3 error is raised. With several nodes,
    each node sees only its own local tier: decide on one rank and broadcast.
    """
    local = complete_local_checkpoints(Path(local_dir))
    root = parse_s3_uri(s3_path)
    try:
        remote_uri = latest_checkpoint(str(root), region=region, s3client_config=s3client_config)
    except S3DCPError as error:
        if not local:
            raise
        log.warning("s3dcp: cannot list %s (%s); using the newest local checkpoint %s", root, error, local[-1])
        return local[-1]
    remote = remote_uri[len(str(root)):].strip("/") if remote_uri else None
    candidates = ([(parse_step(local[-1]), 1, local[-1])] if local else []) + \
        ([(parse_step(remote), 0, remote)] if remote else [])
    if not candidates:
        return None
    stepped = [c for c in candidates if c[0] is not None]
    if stepped:
        return max(stepped, key=lambda c: (c[0], c[1]))[2]
    return local[-1] if local else remote
