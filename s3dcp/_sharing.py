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

from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadPlan

__all__ = ["Share", "plan_shares"]


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


def _place(index: MetadataIndex, storage_data: Mapping[MetadataIndex, Any]) -> tuple[str, int]:
    info = storage_data[index]
    return info.relative_path, info.offset
