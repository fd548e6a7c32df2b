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

This module only adapts DCP to the pieces below it (:mod:`s3dcp._save`,
:mod:`s3dcp._commit`); it holds no S3 mechanics of its own.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.futures import Future

from s3dcp._commit import SaveStart, commit_metadata, tidy_after_commit
from s3dcp._compat.torch import StreamTransform, storage_rank
from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._format.layout import METADATA_NAME
from s3dcp._format.metadata import commit_record
from s3dcp._prefix import PrefixStrategy, checked_strategy
from s3dcp._s3.client import S3Client
from s3dcp._s3.upload import KEPT_BETWEEN_SAVES, PartBuffers
from s3dcp._save import RankStem, ShardOptions, check_extensions, check_save_options, checked_stems, write_shards
from s3dcp._stats import PhaseCallback, PhaseStats, report_phase
from s3dcp._uri import S3Uri, is_s3_uri, parse_s3_uri

__all__ = ["S3StorageWriter"]


class S3StorageWriter(StorageWriter):
    """Save DCP checkpoints straight to ``s3://bucket/prefix``.

    Args:
        region: AWS region of the bucket, or ``None`` for ``AWS_REGION`` /
            ``AWS_DEFAULT_REGION`` / the profile's region.
        path: ``s3://bucket/prefix`` of the checkpoint; ``.metadata`` lands at
            ``prefix/.metadata``.
        s3client_config: endpoint, credentials profile, retries, part size and
            concurrency; defaults suit AWS.
        prefix_strategy: where each rank's shard objects go, e.g.
            ``HexPrefixStrategy()`` to spread them over S3 partitions;
            default ``prefix/__{rank}_{i}.distcp``.
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
        self.extensions = check_extensions(extensions)
        check_save_options(thread_count, part_size, overwrite)
        self.region = region
        self.s3client_config = s3client_config
        self.prefix_strategy = checked_strategy(prefix_strategy)
        self.thread_count = thread_count
        self.overwrite = overwrite
        self.uri: S3Uri = parse_s3_uri(path)
        self._client = S3Client(resolve_settings(region, s3client_config))
        self.part_size = part_size or self._client.settings.config.part_size
        self._part_buffers = PartBuffers(min(self._client.settings.config.max_concurrency, KEPT_BETWEEN_SAVES))
        self.save_id = str(uuid.uuid4())
        self.is_coordinator = False
        self.rank: int | None = None
        self._start: SaveStart | None = None
        self.on_phase = on_phase
        self.last_stats: list[PhaseStats] = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_start"] = None  # a request in flight in this process stays here
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
        self._start = None

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
            self._start = SaveStart(self._client, self.uri, self.save_id, overwrite=self.overwrite)
            self._start.begin()
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        stems = checked_stems(self.prefix_strategy, len(plans))
        start, self._start = self._start, None
        (start or SaveStart(self._client, self.uri, self.save_id, overwrite=self.overwrite)).ready()
        return [dataclasses.replace(plan, storage_data=RankStem(stem)) for plan, stem in zip(plans, stems)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """Upload this rank's shard objects; Ctrl-C or SIGTERM stop it within seconds (see ``write_shards``)."""
        started = time.monotonic()
        options = ShardOptions(self.thread_count, self.part_size, self._part_buffers, self.extensions)
        shards = write_shards(self._client, self.uri, plan.storage_data.stem, plan.items, planner, options)
        counts = dict(items=len(shards.results), objects=shards.objects, requests=shards.requests, size=shards.size)
        self._report("save.write", started, **counts)
        future: Future[list[WriteResult]] = Future()
        future.set_result(shards.results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        started = time.monotonic()
        body = commit_record(metadata, results, self.storage_meta())
        commit_metadata(self._client, self.uri.bucket, self.uri.key(METADATA_NAME), body, exclusive=not self.overwrite)
        self._report("save.commit", started, items=len(metadata.storage_data), objects=1, requests=1, size=len(body))
        # never raises for a failed request: the checkpoint is committed (see tidy_after_commit)
        tidy_after_commit(self._client, self.uri, {info.relative_path for info in metadata.storage_data.values()})

    def _report(self, phase: str, started: float, **counts: int) -> None:
        seconds = time.monotonic() - started
        stats = report_phase(
            phase, rank=self.rank, checkpoint=str(self.uri), seconds=seconds, callback=self.on_phase, **counts
        )
        self.last_stats.append(stats)
