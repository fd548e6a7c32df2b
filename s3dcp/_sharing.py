"""Shared reads: each stored item several ranks need is read from S3 by one of them and sent to the others.

When a job resumes with replicas (DDP, HSDP replica groups), several ranks
load the same stored items. Rather than each asking S3 for the same bytes,
the coordinator, which sees every rank's load plan, gives each such item to
one of the ranks that need it (:func:`plan_shares`, keeping the bytes each
rank reads from S3 even) and puts the schedule in every rank's plan
(:func:`schedule`). In ``read_data`` (:func:`load_sharing`) each rank reads
its own items as usual, then walks the schedule in batches of at most the
byte budget: the readers fetch and check their items of the batch, send the
stored bytes to the ranks that need them over the process group
(:func:`exchange`), and every rank that needs an item decodes its own part
from the same bytes; a whole tensor a rank receives goes straight into its
destination, as an in-place read from S3 would (:mod:`s3dcp._format.in_place`). The unit is a whole stored item: its digest covers all
of it, and it is checked once, by its reader, before it is sent.

Every rank takes part in every batch's exchange, and each exchange starts
with the ranks telling each other whether they failed so far, so a failed
read ends the load on every rank with an error instead of leaving the
others waiting for bytes that will not come.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import socket
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem

from s3dcp._errors import SharedReadError
from s3dcp._format.framing import Framing
from s3dcp._format.in_place import destination_bytes, framing_into
from s3dcp._load import LoadCounts, Loader, deliver_item, hand_to_planner, parse_item

__all__ = [
    "Member",
    "Share",
    "SharedReads",
    "batches",
    "exchange",
    "load_sharing",
    "member",
    "plan_shares",
    "schedule",
]

log = logging.getLogger("s3dcp")

PIECE_SIZE = 64 << 20
"""The most bytes sent in one message: a receiver holds no more than its batch, whatever the items' size."""


class Member(NamedTuple):
    """What a rank's local plan tells the coordinator: its rank and size of the reader's process group, and
    its host (ranks on one host share its link to S3)."""

    rank: int
    world_size: int
    host: str = ""


class Share(NamedTuple):
    """One stored item several ranks need: who reads it from S3, and who receives it from that rank."""

    stored: MetadataIndex
    size: int
    reader: int
    receivers: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class SharedReads:
    """What the coordinator puts in every rank's plan: the same schedule of shared items, in exchange order."""

    shares: tuple[Share, ...]


def member(group: dist.ProcessGroup | None) -> Member | None:
    """This rank's place in ``group``, for its local plan; ``None`` where no process group is running."""
    if not dist.is_available() or not dist.is_initialized():
        return None
    world_size = dist.get_world_size(group)
    return Member(dist.get_rank(group), world_size, socket.gethostname()) if world_size > 1 else None


def schedule(plans: list[LoadPlan], storage_data: Mapping[MetadataIndex, Any]) -> list[LoadPlan]:
    """The coordinator's step: the plans, each carrying the schedule of shared items if sharing can work.

    Sharing needs every rank's plan to come from a member of the reader's
    process group, in that group's rank order. A load without collectives
    (one plan) or whose ranks do not share reads returns the plans as they
    are; a group that does not match DCP's gets the same, with a warning.
    """
    members = [plan.storage_data for plan in plans if isinstance(plan.storage_data, Member)]
    if len(plans) < 2 or len(members) != len(plans):
        return plans
    if [(found.rank, found.world_size) for found in members] != [(rank, len(plans)) for rank in range(len(plans))]:
        log.warning(
            "s3dcp: shared reads are off for this load: DCP loads on a process group that is not the "
            "reader's (its plans come from ranks %s); pass the process group DCP loads on to "
            "S3StorageReader(process_group=...)",
            [(found.rank, found.world_size) for found in members],
        )
        return [dataclasses.replace(plan, storage_data=None) for plan in plans]
    hosts = [found.host for found in members]
    shares = SharedReads(tuple(plan_shares(plans, storage_data, hosts)))
    return [dataclasses.replace(plan, storage_data=shares) for plan in plans]


