"""The load engine: fetch a load plan's bytes from S3 and hand each item to DCP's planner.

:func:`fetch_metadata` reads ``.metadata`` and :func:`check_records` checks
what it records (every object path inside the checkpoint, byte ranges,
stream transforms) before anything is fetched. :class:`Loader` then runs one
``read_data``: it coalesces the plan's items into ranged GETs, bounds the
bytes held in flight, reads large tensors straight into their destinations
(:mod:`s3dcp._format.in_place`), decodes transformed items, verifies digests
on worker threads, and calls the planner on the calling thread only.

A GET whose span is larger than ``max_read_size`` (a single large item, say)
is split into consecutive pieces of at most that size (and at least
:data:`MIN_PIECE_SIZE`), fetched in parallel into the same destinations, so
one large tensor loads at the speed of several connections, still in place;
its items are checked once every piece is in. Each piece is a ranged GET of
its own, retried on its own. Whole GETs, pieces and the checks after a split
GET share one pool of at most ``max_concurrency`` workers, of which an
:class:`~s3dcp._s3.concurrency.AdaptiveLimit` keeps busy as many as pay.

A checkpoint whose ``.metadata`` exists was saved: objects it lists that are
missing or shorter than recorded are :class:`~s3dcp._errors.CheckpointDamagedError`,
never :class:`~s3dcp._errors.CheckpointNotFoundError`.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections import defaultdict, deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import Future as PoolFuture
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem

from s3dcp import _crc32 as crc32
from s3dcp._config import MIB
from s3dcp._errors import (
    CheckpointDamagedError,
    CheckpointNotFoundError,
    ObjectNotFoundError,
    S3RequestError,
    UnsafeCheckpointError,
)
from s3dcp._format import transforms
from s3dcp._format.archive import load_tensor
from s3dcp._format.framing import Chunk, Framing, framing_for
from s3dcp._format.in_place import (
    InPlaceRead,
    SpanLayout,
    StoredChunks,
    destination_bytes,
    disjoint,
    framing_into,
    in_place_candidate,
    plan_in_place,
)
from s3dcp._format.integrity import get_checksum, verify
from s3dcp._format.layout import METADATA_NAME
from s3dcp._format.metadata import check_relative_key, load_metadata
from s3dcp._format.plain_data import check_plain_data
from s3dcp._interrupts import leave_signals_to_main_thread, wait_futures
from s3dcp._ranges import ByteRange, Piece, coalesce, split
from s3dcp._s3.client import S3Client
from s3dcp._s3.concurrency import Sent
from s3dcp._s3.download import SHORT_OBJECT_CODE, DownloadBuffers, read_range_into
from s3dcp._s3.objects import read_object
from s3dcp._uri import S3Uri

__all__ = [
    "DAMAGED_ADVICE",
    "LoadCounts",
    "Loader",
    "MIN_PIECE_SIZE",
    "Records",
    "check_records",
    "deliver_item",
    "fetch_metadata",
    "hand_to_planner",
    "name_items",
    "parse_item",
]

log = logging.getLogger("s3dcp")

# A GET larger than max_read_size is split into pieces of at least this size even when max_read_size is
# smaller (it may be set tiny to stop coalescing): a piece costs a request, its first-byte latency and CPU
MIN_PIECE_SIZE = MIB

DAMAGED_ADVICE = (
    "Restore the checkpoint's objects from a copy or backup, or load an older checkpoint explicitly "
    "(s3dcp ls shows them); the checkpoint was saved, so this is no reason to start from scratch"
)


def fetch_metadata(client: S3Client, uri: S3Uri) -> tuple[Metadata, int]:
    """The checkpoint's ``.metadata``, safely unpickled, and its size in bytes."""
    key = uri.key(METADATA_NAME)
    try:
        data = read_object(client, uri.bucket, key)
    except ObjectNotFoundError as err:
        raise CheckpointNotFoundError(
            f"no complete checkpoint at {uri}: {METADATA_NAME} is missing (the path "
            "is wrong, or the save never finished). A checkpoint is complete only once "
            f"its {METADATA_NAME} exists",
            bucket=uri.bucket,
            key=key,
        ) from err
    return load_metadata(data, f"s3://{uri.bucket}/{key}"), len(data)


@dataclass
class Records:
    """What a checked ``.metadata`` records per item: where its bytes are, its stored chunk, its transforms."""

    storage_data: dict[MetadataIndex, Any]
    chunks: StoredChunks
    transforms: dict[MetadataIndex, list[Any]]  # items stored through DCP stream transforms


