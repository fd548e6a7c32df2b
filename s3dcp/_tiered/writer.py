"""``TieredStorageWriter``: DCP's ``StorageWriter`` for a fast local copy now and an S3 copy in the background.

Each checkpoint is written to ``local_dir/name`` in DCP's own layout (what
``FileSystemWriter`` writes, plus s3dcp's per-item digests); the save returns
as soon as that copy is complete, and every ``s3_every``-th checkpoint is
copied to ``s3_path/name``, in the background or before returning. This
module adapts DCP to :mod:`s3dcp._tiered.local` and :mod:`s3dcp._tiered.upload`;
the mechanics live there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.futures import Future

from s3dcp._compat.torch import storage_rank
from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._errors import CheckpointExistsError, UploadFailedError
from s3dcp._format.layout import METADATA_NAME, SHARD_SUFFIX
from s3dcp._format.metadata import commit_record
from s3dcp._format.shard import split_items
from s3dcp._interrupts import leave_signals_to_main_thread
from s3dcp._prefix import PrefixStrategy, checked_strategy
from s3dcp._s3.client import S3Client
from s3dcp._save import checked_stems
from s3dcp._stats import PhaseCallback, PhaseStats, report_phase
from s3dcp._tiered.local import (
    checkpoint_name,
    is_checkpoint_name,
    mark_uploading,
    prune_local,
    write_local_metadata,
    write_shard_file,
)
from s3dcp._tiered.upload import DEFAULT_UPLOAD_TIMEOUT, UploadJob, UploadStatus, uploader
from s3dcp._uri import S3Uri, parse_s3_uri

__all__ = ["TieredStorageWriter"]

log = logging.getLogger("s3dcp")

# saves made per (local root, S3 root) in this process: decides which go to S3. Kept
# here, not on the writer, because dcp.async_save's process executor pickles a fresh
# copy of the writer for every save.
_SAVE_COUNTS: dict[tuple[str, str], int] = defaultdict(int)
_COUNT_LOCK = threading.Lock()


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
        for name, value, low in (
            ("s3_every", s3_every, 0),
            ("thread_count", thread_count, 1),
            ("upload_attempts", upload_attempts, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if keep_local is not None and (
            not isinstance(keep_local, int) or isinstance(keep_local, bool) or keep_local < 1
        ):
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
        return (
            f"TieredStorageWriter(local_dir={str(self.local_root)!r}, s3_path={str(self.s3_root)!r}, "
            f"s3_every={self.s3_every}, background={self.background}, keep_local={self.keep_local})"
        )

    # -- DCP's StorageWriter ---------------------------------------------------------
    @property
    def checkpoint_id(self) -> str | None:
        return self.name

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return is_checkpoint_name(checkpoint_id)

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.name = checkpoint_name(checkpoint_id)
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
                f"{self._local_dir} already holds a complete checkpoint; save under a new name or pass overwrite=True"
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
        return [
            dataclasses.replace(plan, storage_data=_TierPlan(stem, to_s3, len(plans), save_id))
            for plan, stem in zip(plans, stems)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        tier: _TierPlan = plan.storage_data
        self._plan = tier
        started = time.monotonic()
        buckets = split_items(plan.items, self.thread_count)
        relatives = [f"{tier.stem}{index}{SHARD_SUFFIX}" for index in range(len(buckets))]
        self._local_dir.mkdir(parents=True, exist_ok=True)

        def write_file(index: int) -> list[WriteResult]:
            return write_shard_file(self._local_dir, relatives[index], buckets[index], planner, sync=self.sync_files)

        results: list[WriteResult] = []
        with ThreadPoolExecutor(
            max(1, len(buckets)), thread_name_prefix="s3dcp-local", initializer=leave_signals_to_main_thread
        ) as files:
            for written in files.map(write_file, range(len(buckets))):
                results.extend(written)
        self._report(
            "save.local",
            items=len(results),
            objects=len(buckets),
            size=sum(r.size_in_bytes for r in results),
            started=started,
        )
        if tier.to_s3:
            self._upload(self._job(relatives, tier))
        if not self.is_coordinator:
            self._prune()
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        started = time.monotonic()
        if self._plan is None:
            raise RuntimeError("finish() before prepare_global_plan(): DCP calls them in that order")
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
            raise UploadFailedError(
                f"{len(failed)} upload(s) to {self.s3_root} failed: {listed}. "
                "The local copies are intact; copy them with `s3dcp cp` once S3 works"
            )
        return statuses

    def upload_statuses(self) -> list[UploadStatus]:
        """Final statuses of the uploads this process has run to this writer's S3 root."""
        root = f"{self.s3_root}/"
        return [s for s in uploader().statuses() if s.uri.startswith(root)]

    def _job(self, relatives: list[str], tier: _TierPlan) -> UploadJob:
        return UploadJob(
            client=self._client,
            checkpoint_dir=self._local_dir,
            uri=self.s3_root.child(self._name()),
            rank=self.rank,
            world_size=tier.world_size,
            save_id=tier.save_id,
            files=relatives,
            overwrite=self.overwrite,
            attempts=self.upload_attempts,
            timeout=self.upload_timeout,
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
            raise UploadFailedError(
                f"copying {self.name} to {job.uri} failed: {status.error}; the local copy "
                f"{self._local_dir} is complete",
                bucket=job.uri.bucket,
            )

    def _prune(self) -> None:
        """Local retention; runs after each save and after each upload ends (on its thread)."""
        if self.keep_local is None or self._plan is None or self.name is None:
            return
        with self._prune_lock:
            removed = prune_local(
                self.local_root,
                self.keep_local,
                current=self.name,
                own_stem=self._plan.stem,
                coordinator=self.is_coordinator,
            )
        if removed:
            log.info("s3dcp local retention removed %s from %s", ", ".join(removed), self.local_root)

    @property
    def _local_dir(self) -> Path:
        return self.local_root / self._name()

    def _name(self) -> str:
        if self.name is None:
            raise ValueError("no checkpoint name: pass checkpoint_id='step_N' to dcp.save, or the name to reset()")
        return self.name

    def _report(self, phase: str, *, items: int, objects: int, size: int, started: float) -> None:
        self.last_stats.append(
            report_phase(
                phase,
                rank=self.rank,
                checkpoint=str(self._local_dir),
                items=items,
                objects=objects,
                requests=0,
                size=size,
                seconds=time.monotonic() - started,
                callback=self.on_phase,
            )
        )