def plan_shares(
    plans: Sequence[LoadPlan], storage_data: Mapping[MetadataIndex, Any], hosts: Sequence[str] | None = None
) -> list[Share]:
    """The stored items two or more of ``plans`` (one per rank, in rank order) read, each with its reader.

    Two passes. First each rank's fair load: items go largest first to
    whichever rank that needs them is on the host (``hosts``, by rank) with
    the fewest bytes to read from S3 so far, and of those has the fewest
    itself, counting the items only it needs (ties to the lower rank). Then the
    items are handed out again in stored order (object, then offset), a rank
    keeping the next item while it needs it and stays within its fair load,
    so each rank reads long runs of adjacent bytes: few GETs, none of them
    spanning bytes another rank reads. The result is in stored order, the
    order in which ranks exchange the items.
    """
    needers: dict[MetadataIndex, set[int]] = defaultdict(set)
    for rank, plan in enumerate(plans):
        for item in plan.items:
            if item.storage_index not in storage_data:
                raise KeyError(f"rank {rank} reads {item.storage_index.fqn!r}, which the checkpoint does not record")
            needers[item.storage_index].add(rank)
    alone = [0] * len(plans)  # bytes each rank reads from S3 for itself only
    shared = []
    for index, ranks in needers.items():
        size = storage_data[index].length
        if len(ranks) == 1:
            alone[next(iter(ranks))] += size
        else:
            shared.append((index, size, ranks))
    host_of = list(hosts) if hosts is not None else [""] * len(plans)
    fair = list(alone)
    on_host: dict[str, int] = defaultdict(int)
    for rank, size in enumerate(alone):
        on_host[host_of[rank]] += size
    for _index, size, ranks in sorted(shared, key=lambda entry: (-entry[1], _place(entry[0], storage_data))):
        reader = min(ranks, key=lambda rank: (on_host[host_of[rank]], fair[rank], rank))
        fair[reader] += size
        on_host[host_of[reader]] += size
    load = list(alone)
    shares = []
    reader = -1
    for index, size, ranks in sorted(shared, key=lambda entry: _place(entry[0], storage_data)):
        if reader not in ranks or load[reader] + size / 2 > fair[reader]:
            reader = max(ranks, key=lambda rank: (fair[rank] - load[rank], -rank))
        load[reader] += size
        shares.append(Share(index, size, reader, tuple(sorted(ranks - {reader}))))
    return shares


def batches(shares: Sequence[Share], budget: int) -> Iterator[list[Share]]:
    """``shares`` in order, cut into runs of at most ``budget`` stored bytes (an item larger than that alone).

    Items stored through a stream transform (ZStandard) are held decoded,
    so a batch of them may take a few times its stored bytes.
    """
    batch: list[Share] = []
    size = 0
    for share in shares:
        if batch and size + share.size > budget:
            yield batch
            batch, size = [], 0
        batch.append(share)
        size += share.size
    if batch:
        yield batch


def load_sharing(
    loader: Loader,
    plan: LoadPlan,
    planner: LoadPlanner,
    shares: Sequence[Share],
    group: dist.ProcessGroup | None,
    budget: int,
) -> LoadCounts:
    """One rank's ``read_data`` with shared items: its own items, then the schedule's batches.

    Every rank of ``group`` calls this with the same ``shares``. Errors on
    this rank (reading, checking, handing over) are held until the next
    exchange, so the others learn of them there rather than wait.
    """
    rank = dist.get_rank(group)
    shared = {share.stored for share in shares}
    mine: dict[MetadataIndex, list[ReadItem]] = defaultdict(list)
    own: list[ReadItem] = []
    for item in plan.items:
        (mine[item.storage_index] if item.storage_index in shared else own).append(item)
    counts = [LoadCounts(0, 0, 0)]
    failure: BaseException | None = None
    try:
        counts.append(loader.read(dataclasses.replace(plan, items=own), planner))
    except Exception as error:  # held for the exchange: every rank must learn of it
        failure = error
    sent = received = 0
    for batch in batches(shares, budget):
        keep = _Keep()
        if failure is None:
            try:
                reads = [_whole(share.stored) for share in batch if share.reader == rank]
                counts.append(loader.read(LoadPlan(reads), keep, coalesce_gap=0))  # no bytes others read
            except Exception as error:  # held for the exchange, as above
                failure = error
        framings = {share.stored: loader.stored_framing(share.stored, share.size) for share in batch}
        resolved: dict[MetadataIndex, _Resolved] = {}
        if failure is None:
            try:
                for share in batch:
                    if rank in share.receivers:
                        found = _resolve(mine[share.stored], framings[share.stored], loader, planner)
                        if found is not None:
                            resolved[share.stored] = found
            except Exception as error:  # held for the exchange, as above
                failure = error
        got = exchange(
            batch,
            keep.kept,
            failure,
            group,
            regions={share.stored: _regions(framings[share.stored], share.size) for share in batch},
            into={index: found.pieces for index, found in resolved.items() if found.pieces is not None},
        )
        try:
            for share in batch:
                if share.stored in resolved:
                    resolved[share.stored].hand_over(loader, planner, got.get(share.stored))
                else:
                    data = keep.kept.get(share.stored)
                    if data is None:
                        data = got.get(share.stored)
                    if data is None:
                        continue  # neither read nor received here: another rank's
                    for item in mine[share.stored]:
                        deliver_item(item, data, planner, loader.chunk_of(item))
                if share.reader == rank:
                    sent += share.size * len(share.receivers)
                else:
                    received += share.size
        except Exception as error:  # held for the next exchange; after the last one, DCP gathers it
            failure = error
    if failure is not None:
        raise failure
    log.debug("rank %d: sent %d bytes to other ranks, received %d from them", rank, sent, received)
    return LoadCounts(
        objects=sum(part.objects for part in counts),
        requests=sum(part.requests for part in counts),
        size=sum(part.size for part in counts),
    )


