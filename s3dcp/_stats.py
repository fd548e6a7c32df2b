"""What each phase of a save or load did: bytes, time, throughput, for logs and for training code.

Every phase ends with one INFO line on the ``s3dcp`` logger, in
``key=value`` form so log tools can parse it, and the same numbers as a
:class:`PhaseStats` on the record (``record.s3dcp``), to the writer's or
reader's ``on_phase`` callback, and in its ``last_stats``. Nothing is
printed unless the application configures logging.

    save.write     each rank: its shard objects uploaded
    save.commit    the coordinator: .metadata stored (the checkpoint is complete)
    load.metadata  each rank: .metadata fetched and checked
    load.read      each rank: its items fetched, verified and delivered
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from s3dcp._format.layout import parse_step

__all__ = ["PhaseStats", "PhaseCallback", "report_phase"]

log = logging.getLogger("s3dcp")


@dataclass(frozen=True)
class PhaseStats:
    """One finished phase of a save or load on one rank."""

    phase: str  # save.write | save.commit | load.metadata | load.read
    rank: int | None
    checkpoint: str  # s3://bucket/prefix
    step: int | None  # from a step_N part of the path
    items: int
    objects: int
    requests: int
    bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


PhaseCallback = Callable[[PhaseStats], object]


def report_phase(
    phase: str,
    *,
    rank: int | None,
    checkpoint: str,
    items: int,
    objects: int,
    requests: int,
    size: int,
    seconds: float,
    callback: PhaseCallback | None,
) -> PhaseStats:
    """Log one phase and hand it to ``callback``; return it."""
    stats = PhaseStats(phase, rank, checkpoint, parse_step(checkpoint), items, objects, requests, size, seconds)
    log.info(
        "%s rank=%s checkpoint=%s step=%s items=%d objects=%d requests=%d bytes=%d seconds=%.3f mb_per_s=%.1f",
        phase,
        "-" if rank is None else rank,
        checkpoint,
        "-" if stats.step is None else stats.step,
        items,
        objects,
        requests,
        size,
        seconds,
        stats.mb_per_s,
        extra={"s3dcp": asdict(stats)},
    )
    if callback is not None:
        callback(stats)
    return stats