def check_records(metadata: Metadata, uri: S3Uri) -> Records:
    """Check every item's storage record before anything is fetched: paths inside the checkpoint,
    sane byte ranges, stream transforms this process can undo."""
    where = str(uri.child(METADATA_NAME))
    storage_data = metadata.storage_data
    found: dict[MetadataIndex, list[Any]] = {}
    resolved: dict[tuple[str, ...], list[Any]] = {}
    if not isinstance(storage_data, dict):
        raise CheckpointDamagedError(
            f"{where} has no per-item storage records, so no item can be found: {DAMAGED_ADVICE}",
            bucket=uri.bucket,
            key=uri.key(METADATA_NAME),
        )
    for index, info in storage_data.items():
        check_relative_key(getattr(info, "relative_path", None), where)
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
            raise CheckpointDamagedError(
                f"{where} records a bad byte range for {index.fqn!r}: {DAMAGED_ADVICE}",
                bucket=uri.bucket,
                key=uri.key(METADATA_NAME),
            )
        descriptors = transforms.checked_descriptors(info, where, index.fqn)
        if descriptors:
            if descriptors not in resolved:  # the extensions keep no state between items
                resolved[descriptors] = transforms.resolve(descriptors, where, index.fqn)
            found[index] = resolved[descriptors]
    return Records(storage_data, StoredChunks(metadata), found)


@dataclass(frozen=True)
class LoadCounts:
    """What one ``read_data`` fetched: objects touched, GETs made, bytes fetched."""

    objects: int
    requests: int
    size: int