def exchange(
    shares: Sequence[Share],
    read: Mapping[MetadataIndex, memoryview],
    failure: BaseException | None,
    group: dist.ProcessGroup | None = None,
    piece_size: int = PIECE_SIZE,
    regions: Mapping[MetadataIndex, Sequence[int] | None] | None = None,
    into: Mapping[MetadataIndex, Sequence[memoryview]] | None = None,
) -> dict[MetadataIndex, memoryview]:
    """Send the shared items this rank read to the ranks that need them; receive the ones it needs.

    Every rank of ``group`` calls this with the same ``shares``, after its
    reads: ``read`` holds the bytes of the shares it reads, checked and
    decoded (so an item stored through a stream transform may be longer than
    its ``size``), and ``failure`` is why it failed (``None``: it did not).
    The ranks first tell each other whether they failed, and the lengths
    that differ from ``size``, so that when one failed every rank raises
    instead of waiting for bytes that will not come. Items go in
    ``shares`` order, in pieces of at most ``piece_size`` bytes that never
    cross a boundary of the item's ``regions`` (the lengths it is cut into,
    the same on every rank; say framing, tensor bytes, framing); an item
    every rank of the group takes part in is broadcast, the others go point
    to point, all posted at once and awaited at the end. A share this rank
    receives goes into its ``into`` views (one per region: say a tensor's
    own memory) if given, else into a new buffer; returns those buffers.

    Raises:
        SharedReadError: another rank failed; names the rank and why (a rank that
            failed raises its own error instead).
    """
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    why = None if failure is None else f"{type(failure).__name__}: {failure}"
    lengths = {share.stored: share.size for share in shares}
    decoded = {index: len(data) for index, data in read.items() if len(data) != lengths.get(index)}
    statuses: list[Any] = [None] * world_size
    dist.all_gather_object(statuses, (why, decoded), group=group)
    if failure is not None:
        raise failure
    for _, longer in statuses:
        lengths.update(longer)
    failed = [(other, why) for other, (why, _) in enumerate(statuses) if why is not None]
    if failed:
        other, why = failed[0]
        raise SharedReadError(
            f"rank {other} failed while loading items it reads for other ranks too, so this rank cannot "
            f"load them either: {why}. Fix what rank {other} reports, or load with "
            "S3StorageReader(share_reads=False) to have every rank read all it needs itself"
        )
    device = _wire_device(group)
    received: dict[MetadataIndex, memoryview] = {}
    # (work, wire, piece to fill from it); work is None only on a rank outside the group, which a sharer never is
    pending: list[tuple[dist.Work | None, torch.Tensor, torch.Tensor | None]] = []
    for share in shares:
        if share.reader != rank and rank not in share.receivers:
            continue
        everyone = len(share.receivers) + 1 == world_size
        length = lengths[share.stored]
        cuts = (regions or {}).get(share.stored) if length == share.size else None  # decoded: one region
        if share.reader == rank:
            views = _cut(read[share.stored], cuts)
        elif into is not None and share.stored in into:
            views = list(into[share.stored])
        else:
            buffer = memoryview(bytearray(length))
            received[share.stored] = buffer
            views = _cut(buffer, cuts)
        for view in views:
            for start in range(0, len(view), piece_size):
                piece = torch.frombuffer(view[start : start + piece_size], dtype=torch.uint8)
                wire = piece if device is None else piece.to(device)
                back = piece if device is not None and share.reader != rank else None
                source = _global(group, share.reader)
                if everyone:
                    dist.broadcast(wire, source, group)
                    if back is not None:
                        back.copy_(wire)
                elif share.reader == rank:
                    pending.extend((dist.isend(wire, _global(group, to), group), wire, None) for to in share.receivers)
                else:
                    pending.append((dist.irecv(wire, source, group), wire, back))
    for work, wire, back in pending:
        if work is not None:
            work.wait()
        if back is not None:
            back.copy_(wire)
    return received


