"""Byte ranges of one object, merging them into few requests and splitting one into several: pure arithmetic.

:func:`coalesce` merges the ranges a load needs into fewer GETs when the
gaps between them are small; the load engine plans with it and the in-place
reader lays tensors out on the spans it returns. :func:`split` cuts a span
too large for one GET into pieces fetched in parallel, each with the views
its bytes go to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ByteRange", "Fetch", "Piece", "coalesce", "split"]


@dataclass(frozen=True, order=True)
class ByteRange:
    """Bytes ``[start, end)`` of one object."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad byte range [{self.start}, {self.end})")

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Fetch:
    """One GET request covering ``span`` and serving the ranges in ``members``.

    ``members`` are indices into the list given to :func:`coalesce`.
    """

    span: ByteRange
    members: tuple[int, ...]


def coalesce(ranges: Sequence[ByteRange], max_gap: int, max_span: int) -> list[Fetch]:
    """Merge ranges of one object into as few fetches as is worth it.

    Two ranges share a fetch when the gap between them is at most
    ``max_gap`` bytes and the merged span stays within ``max_span`` bytes
    (a single range longer than ``max_span`` gets a fetch of its own).
    Empty ranges need no bytes and get no fetch.
    """
    if max_gap < 0 or max_span < 1:
        raise ValueError("max_gap must be >= 0 and max_span >= 1")
    order = sorted((r.start, r.end, i) for i, r in enumerate(ranges) if r.length > 0)
    fetches: list[Fetch] = []
    start = end = -1
    members: list[int] = []
    for r_start, r_end, index in order:
        if members and r_start - end <= max_gap and max(end, r_end) - start <= max_span:
            end = max(end, r_end)
            members.append(index)
            continue
        if members:
            fetches.append(Fetch(ByteRange(start, end), tuple(members)))
        start, end, members = r_start, r_end, [index]
    if members:
        fetches.append(Fetch(ByteRange(start, end), tuple(members)))
    return fetches


@dataclass(frozen=True)
class Piece:
    """Bytes ``span`` of a larger span, and the views they go to, end to end (their lengths add up to the span's)."""

    span: ByteRange
    into: list[memoryview]


def split(span: ByteRange, into: Sequence[memoryview], max_size: int) -> list[Piece]:
    """Cut ``span``, whose bytes go to the byte views ``into`` laid end to end, into consecutive pieces.

    As few pieces as keep each within ``max_size`` bytes, of nearly equal
    sizes (so they finish together when fetched in parallel); a span of at
    most ``max_size`` is one piece. A piece may cross the boundary between
    two views: it gets the slices of both that cover it. Empty views are
    dropped; an empty span has no pieces.
    """
    if max_size < 1:
        raise ValueError("max_size must be >= 1")
    views = [view for view in into if view.nbytes]
    if sum(view.nbytes for view in views) != span.length:
        raise ValueError("the views must hold exactly the span's bytes")
    count = -(-span.length // max_size)
    pieces: list[Piece] = []
    view, offset = 0, 0  # where the next piece's bytes begin: which view, and how far into it
    for index in range(count):
        start = span.start + span.length * index // count
        end = span.start + span.length * (index + 1) // count
        needed, covering = end - start, []
        while needed:
            taken = min(needed, views[view].nbytes - offset)
            covering.append(views[view][offset : offset + taken])
            needed -= taken
            offset += taken
            if offset == views[view].nbytes:
                view, offset = view + 1, 0
        pieces.append(Piece(ByteRange(start, end), covering))
    return pieces