class Loader:
    """One rank's ``read_data`` over a checked checkpoint: ranged GETs in parallel, the planner on this thread."""

    def __init__(self, client: S3Client, uri: S3Uri, records: Records, *, verify: bool) -> None:
        self._client = client
        self.uri = uri
        self.verify = verify
        self.storage_data = records.storage_data
        self._chunks: StoredChunks | None = records.chunks
        self._transforms = records.transforms

    def read(self, plan: LoadPlan, planner: LoadPlanner, coalesce_gap: int | None = None) -> LoadCounts:
        """Fetch the plan's bytes on worker threads; call the planner and copy only on this thread.

        Planner hooks and the copies into the caller's tensors run on the
        calling thread, so they see its thread-local state (grad and
        inference mode, autocast, the current CUDA device and stream) exactly as
        with ``FileSystemReader``. Each tensor is resolved just before its bytes
        are read (in-place reads) or copied, and committed right after, so a
        planner that hands out temporaries holds only those of the GETs in flight.
        ``coalesce_gap`` overrides the configured one (0: fetch no byte the plan does not need).
        """
        config = self._client.settings.config
        by_object: dict[str, list[ReadItem]] = defaultdict(list)
        for item in plan.items:
            by_object[self.storage_data[item.storage_index].relative_path].append(item)
        waiting: deque[_Fetch] = deque()
        for relative, items in by_object.items():
            ranges = [self._range_of(item) for item in items]
            gap = config.coalesce_gap if coalesce_gap is None else coalesce_gap
            for fetch in coalesce(ranges, gap, config.max_read_size):
                waiting.append(_Fetch(relative, fetch.span, [items[i] for i in fetch.members]))

        fetched = requests = 0
        limit = config.max_concurrency * config.max_read_size
        buffers = DownloadBuffers(limit)
        held = 0  # buffer (and decoding) bytes of the GETs in flight, bounded by ``limit`` (or one larger GET alone)
        piece_size = max(config.max_read_size, MIN_PIECE_SIZE)
        units = sum(-(-job.span.length // piece_size) for job in waiting)
        # every task in the pool is one GET (a whole one or a piece) or the checks after a split GET,
        # so the requests in flight stay within the adaptive limit, and so within max_concurrency
        workers = max(1, min(config.max_concurrency, units))
        concurrency = self._client.concurrency("download")
        plain_only = isinstance(planner, DefaultLoadPlanner)
        stop = threading.Event()  # set once this read fails: GETs that are retrying give up
        in_flight: dict[PoolFuture[_Fetched | None], _Fetch | _Split] = {}
        ready: _Fetch | None = None  # targets resolved, waiting for buffer bytes
        pieces: deque[tuple[_Split, Piece]] = deque()  # GETs of the split GETs under way, not sent yet
        complete: deque[_Split] = deque()  # split GETs whose pieces are all in, to be checked
        sent: dict[PoolFuture[_Fetched | None], Sent] = {}  # when each GET in flight was sent
        with ThreadPoolExecutor(
            workers, thread_name_prefix="s3dcp-read", initializer=leave_signals_to_main_thread
        ) as pool:
            try:
                while waiting or in_flight or ready is not None or pieces or complete:
                    while len(in_flight) < min(workers, concurrency.current):
                        if complete:
                            cut = complete.popleft()
                            in_flight[pool.submit(self._check, cut.job, cut.buffer, plain_only)] = cut.job
                            continue
                        if pieces:
                            cut, piece = pieces.popleft()
                            future = pool.submit(self._read_piece, cut.job, piece, stop)
                            in_flight[future], sent[future] = cut, concurrency.started()
                            requests += 1
                            continue
                        if ready is None:
                            if not waiting:
                                break
                            ready = self._lay_out(waiting.popleft(), planner)
                        size = DownloadBuffers.capacity_for(ready.layout.buffered) + ready.decoding
                        if in_flight and held + size > limit:
                            break
                        held += size
                        if ready.span.length > piece_size:
                            buffer = buffers.take(ready.layout.buffered)
                            parts = split(ready.span, ready.layout.targets(buffer), piece_size)
                            cut = _Split(ready, buffer, len(parts))
                            pieces.extend((cut, part) for part in parts)
                        else:
                            future = pool.submit(self._fetch, ready, buffers, plain_only, stop)
                            in_flight[future], sent[future] = ready, concurrency.started()
                            requests += 1
                        ready = None
                    done, _ = wait_futures(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        unit = in_flight.pop(future)
                        result = future.result()
                        if isinstance(unit, _Split):  # one piece is in
                            concurrency.finished(sent.pop(future), unit.piece_bytes)
                            unit.left -= 1
                            if not unit.left:
                                complete.append(unit)
                            continue
                        assert result is not None  # a whole GET, or the checks after a split one
                        if future in sent:  # not the checks after a split GET
                            concurrency.finished(sent.pop(future), unit.span.length)
                        try:
                            waiting.extendleft(self._hand_over(unit, result, planner))
                        finally:
                            buffers.give_back(result.buffer)
                            held -= DownloadBuffers.capacity_for(unit.layout.buffered) + unit.decoding
                        fetched += unit.span.length
            except BaseException as error:
                stop.set()  # GETs that are retrying give up; those not started yet never are
                running = [future for future in in_flight if not future.cancel()]
                log.debug(
                    "%s: reading stopped on %s; waiting for %d request(s) already sent to end",
                    self.uri,
                    type(error).__name__,
                    len(running),
                )
                raise
        return LoadCounts(objects=len(by_object), requests=requests, size=fetched)

    def _lay_out(self, job: _Fetch, planner: LoadPlanner) -> _Fetch:
        """Resolve the destinations of the tensors this GET can read (or decode) in place, on the calling thread.

        Also count what the GET's transformed items will need to be decoded
        into, so the bytes held by the GETs in flight stay bounded.
        """
        reads: list[InPlaceRead] = []
        for item in job.items:
            if item.storage_index not in self._transforms:
                continue
            chunk = self.chunk_of(item)
            if (
                job.in_place
                and item.type == LoadItemType.TENSOR
                and chunk is not None
                and in_place_candidate(None, chunk)
            ):
                target = planner.resolve_tensor(item).detach()
                job.targets[id(item)] = target
                framing = framing_into(item, chunk, target)
                if framing is not None:
                    job.decode_into[id(item)] = framing
                    continue
            job.decoding += self._decoded_size(item)
        if job.in_place and self._chunks is not None and disjoint([self._range_of(i) for i in job.items]):
            for item in job.items:
                chunk = self.chunk_of(item)
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
        chunk = self.chunk_of(item)
        if item.type == LoadItemType.TENSOR and chunk is not None:
            return chunk[0].itemsize * math.prod(chunk[1])
        return 2 * self._range_of(item).length

    def _fetch(self, job: _Fetch, buffers: DownloadBuffers, plain_only: bool, stop: threading.Event) -> _Fetched | None:
        """On a worker: one GET, then the checks, decoding and parsing that need no planner."""
        buffer = buffers.take(job.layout.buffered)
        self._read(job.relative, job.span, job.layout.targets(buffer), job.items, stop)
        return self._check(job, buffer, plain_only)

    def _read_piece(self, job: _Fetch, piece: Piece, stop: threading.Event) -> _Fetched | None:
        """On a worker: one piece of a split GET, straight into its part of the job's buffer and destinations."""
        self._read(job.relative, piece.span, piece.into, job.items, stop, whole=job.span)
        return None

    def _check(self, job: _Fetch, buffer: memoryview, plain_only: bool) -> _Fetched | None:
        """On a worker, once all of ``job.span`` is in: the checks, decoding and parsing that need no planner."""
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
                if framing is not None and self._decode_into(item, job.relative, data, framing, job.targets[id(item)]):
                    parsed.append((item, None))
                    continue
                data = self._decode(item, job.relative, data)
                parsed.append((item, parse_item(item, data, self.chunk_of(item), plain_data_only=plain_only)))
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
            log.debug(
                "%s: item %r is not laid out as expected; reading it again the ordinary way",
                self.uri.child(job.relative),
                item.storage_index.fqn,
            )
            retry = _Fetch(job.relative, self._range_of(item), [item], in_place=False)
            retry.targets[id(item)] = job.targets.pop(id(item))
            again.append(retry)
        return again

    def stored_framing(self, index: MetadataIndex, size: int) -> Framing | None:
        """The archive framing around a stored item's tensor bytes if the item (``size`` bytes) could be
        read in place: a whole tensor chunk, stored without transforms. Known from ``.metadata`` alone."""
        chunk = self._chunks.get(index) if self._chunks is not None else None
        if chunk is None or index in self._transforms or not in_place_candidate(ByteRange(0, size), chunk):
            return None
        return framing_for(*chunk)

    def chunk_of(self, item: ReadItem) -> Chunk | None:
        """The stored chunk (dtype, shape) behind a tensor item, as ``.metadata`` records it, if it does."""
        return self._chunks.get(item.storage_index) if self._chunks is not None else None

    def _read(
        self,
        relative: str,
        span: ByteRange,
        into: list[memoryview],
        items: list[ReadItem],
        stop: threading.Event,
        whole: ByteRange | None = None,
    ) -> None:
        """Fetch ``span`` of one object (a piece of ``whole``, if given); a missing or short object
        is damage to this checkpoint."""
        key = self.uri.key(relative)
        try:
            read_range_into(self._client, self.uri.bucket, key, span, into, stop=stop)
        except ObjectNotFoundError as err:
            raise self._damaged(relative, items, "that object is missing") from err
        except S3RequestError as err:
            if err.code != SHORT_OBJECT_CODE:
                raise
            raise self._damaged(
                relative, items, f"that object ends before byte {(whole or span).end}, where these items end"
            ) from err

    def _damaged(self, relative: str, items: list[ReadItem], problem: str) -> CheckpointDamagedError:
        key = self.uri.key(relative)
        return CheckpointDamagedError(
            f"checkpoint {self.uri} is damaged: its {METADATA_NAME} lists s3://{self.uri.bucket}/{key} "
            f"for {name_items(items)}, but {problem}. {DAMAGED_ADVICE}",
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

    def _decode_into(
        self, item: ReadItem, relative: str, data: memoryview, framing: Framing, target: torch.Tensor
    ) -> bool:
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
            if crc32.compute(destination) != framing.recorded_crc(tail):
                names = ", ".join(transforms.descriptors_of(self.storage_data[item.storage_index]))
                raise self._damaged(
                    relative,
                    [item],
                    f"its bytes, decoded through {names}, hold a tensor whose "
                    "CRC-32 is not the one its archive records",
                )
        return True

    def _undecodable(self, item: ReadItem, relative: str, err: Exception) -> CheckpointDamagedError:
        names = ", ".join(transforms.descriptors_of(self.storage_data[item.storage_index]))
        return self._damaged(
            relative, [item], f"its stored bytes do not decode through {names} ({type(err).__name__}: {err})"
        )

    # -- helpers -------------------------------------------------------------------
    def _range_of(self, item: ReadItem) -> ByteRange:
        info = self.storage_data[item.storage_index]
        return ByteRange(info.offset, info.offset + info.length)


def name_items(items: list[ReadItem], shown: int = 5) -> str:
    """The items' state-dict names for a message: the first few, and how many more."""
    names = sorted({item.storage_index.fqn for item in items})
    text = ", ".join(repr(name) for name in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def parse_item(
    item: ReadItem, data: memoryview, chunk: Chunk | None, *, plain_data_only: bool
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
    return _narrow(load_tensor(data, chunk), item.storage_offsets, item.lengths)


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
    chunk: Chunk | None = None,
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
class _Split:
    """A GET too large for one request, under way as pieces: its job, its buffer, the pieces still to come in."""

    job: _Fetch
    buffer: memoryview
    left: int

    def __post_init__(self) -> None:
        self.piece_bytes = self.job.span.length // self.left  # pieces are near-equal


@dataclass
class _Fetched:
    """What a worker made of one GET: each item parsed (``None``: read in place and checked), and the
    in-place items whose framing was not the expected one (to be read again the ordinary way)."""

    buffer: memoryview
    parsed: list[tuple[ReadItem, memoryview | torch.Tensor | None]]
    again: list[ReadItem]