def _regions(framing: Framing | None, size: int) -> list[int] | None:
    """The lengths a stored tensor's ``size`` bytes are cut into on the wire: framing, tensor bytes, framing."""
    if framing is None:
        return None
    return [len(framing.head), size - len(framing.head) - len(framing.tail), len(framing.tail)]


def _cut(data: memoryview, lengths: Sequence[int] | None) -> list[memoryview]:
    """``data`` as consecutive views of ``lengths`` (all of it as one, without them)."""
    if lengths is None:
        return [data]
    views, at = [], 0
    for length in lengths:
        views.append(data[at : at + length])
        at += length
    return views


@dataclasses.dataclass
class _Resolved:
    """A shared item this rank receives for its one destination tensor, resolved before the exchange.

    With ``framing`` (a whole tensor of the stored dtype and shape), the
    tensor's bytes go straight into ``target`` and the framing into two small
    buffers; without, the item arrives in a buffer and is copied.
    """

    item: ReadItem
    target: torch.Tensor
    framing: Framing | None
    head: memoryview = dataclasses.field(default_factory=lambda: memoryview(b""))
    tail: memoryview = dataclasses.field(default_factory=lambda: memoryview(b""))

    def __post_init__(self) -> None:
        if self.framing is not None:
            self.head = memoryview(bytearray(len(self.framing.head)))
            self.tail = memoryview(bytearray(len(self.framing.tail)))

    @property
    def pieces(self) -> list[memoryview] | None:
        """Where each region of the item goes, or ``None``: into a buffer."""
        if self.framing is None:
            return None
        return [self.head, destination_bytes(self.target), self.tail]

    def hand_over(self, loader: Loader, planner: LoadPlanner, data: memoryview | None) -> None:
        """Close the tensor's resolve/commit pair: at once if it came in place with the expected framing,
        else by parsing the whole item (``data``, or the three pieces) the ordinary way."""
        if self.framing is not None:
            if self.framing.matches(self.head, self.tail):
                planner.commit_tensor(self.item, self.target)
                return
            data = memoryview(bytes(self.head) + bytes(destination_bytes(self.target)) + bytes(self.tail))
        assert data is not None
        value = parse_item(self.item, data, loader.chunk_of(self.item), plain_data_only=False)
        hand_to_planner(self.item, value, planner, self.target)


def _resolve(items: list[ReadItem], framing: Framing | None, loader: Loader, planner: LoadPlanner) -> _Resolved | None:
    """For a shared item with stored ``framing`` (see :meth:`Loader.stored_framing`) that this rank receives
    for one whole tensor: its destination, and whether the bytes can go straight into it."""
    if framing is None or len(items) != 1 or items[0].type != LoadItemType.TENSOR:
        return None
    item = items[0]
    chunk = loader.chunk_of(item)
    if chunk is None or chunk[1] != tuple(item.lengths):
        return None
    target = planner.resolve_tensor(item).detach()
    return _Resolved(item, target, framing if framing_into(item, chunk, target) is not None else None)


class _Keep(LoadPlanner):
    """A planner for a reader's shared items: keeps each one's stored bytes (checked, decoded) to send."""

    def __init__(self) -> None:
        self.kept: dict[MetadataIndex, memoryview] = {}

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        self.kept[read_item.storage_index] = value.getbuffer()

    def set_up_planner(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def create_local_plan(self) -> LoadPlan:
        raise NotImplementedError

    def create_global_plan(self, global_plan: list[LoadPlan]) -> list[LoadPlan]:
        raise NotImplementedError

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:
        raise NotImplementedError

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        raise NotImplementedError("shared items are read whole as bytes, never into a tensor")

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        raise NotImplementedError("shared items are read whole as bytes, never into a tensor")


def _whole(index: MetadataIndex) -> ReadItem:
    """A read of one stored item's bytes, whole, whatever it holds."""
    nothing = torch.Size([0])
    return ReadItem(LoadItemType.BYTE_IO, index, nothing, index, nothing, nothing)


def _wire_device(group: dist.ProcessGroup | None) -> torch.device | None:
    """Where bytes must be to be sent: a GPU for NCCL (which moves device memory only), else ``None`` (host)."""
    if dist.get_backend(group) != dist.Backend.NCCL:
        return None
    return torch.device("cuda", torch.cuda.current_device())


def _global(group: dist.ProcessGroup | None, rank: int) -> int:
    """The global rank of ``group``'s ``rank`` (point-to-point calls take global ranks)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def _place(index: MetadataIndex, storage_data: Mapping[MetadataIndex, Any]) -> tuple[str, int]:
    info = storage_data[index]
    return info.relative_path, info.offset
