"""``S3StorageReader``: DCP's ``StorageReader`` for S3.

DCP calls, in this order (torch 2.13, ``dcp.load``):

0. all ranks: ``reset(checkpoint_id)`` when a checkpoint id is passed;
1. all ranks: ``read_metadata()``: fetches ``.metadata``;
2. all ranks: ``set_up_storage_reader(metadata, is_coordinator, ...)``:
   checks every recorded object path stays inside the checkpoint, and
   raises any error kept from step 1 (see below);
3. all ranks: ``prepare_local_plan(plan)``; 4. coordinator: ``prepare_global_plan``;
5. all ranks: ``read_data(plan, planner)``: ranged, coalesced, parallel GETs
   of just the bytes the plan needs. The planner's hooks and the copies into
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

import io
import logging
import math
import os
import time
import uuid
from collections import defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from concurrent.futures import Future as PoolFuture
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from s3dcp._compat.torch import called_from_dcp_load, storage_rank
from s3dcp._format.layout import METADATA_NAME
from s3dcp._s3.client import S3Client
from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._s3.download import (
    SHORT_OBJECT_CODE,
    ByteRange,
    DownloadBuffers,
    coalesce,
    read_object,
    read_range_into,
)
from s3dcp._errors import (
    CheckpointDamagedError,
    CheckpointNotFoundError,
    ObjectNotFoundError,
    S3DCPError,
    S3RequestError,
    UnsafeCheckpointError,
)
from s3dcp._format.metadata import check_relative_key, load_metadata
from s3dcp._format.archive_writer import Framing
from s3dcp._format.in_place import (
    InPlaceRead,
    SpanLayout,
    StoredChunks,
    destination_bytes,
    disjoint,
    framed_tensor,
    framing_into,
    in_place_candidate,
    plan_in_place,
)
from s3dcp._format import transforms
from s3dcp._format import crc32
from s3dcp._format.integrity import get_checksum, verify
from s3dcp._format.shard import check_plain_data, load_tensor
from s3dcp._stats import PhaseCallback, PhaseStats, report_phase
from s3dcp._uri import S3Uri, is_s3_uri, parse_s3_uri

__all__ = ["S3StorageReader", "deliver_item", "hand_to_planner", "name_items", "parse_item"]

log = logging.getLogger("s3dcp")

_DAMAGED_ADVICE = (
    "Restore the checkpoint's objects from a copy or backup, or load an older checkpoint explicitly "
    "(s3dcp ls shows them); the checkpoint was saved, so this is no reason to start from scratch"
)


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
    """

    def __init__(
        self,
        region: str | None,
        path: str | os.PathLike[str],
        s3client_config: S3ClientConfig | None = None,
        *,
        verify: bool = True,
        on_phase: PhaseCallback | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(verify, bool):
            raise TypeError(f"verify must be a bool, got {verify!r}")
        self.region = region
        self.s3client_config = s3client_config
        self.verify = verify
        self.uri: S3Uri = parse_s3_uri(path)
        self._client = S3Client(resolve_settings(region, s3client_config))
        self.load_id = str(uuid.uuid4())
        self.storage_data: dict[MetadataIndex, Any] = {}
        self._chunks: StoredChunks | None = None
        self._transforms: dict[MetadataIndex, list[Any]] = {}  # items stored through DCP stream transforms
        self._kept_error: S3DCPError | None = None
        self.on_phase = on_phase
        self.last_stats: list[PhaseStats] = []
        self.rank: int | None = None

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
        self._kept_error = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        self._kept_error = None
        self.last_stats = []
        started = time.monotonic()
        try:
            metadata, size = self._fetch_metadata()
        except S3DCPError as error:
            if not called_from_dcp_load():
                raise
            self._kept_error = error
            return Metadata(state_dict_metadata={})
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        self._report("load.metadata", items=len(metadata.storage_data or {}), objects=1, requests=1, size=size,
                     started=started)
        return metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        if self._kept_error is not None:
            error, self._kept_error = self._kept_error, None
            raise error
        self.rank = storage_rank(kwargs.get("rank", self.rank))
        where = str(self.uri.child(METADATA_NAME))
        storage_data = metadata.storage_data
        self._transforms = {}
        resolved: dict[tuple[str, ...], list[Any]] = {}
        if not isinstance(storage_data, dict):
            raise CheckpointDamagedError(
                f"{where} has no per-item storage records, so no item can be found: {_DAMAGED_ADVICE}",
                bucket=self.uri.bucket,
                key=self.uri.key(METADATA_NAME),
            )
        for index, info in storage_data.items():
            check_relative_key(getattr(info, "relative_path", None), where)
            offset, length = getattr(info, "offset", None), getattr(info, "length", None)
            if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
                raise CheckpointDamagedError(
                    f"{where} records a bad byte range for {index.fqn!r}: {_DAMAGED_ADVICE}",
                    bucket=self.uri.bucket,
                    key=self.uri.key(METADATA_NAME),
                )
            descriptors = transforms.checked_descriptors(info, where, index.fqn)
            if descriptors:
                if descriptors not in resolved:  # the extensions keep no state between items
                    resolved[descriptors] = transforms.resolve(descriptors, where, index.fqn)
                self._transforms[index] = resolved[descriptors]
        self.storage_data = storage_data
        self._chunks = StoredChunks(metadata)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Fetch the plan's bytes on worker threads; call the planner and copy only on this thread.

        Planner hooks and the copies into the caller's tensors run where DCP
        called ``read_data``, so they see its thread-local state (grad and
        inference mode, autocast, the current CUDA device and stream) exactly as
        with ``FileSystemReader``. Each tensor is resolved just before its bytes
        are read (in-place reads) or copied, and committed right after, so a
        planner that hands out temporaries holds only those of the GETs in flight.
        """
        config = self._client.settings.config
        by_object: dict[str, list[ReadItem]] = defaultdict(list)
        for item in plan.items:
            by_object[self.storage_data[item.storage_index].relative_path].append(item)
        waiting: deque[_Fetch] = deque()
        for relative, items in by_object.items():
            ranges = [self._range_of(item) for item in items]
            for fetch in coalesce(ranges, config.coalesce_gap, config.max_read_size):
                waiting.append(_Fetch(relative, fetch.span, [items[i] for i in fetch.members]))

        started = time.monotonic()
        fetched = requests = 0
        limit = config.max_concurrency * config.max_read_size
        buffers = DownloadBuffers(limit)
        held = 0  # buffer (and decoding) bytes of the GETs in flight, bounded by ``limit`` (or one larger GET alone)
        workers = max(1, min(config.max_concurrency, len(waiting)))
        plain_only = isinstance(planner, DefaultLoadPlanner)
        in_flight: dict[PoolFuture[_Fetched], _Fetch] = {}
        ready: _Fetch | None = None  # targets resolved, waiting for buffer bytes
        with ThreadPoolExecutor(workers, thread_name_prefix="s3dcp-read") as pool:
            try:
                while waiting or in_flight or ready is not None:
                    while len(in_flight) < workers and (ready is not None or waiting):
                        if ready is None:
                            ready = self._lay_out(waiting.popleft(), planner)
                        size = DownloadBuffers.capacity_for(ready.layout.buffered) + ready.decoding
                        if in_flight and held + size > limit:
                            break
                        held += size
                        in_flight[pool.submit(self._fetch, ready, buffers, plain_only)] = ready
                        ready = None
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        job = in_flight.pop(future)
                        result = future.result()
                        try:
                            waiting.extendleft(self._hand_over(job, result, planner))
                        finally:
                            buffers.give_back(result.buffer)
                            held -= DownloadBuffers.capacity_for(job.layout.buffered) + job.decoding
                        fetched += job.span.length
                        requests += 1
            finally:
                for future in in_flight:
                    future.cancel()
        self._report("load.read", items=len(plan.items), objects=len(by_object), requests=requests, size=fetched,
                     started=started)
        result_future: Future[None] = Future()
        result_future.set_result(None)
        return result_future

    def _lay_out(self, job: _Fetch, planner: LoadPlanner) -> _Fetch:
        """Resolve the destinations of the tensors this GET can read (or decode) in place, on the calling thread.

        Also count what the GET's transformed items will need to be decoded
        into, so the bytes held by the GETs in flight stay bounded.
        """
        reads: list[InPlaceRead] = []
        for item in job.items:
            if item.storage_index not in self._transforms:
                continue
            chunk = self._chunk_of(item)
            if job.in_place and chunk is not None and in_place_candidate(None, chunk):
                target = planner.resolve_tensor(item).detach()
                job.targets[id(item)] = target
                framing = framing_into(item, chunk, target)
                if framing is not None:
                    job.decode_into[id(item)] = framing
                    continue
            job.decoding += self._decoded_size(item)
        if job.in_place and self._chunks is not None and disjoint([self._range_of(i) for i in job.items]):
            for item in job.items:
                chunk = self._chunk_of(item)
                if item.type != LoadItemType.TENSOR or chunk is None or chunk[1] != tuple(item.lengths):
                    continue
                if item.storage_index in self._transforms:
                    continue
                if not in_place_candidate(self._range_of(item), chunk):
                    continue
                target = planner.resolve_tensor(item).detach()
                job.targets[id(item)] = target
                read = plan_in_place(item, self._range_of(item), chunk, target)
                if read is not None:
                    reads.append(read)
        reads.sort(key=lambda read: read.span.start)
        job.layout = SpanLayout(job.span, reads)
        return job

    def _decoded_size(self, item: ReadItem) -> int:
        """About how many bytes a transformed item decodes to: its tensor's, or (bytes) twice what is stored."""
        chunk = self._chunk_of(item)
        if item.type == LoadItemType.TENSOR and chunk is not None:
            return chunk[0].itemsize * math.prod(chunk[1])
        return 2 * self._range_of(item).length

    def _fetch(self, job: _Fetch, buffers: DownloadBuffers, plain_only: bool) -> _Fetched:
        """On a worker: one GET, then the checks, decoding and parsing that need no planner."""
        buffer = buffers.take(job.layout.buffered)
        self._read(job.relative, job.span, job.layout.targets(buffer), job.items)
        placed = {id(read.item): read for read in job.layout.reads}
        parsed: list[tuple[ReadItem, memoryview | torch.Tensor | None]] = []
        again: list[ReadItem] = []
        for item in job.items:
            read = placed.get(id(item))
            if read is None:
                item_range = self._range_of(item)
                data = job.layout.view(buffer, item_range.start, item_range.end)
                self._verify(item, job.relative, data)
                framing = job.decode_into.get(id(item))
                if framing is not None and self._decode_into(item, job.relative, data, framing,
                                                             job.targets[id(item)]):
                    parsed.append((item, None))
                    continue
                data = self._decode(item, job.relative, data)
                parsed.append((item, parse_item(item, data, self._chunk_of(item), plain_data_only=plain_only)))
                continue
            head = job.layout.view(buffer, read.span.start, read.data.start)
            tail = job.layout.view(buffer, read.data.end, read.span.end)
            if not read.framing.matches(head, tail):
                again.append(item)
                continue
            self._verify(item, job.relative, (head, destination_bytes(read.target), tail))
            parsed.append((item, None))
        return _Fetched(buffer, parsed, again)

    def _hand_over(self, job: _Fetch, result: _Fetched, planner: LoadPlanner) -> list[_Fetch]:
        """On the calling thread: copy and commit what one GET brought; return the GETs to make again."""
        for item, value in result.parsed:  # first close the pairs the GET opened
            if value is None:  # read in place, checked
                planner.commit_tensor(item, job.targets.pop(id(item)))
        for item, value in result.parsed:
            if value is not None:
                hand_to_planner(item, value, planner, job.targets.pop(id(item), None))
        again = []
        for item in result.again:
            log.debug("%s: item %r is not laid out as expected; reading it again the ordinary way",
                      self.uri.child(job.relative), item.storage_index.fqn)
            retry = _Fetch(job.relative, self._range_of(item), [item], in_place=False)
            retry.targets[id(item)] = job.targets.pop(id(item))
            again.append(retry)
        return again

    def _chunk_of(self, item: ReadItem) -> tuple[torch.dtype, tuple[int, ...]] | None:
        return self._chunks.get(item.storage_index) if self._chunks is not None else None

    def _read(self, relative: str, span: ByteRange, into: list[memoryview], items: list[ReadItem]) -> None:
        """Fetch ``span`` of one object; a missing or short object is damage to this checkpoint."""
        key = self.uri.key(relative)
        try:
            read_range_into(self._client, self.uri.bucket, key, span, into)
        except ObjectNotFoundError as err:
            raise self._damaged(relative, items, "that object is missing") from err
        except S3RequestError as err:
            if err.code != SHORT_OBJECT_CODE:
                raise
            raise self._damaged(
                relative, items, f"that object ends before byte {span.end}, where these items end"
            ) from err

    def _damaged(self, relative: str, items: list[ReadItem], problem: str) -> CheckpointDamagedError:
        key = self.uri.key(relative)
        return CheckpointDamagedError(
            f"checkpoint {self.uri} is damaged: its {METADATA_NAME} lists s3://{self.uri.bucket}/{key} "
            f"for {name_items(items)}, but {problem}. {_DAMAGED_ADVICE}",
            bucket=self.uri.bucket,
            key=key,
        )

    def _verify(self, item: ReadItem, relative: str, data: Any) -> None:
        if self.verify:
            verify(
                self.storage_data[item.storage_index],
                data,
                bucket=self.uri.bucket,
                key=self.uri.key(relative),
                item=item.storage_index.fqn,
            )

    def _decode(self, item: ReadItem, relative: str, data: memoryview) -> memoryview:
        """Undo the item's stream transforms (after its stored bytes were checked), if it has any."""
        extensions = self._transforms.get(item.storage_index)
        if not extensions:
            return data
        try:
            return transforms.decode(data, extensions, self._decoded_size(item))
        except Exception as err:  # whatever the extension's decoder raises on bytes it cannot undo
            raise self._undecodable(item, relative, err) from err

    def _decode_into(self, item: ReadItem, relative: str, data: memoryview, framing: Framing,
                     target: torch.Tensor) -> bool:
        """Decode a transformed tensor straight into its destination; ``False``: its archive is laid out
        otherwise (it is then decoded the ordinary way, which overwrites whatever went into ``target``)."""
        extensions = self._transforms[item.storage_index]
        destination = destination_bytes(target)
        try:
            tail = transforms.decode_into(data, extensions, framing.head, destination, len(framing.tail))
        except Exception as err:  # whatever the extension's decoder raises on bytes it cannot undo
            raise self._undecodable(item, relative, err) from err
        if tail is None or not framing.matches(framing.head, tail):
            return False
        if self.verify and get_checksum(self.storage_data[item.storage_index]) is None:
            # no digest of the stored bytes (another writer saved it), and zstd frames carry no
            # checksum by default: the archive's own CRC-32 of the tensor's bytes is the check left
            recorded = int.from_bytes(tail[framing.data_crc_at[0] : framing.data_crc_at[0] + 4], "little")
            if crc32.compute(destination) != recorded:
                names = ", ".join(transforms.descriptors_of(self.storage_data[item.storage_index]))
                raise self._damaged(relative, [item], f"its bytes, decoded through {names}, hold a tensor whose "
                                    "CRC-32 is not the one its archive records")
        return True

    def _undecodable(self, item: ReadItem, relative: str, err: Exception) -> CheckpointDamagedError:
        names = ", ".join(transforms.descriptors_of(self.storage_data[item.storage_index]))
        return self._damaged(
            relative, [item], f"its stored bytes do not decode through {names} ({type(err).__name__}: {err})"
        )

    # -- helpers -------------------------------------------------------------------
    def _report(self, phase: str, *, items: int, objects: int, requests: int, size: int, started: float) -> None:
        self.last_stats.append(report_phase(
            phase, rank=self.rank, checkpoint=str(self.uri), items=items, objects=objects, requests=requests,
            size=size, seconds=time.monotonic() - started, callback=self.on_phase,
        ))

    def _fetch_metadata(self) -> tuple[Metadata, int]:
        key = self.uri.key(METADATA_NAME)
        try:
            data = read_object(self._client, self.uri.bucket, key)
        except ObjectNotFoundError as err:
            raise CheckpointNotFoundError(
                f"no complete checkpoint at {self.uri}: {METADATA_NAME} is missing (the path "
                "is wrong, or the save never finished). A checkpoint is complete only once "
                f"its {METADATA_NAME} exists",
                bucket=self.uri.bucket,
                key=key,
            ) from err
        return load_metadata(data, f"s3://{self.uri.bucket}/{key}"), len(data)

    def _range_of(self, item: ReadItem) -> ByteRange:
        info = self.storage_data[item.storage_index]
        return ByteRange(info.offset, info.offset + info.length)


def name_items(items: list[ReadItem], shown: int = 5) -> str:
    """The items' state-dict names for a message: the first few, and how many more."""
    names = sorted({item.storage_index.fqn for item in items})
    text = ", ".join(repr(name) for name in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def parse_item(
    item: ReadItem, data: memoryview, chunk: tuple[torch.dtype, tuple[int, ...]] | None, *, plain_data_only: bool
) -> memoryview | torch.Tensor:
    """What a verified item's bytes hold: the (narrowed) stored tensor, or the bytes of a non-tensor.

    Touches no caller state, so it may run on a worker thread. ``plain_data_only``:
    the planner will unpickle bytes items with ``weights_only=False``
    (``DefaultLoadPlanner`` does), so they are checked to be plain data first.
    """
    if item.type == LoadItemType.BYTE_IO:
        if plain_data_only:
            check_plain_data(data, item.storage_index.fqn)
        return data
    stored = framed_tensor(data, chunk)
    if stored is None:
        stored = load_tensor(data)
    return _narrow(stored, item.storage_offsets, item.lengths)


def _narrow(tensor: torch.Tensor, offsets: Sequence[int], lengths: Sequence[int]) -> torch.Tensor:
    """The part of a stored chunk a read item asks for: a view, never a copy.

    Dimensions the item takes whole are left alone, as DCP's own reader does.
    """
    for dim, (offset, length) in enumerate(zip(offsets, lengths)):
        if length < tensor.size(dim):
            tensor = tensor.narrow(dim, offset, length)
    return tensor


def hand_to_planner(
    item: ReadItem, value: memoryview | torch.Tensor, planner: LoadPlanner, target: torch.Tensor | None = None
) -> None:
    """Give one parsed item to the planner: ``load_bytes``, or resolve, copy and commit a tensor.

    Run it on the thread that called ``read_data``: the copy and the planner
    hooks must see that thread's modes. ``target`` is the item's destination
    if it was resolved already (its pair is then closed here).
    """
    if isinstance(value, memoryview):
        planner.load_bytes(item, io.BytesIO(value))
        return
    if target is None:
        target = planner.resolve_tensor(item).detach()
    if target.size() != value.size():
        raise UnsafeCheckpointError(
            f"item {item.storage_index.fqn!r} has shape {tuple(value.size())} in the "
            f"checkpoint but {tuple(target.size())} in the plan"
        )
    target.copy_(value)
    planner.commit_tensor(item, target)


def deliver_item(
    item: ReadItem,
    data: memoryview,
    planner: LoadPlanner,
    chunk: tuple[torch.dtype, tuple[int, ...]] | None = None,
) -> None:
    """Parse one verified item's bytes and hand them to the planner, on the calling thread."""
    value = parse_item(item, data, chunk, plain_data_only=isinstance(planner, DefaultLoadPlanner))
    hand_to_planner(item, value, planner)


@dataclass
class _Fetch:
    """One GET of ``span`` of one object, serving ``items``; ``targets``: destinations resolved for it."""

    relative: str
    span: ByteRange
    items: list[ReadItem]
    in_place: bool = True
    targets: dict[int, torch.Tensor] = field(default_factory=dict)  # by id() of the item
    decode_into: dict[int, Framing] = field(default_factory=dict)  # transformed tensors decoded into their targets
    decoding: int = 0  # bytes the other transformed items will be decoded into
    layout: SpanLayout = field(init=False)

    def __post_init__(self) -> None:
        self.layout = SpanLayout(self.span, [])


@dataclass
class _Fetched:
    """What a worker made of one GET: each item parsed (``None``: read in place and checked), and the
    in-place items whose framing was not the expected one (to be read again the ordinary way)."""

    buffer: memoryview
    parsed: list[tuple[ReadItem, memoryview | torch.Tensor | None]]
    again: list[ReadItem]
