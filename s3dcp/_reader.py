"""``S3StorageReader``: DCP's ``StorageReader`` for S3.

DCP calls, in this order (torch 2.13, ``dcp.load``):

0. all ranks: ``reset(checkpoint_id)`` when a checkpoint id is passed;
1. all ranks: ``read_metadata()``: fetches ``.metadata``;
2. all ranks: ``set_up_storage_reader(metadata, is_coordinator, ...)``:
   checks every recorded object path stays inside the checkpoint, and
   raises any error kept from step 1 (see below);
3. all ranks: ``prepare_local_plan(plan)``: notes the rank's place in the
   process group; 4. coordinator: ``prepare_global_plan``: gives each stored
   item several ranks need to one of them to read (:mod:`s3dcp._sharing`);
5. all ranks: ``read_data(plan, planner)``: ranged, coalesced, parallel GETs
   of just the bytes the plan needs, then the shared items sent to and
   received from the other ranks. The planner's hooks and the copies into
   the caller's tensors run on the thread that called ``read_data`` (its
   grad, inference and autocast modes, its CUDA device and stream), and each
   tensor's ``resolve_tensor``/``commit_tensor`` pair closes once its GET is in.

A checkpoint whose ``.metadata`` exists was saved: if objects it lists are
missing or shorter than recorded, or the ``.metadata`` does not unpickle,
that is :class:`~s3dcp._errors.CheckpointDamagedError`, never
:class:`~s3dcp._errors.CheckpointNotFoundError` (which callers may take as
"start from scratch").

torch 2.13 replaces any ``Exception`` from ``read_metadata`` with a bare
``AssertionError``. So when DCP's load step is the caller, a failure there
is kept and raised from ``set_up_storage_reader``, which DCP passes on with
its type and message intact. Direct callers get the error at once.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from typing import Any

import torch.distributed as dist
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from s3dcp._compat.torch import called_from_dcp_load, storage_rank
from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._errors import S3DCPError
from s3dcp._load import Loader, Records, check_records, fetch_metadata
from s3dcp._s3.client import S3Client
from s3dcp._sharing import SharedReads, load_sharing, member, schedule
from s3dcp._stats import PhaseCallback, PhaseStats, report_phase
from s3dcp._uri import S3Uri, is_s3_uri, parse_s3_uri

__all__ = ["S3StorageReader"]


class S3StorageReader(StorageReader):
    """Load DCP checkpoints straight from ``s3://bucket/prefix``.

    Args:
        region: AWS region of the bucket, or ``None`` for the standard chain.
        path: ``s3://bucket/prefix`` of the checkpoint.
        s3client_config: endpoint, credentials profile, retries, concurrency
            and read coalescing; defaults suit AWS.
        verify: check each item's recorded digest on load. Default ``True``.
        on_phase: called with a :class:`~s3dcp._stats.PhaseStats` as each
            phase of a load ends on this rank; the latest load's phases are
            also kept in ``last_stats``.
        share_reads: when several ranks load the same stored items (DDP,
            HSDP replicas), read each from S3 on one rank only and send it to
            the others over the process group. On by default; it applies
            where DCP loads with collectives on more than one rank.
        process_group: the process group DCP loads on, if not the default
            one (pass the same group to ``dcp.load``); shared items go over it.
    """

    def __init__(
        self,
        region: str | None,
        path: str | os.PathLike[str],
        s3client_config: S3ClientConfig | None = None,
        *,
        verify: bool = True,
        on_phase: PhaseCallback | None = None,
        share_reads: bool = True,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(verify, bool):
            raise TypeError(f"verify must be a bool, got {verify!r}")
        if not isinstance(share_reads, bool):
            raise TypeError(f"share_reads must be a bool, got {share_reads!r}")
        if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
            raise TypeError(f"process_group must be a torch.distributed ProcessGroup or None, got {process_group!r}")
        self.region = region
        self.s3client_config = s3client_config
        self.verify = verify
        self.share_reads = share_reads
        self.process_group = process_group
        self._collectives = True
        self.uri: S3Uri = parse_s3_uri(path)
        self._client = S3Client(resolve_settings(region, s3client_config))
        self.load_id = str(uuid.uuid4())
        self.storage_data: dict[MetadataIndex, Any] = {}
        self._records: Records | None = None
        self._kept_error: S3DCPError | None = None
        self.on_phase = on_phase
        self.last_stats: list[PhaseStats] = []
        self.rank: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        if self.process_group is not None:
            raise TypeError(
                "an S3StorageReader given process_group= does not pickle: a process group belongs to the "
                "process that made it. Build the reader in the process that loads"
            )
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return (
            f"S3StorageReader(path={str(self.uri)!r}, endpoint="
            f"{self._client.settings.describe_endpoint()!r}, verify={self.verify})"
        )

    @property
    def checkpoint_id(self) -> str:
        """The ``s3://`` URI this reader loads from."""
        return str(self.uri)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return is_s3_uri(checkpoint_id)

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.uri = parse_s3_uri(checkpoint_id)
        self._client = S3Client(resolve_settings(self.region, self.s3client_config))
        self.load_id = str(uuid.uuid4())
        self.storage_data = {}
        self._records = None
        self._kept_error = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        self._kept_error = None
        self.last_stats = []
        started = time.monotonic()
        try:
            metadata, size = fetch_metadata(self._client, self.uri)
        except S3DCPError as error:
            if not called_from_dcp_load():
                raise
            self._kept_error = error
            return Metadata(state_dict_metadata={})
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        self._report("load.metadata", started, items=len(metadata.storage_data or {}), objects=1, requests=1, size=size)
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if self._kept_error is not None:
            error, self._kept_error = self._kept_error, None
            raise error
        self.rank = storage_rank(kwargs.get("rank", self.rank))
        self._collectives = kwargs.get("use_collectives", True) is not False
        self._records = check_records(metadata, self.uri)
        self.storage_data = self._records.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        if not (self.share_reads and self._collectives):
            return plan
        return dataclasses.replace(plan, storage_data=member(self.process_group))

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return schedule(plans, self.storage_data)

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Fetch the plan's bytes in parallel; the planner's hooks and the copies run on this thread
        (see :class:`~s3dcp._load.Loader`)."""
        if self._records is None:
            raise RuntimeError("read_data() before set_up_storage_reader(): DCP calls them in that order")
        started = time.monotonic()
        loader = Loader(self._client, self.uri, self._records, verify=self.verify)
        if isinstance(plan.storage_data, SharedReads) and plan.storage_data.shares:
            config = self._client.settings.config
            budget = config.max_concurrency * config.max_read_size
            counts = load_sharing(loader, plan, planner, plan.storage_data.shares, self.process_group, budget)
        else:
            counts = loader.read(plan, planner)
        self._report(
            "load.read",
            started,
            items=len(plan.items),
            objects=counts.objects,
            requests=counts.requests,
            size=counts.size,
        )
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _report(self, phase: str, started: float, **counts: int) -> None:
        seconds = time.monotonic() - started
        stats = report_phase(
            phase, rank=self.rank, checkpoint=str(self.uri), seconds=seconds, callback=self.on_phase, **counts
        )
        self.last_stats.append(stats)
