"""Which rank reads each stored item that several ranks need; the others receive it over the process group.

When a job resumes with replicas (DDP, HSDP replica groups), several ranks
load the same stored items. Rather than each asking S3 for the same bytes,
the coordinator, which sees every rank's load plan, gives each such item to
one of the ranks that need it, keeping the bytes each rank reads from S3
even; after the reads, that rank sends the item's stored bytes, checked, to
the others. The unit is a whole stored item: its digest covers all of it,
and every rank decodes its own part from the same bytes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadPlan

from s3dcp._errors import S3DCPError

__all__ = ["Share", "SharedReadError", "exchange", "plan_shares"]


class SharedReadError(S3DCPError):
    """A rank could not read the items it reads for other ranks, so none of them can load those items."""


class Share(NamedTuple):
    """One stored item several ranks need: who reads it from S3, and who receives it from that rank."""

    stored: MetadataIndex
    size: int
    reader: int
    receivers: tuple[int, ...]


def plan_shares(plans: Sequence[LoadPlan], storage_data: Mapping[MetadataIndex, Any]) -> list[Share]:
    """The stored items two or more of ``plans`` (one per rank, in rank order) read, each with its reader.

    Items go largest first to whichever rank that needs them has the fewest
    bytes to read from S3 so far, counting the items only it needs; ties go
    to the lower rank. The result is in a fixed order (object, then offset),
    the order in which ranks exchange the items, so every rank derives the
    same sequence from it.
    """
    needers: dict[MetadataIndex, set[int]] = defaultdict(set)
    for rank, plan in enumerate(plans):
        for item in plan.items:
            if item.storage_index not in storage_data:
                raise KeyError(f"rank {rank} reads {item.storage_index.fqn!r}, which the checkpoint does not record")
            needers[item.storage_index].add(rank)
    load = [0] * len(plans)  # bytes each rank reads from S3
    shared = []
    for index, ranks in needers.items():
        size = storage_data[index].length
        if len(ranks) == 1:
            load[next(iter(ranks))] += size
        else:
            shared.append((index, size, ranks))
    shares = []
    for index, size, ranks in sorted(shared, key=lambda entry: (-entry[1], _place(entry[0], storage_data))):
        reader = min(ranks, key=lambda rank: (load[rank], rank))
        load[reader] += size
        shares.append(Share(index, size, reader, tuple(sorted(ranks - {reader}))))
    return sorted(shares, key=lambda share: _place(share.stored, storage_data))


def _global(group: dist.ProcessGroup | None, rank: int) -> int:
    """The global rank of ``group``'s ``rank`` (point-to-point calls take global ranks)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def _place(index: MetadataIndex, storage_data: Mapping[MetadataIndex, Any]) -> tuple[str, int]:
    info = storage_data[index]
    return info.relative_path, info.offset


def exchange(
    shares: Sequence[Share],
    read: Mapping[MetadataIndex, memoryview],
    failure: str | None,
    group: dist.ProcessGroup | None = None,
    piece_size: int = 64 << 20,
) -> dict[MetadataIndex, bytearray]:
    """Send the shared items this rank read to the ranks that need them; receive the ones it needs.

    Every rank of ``group`` calls this with the same ``shares``, after its
    reads: ``read`` holds the stored bytes, checked, of the shares it reads,
    and ``failure`` says why its reads failed (``None``: they did not). The
    ranks first tell each other whether their reads failed, so that when one
    did every rank raises the same error instead of waiting for bytes that
    will not come. Items go in ``shares`` order, in pieces of at most
    ``piece_size`` bytes. Returns the bytes of each share this rank receives.

    Raises:
        SharedReadError: a rank could not read its shares; names the rank and why.
    """
    rank = dist.get_rank(group)
    failures: list[str | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(failures, failure, group=group)
    failed = [(other, why) for other, why in enumerate(failures) if why is not None]
    if failed:
        other, why = failed[0]
        raise SharedReadError(f"rank {other} could not read the items it reads for other ranks too: {why}")
    received: dict[MetadataIndex, bytearray] = {}
    for share in shares:
        if share.reader == rank:
            data = torch.frombuffer(read[share.stored], dtype=torch.uint8) if share.size else None
            for start in range(0, share.size, piece_size):
                assert data is not None
                piece = data[start : start + piece_size]
                sends = [dist.isend(piece, _global(group, to), group) for to in share.receivers]
                for send in sends:
                    if send is not None:  # None: this rank is not in the group, which a sharer always is
                        send.wait()
        elif rank in share.receivers:
            buffer = bytearray(share.size)
            if share.size:
                into = torch.frombuffer(buffer, dtype=torch.uint8)
                source = _global(group, share.reader)
                for start in range(0, share.size, piece_size):
                    dist.recv(into[start : start + piece_size], source, group)
            received[share.stored] = buffer
    return received
