"""``TieredStorageReader``: DCP's ``StorageReader`` that loads the local copy first.

A load reads ``local_dir/name`` when it is there and each item's digest
checks out, and fetches from S3 only the items missing or damaged locally
(through :class:`~s3dcp._reader.S3StorageReader`, from the same save).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import Future as PoolFuture
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from s3dcp._compat.torch import called_from_dcp_load, storage_rank
from s3dcp._config import S3ClientConfig
from s3dcp._errors import CheckpointDamagedError, CheckpointNotFoundError, S3DCPError
from s3dcp._format.integrity import digest, get_checksum
from s3dcp._format.layout import METADATA_NAME
from s3dcp._format.transforms import descriptors_of
from s3dcp._interrupts import leave_signals_to_main_thread, wait_futures
from s3dcp._load import deliver_item, name_items
from s3dcp._reader import S3StorageReader
from s3dcp._stats import PhaseCallback, PhaseStats, report_phase
from s3dcp._tiered.local import checkpoint_name, is_checkpoint_name, read_local_metadata
from s3dcp._uri import parse_s3_uri

__all__ = ["TieredStorageReader"]

log = logging.getLogger("s3dcp")

# local items read ahead of their delivery to the planner
_LOCAL_READS = 4


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
        return is_checkpoint_name(checkpoint_id)

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id:
            self.name = checkpoint_name(checkpoint_id)
        self._s3 = None
        self.source = None
        self.storage_data = {}
        self._kept_error = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if self.name is None:
            raise ValueError(
                "TieredStorageReader needs a checkpoint name: dcp.load(state_dict, "
                "checkpoint_id='step_100', storage_reader=reader)"
            )
        self.last_stats = []
        self._s3 = S3StorageReader(
            self.region,
            str(self.s3_root.child(self.name)),
            self.s3client_config,
            verify=self.verify,
            on_phase=self._collect,
        )
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
                if isinstance(error, CheckpointNotFoundError):
                    raise self._not_found(error) from error
                raise
            self._kept_error = error  # raised from set_up_storage_reader: see S3StorageReader
            return Metadata(state_dict_metadata={})

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        s3 = self._s3_reader()  # read_metadata() came first
        if self._kept_error is not None:
            error, self._kept_error = self._kept_error, None
            raise self._not_found(error) if isinstance(error, CheckpointNotFoundError) else error
        self.rank = storage_rank(kwargs.get("rank", self.rank))
        s3.set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)  # checks every path
        self.storage_data = s3.storage_data

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
            "never finished)",
            bucket=error.bucket,
            key=error.key,
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
                log.warning(
                    "s3dcp: local copy damaged: %s item %r %s; reading it from S3",
                    path,
                    item.storage_index.fqn,
                    problem,
                )
                return None
            return data

        local_bytes = 0
        in_flight: dict[PoolFuture[memoryview | None], ReadItem] = {}
        with ThreadPoolExecutor(
            _LOCAL_READS, thread_name_prefix="s3dcp-local", initializer=leave_signals_to_main_thread
        ) as pool:
            try:
                while waiting or in_flight:
                    while waiting and len(in_flight) < _LOCAL_READS:
                        path, item = waiting.popleft()
                        in_flight[pool.submit(read_item, path, item)] = item
                    done, _ = wait_futures(in_flight, return_when=FIRST_COMPLETED)
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
        self.last_stats.append(
            report_phase(
                "load.local",
                rank=self.rank,
                checkpoint=str(self._local_dir),
                items=len(plan.items) - len(missing),
                objects=len(by_file),
                requests=0,
                size=local_bytes,
                seconds=time.monotonic() - started,
                callback=self.on_phase,
            )
        )
        if missing:
            self._read_from_s3(missing, planner)
        future_done: Future[None] = Future()
        future_done.set_result(None)
        return future_done

    def _read_from_s3(self, items: list[ReadItem], planner: LoadPlanner) -> None:
        """Read the items the local copy lacks from S3; with no usable S3 copy the checkpoint is damaged."""
        try:
            if self.source == "local":
                self._check_same_save(items)
            self._s3_reader().read_data(LoadPlan(items), planner).wait()
        except S3DCPError:
            log.error(
                "s3dcp: %d item(s) of the local copy %s are missing or damaged, and the S3 copy could not supply them",
                len(items),
                self._local_dir,
            )
            raise

    def _check_same_save(self, items: list[ReadItem]) -> None:
        """The S3 copy must be the save the local metadata describes, or its items would be mixed in."""
        s3 = self._s3_reader()
        try:
            s3_metadata = s3.read_metadata()
        except CheckpointNotFoundError as err:
            raise self._local_damaged(
                items, f"S3 holds no copy of it ({s3.uri}/{METADATA_NAME} does not exist)"
            ) from err
        theirs = s3_metadata.storage_meta.save_id if s3_metadata.storage_meta else None
        if self._save_id and theirs != self._save_id:
            raise self._local_damaged(
                items, f"the S3 copy {s3.uri} is from another save (different save ids), so it cannot stand in for them"
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

    def _s3_reader(self) -> S3StorageReader:
        if self._s3 is None:
            raise RuntimeError("read_metadata() must come first: DCP calls it before anything else")
        return self._s3

    @property
    def _local_dir(self) -> Path:
        return self.local_root / self._name()

    def _name(self) -> str:
        if self.name is None:
            raise ValueError("no checkpoint name: pass checkpoint_id='step_N' to dcp.load, or the name to reset()")
        return self.name


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
