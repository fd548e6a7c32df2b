"""Large tensor items read straight into the tensors they load into.

An item normally arrives in a download buffer, its archive is parsed, and
the tensor is copied into its destination: for a 256 MiB tensor that is a
256 MiB buffer (fresh pages, zeroed by the kernel) and a 256 MiB copy. When
the destination is a whole, contiguous CPU tensor of the stored dtype and
shape, the archive around the tensor's bytes has a known layout (the one
:mod:`s3dcp._format.framing` lays out: what ``write_tensor`` and ``torch.save`` write), so the
GET can put the framing into two small buffers and the tensor's bytes
straight into the destination.

Nothing is taken on trust: the framing that arrived must be exactly the
expected one (so the bytes in between are the tensor's, in order), and the
item's digest is checked over all three pieces, before the tensor is
committed. An archive laid out any other way (another torch release, a
tensor ``torch.save`` wrote from a view) is fetched again the ordinary way,
which overwrites whatever the first read put into the destination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

from s3dcp._format.framing import Chunk, Framing, framing_for
from s3dcp._ranges import ByteRange

__all__ = [
    "InPlaceRead",
    "SpanLayout",
    "StoredChunks",
    "destination_bytes",
    "disjoint",
    "framing_into",
    "in_place_candidate",
    "plan_in_place",
]


class StoredChunks:
    """Dtype and shape of each stored tensor chunk, from a checkpoint's metadata."""

    def __init__(self, metadata: Metadata) -> None:
        self._chunks: dict[MetadataIndex, Chunk] = {}
        for fqn, entry in metadata.state_dict_metadata.items():
            if isinstance(entry, TensorStorageMetadata):
                for chunk in entry.chunks:
                    index = MetadataIndex(fqn, chunk.offsets)
                    self._chunks[index] = (entry.properties.dtype, tuple(chunk.sizes))

    def get(self, index: MetadataIndex) -> Chunk | None:
        return self._chunks.get(MetadataIndex(index.fqn, index.offset))


# Below this, a tensor is copied out of the download buffer: cheaper than a piece of its own.
IN_PLACE_MIN_BYTES = 64 * 1024


@dataclass(frozen=True)
class InPlaceRead:
    """One item to read into ``target``: ``framing.head``, the tensor's bytes, ``framing.tail``."""

    item: ReadItem
    target: torch.Tensor
    framing: Framing
    span: ByteRange  # the whole item in its object

    @property
    def data(self) -> ByteRange:
        """Where the tensor's bytes are in the object."""
        start = self.span.start + len(self.framing.head)
        return ByteRange(start, start + self.target.nbytes)


def in_place_candidate(span: ByteRange | None, chunk: Chunk) -> bool:
    """Whether a whole stored chunk, laid out in ``span``, could be read in place into a fitting destination.

    Asked before the planner is: only these items' destinations are resolved
    ahead of their GET; the others are resolved when their bytes are there.
    ``span`` is ``None`` for an item stored through stream transforms: its
    stored length says nothing of the archive inside, which is checked as
    it is decoded.
    """
    dtype, size = chunk
    framing = framing_for(dtype, size)
    nbytes = dtype.itemsize * math.prod(size)
    return (
        framing is not None
        and nbytes >= IN_PLACE_MIN_BYTES
        and (span is None or len(framing.head) + nbytes + len(framing.tail) == span.length)
    )


def framing_into(item: ReadItem, chunk: Chunk | None, target: torch.Tensor) -> Framing | None:
    """The framing around ``item``'s tensor bytes if they can go straight into ``target``, else ``None``."""
    if item.type != LoadItemType.TENSOR or chunk is None:
        return None
    dtype, size = chunk
    if any(item.storage_offsets) or tuple(item.lengths) != size:
        return None  # only part of the stored chunk is wanted
    if (
        target.device.type != "cpu"
        or target.dtype != dtype
        or tuple(target.size()) != size
        or not target.is_contiguous()
        or type(target) is not torch.Tensor
        or target.nbytes < IN_PLACE_MIN_BYTES
    ):
        return None
    return framing_for(dtype, size)


def plan_in_place(item: ReadItem, span: ByteRange, chunk: Chunk | None, target: torch.Tensor) -> InPlaceRead | None:
    """An in-place read of ``item`` into ``target``, or ``None`` if it must go the ordinary way."""
    framing = framing_into(item, chunk, target)
    if framing is None or len(framing.head) + target.nbytes + len(framing.tail) != span.length:
        return None
    return InPlaceRead(item, target, framing, span)


class SpanLayout:
    """Where each byte of one GET goes: in-place tensors' bytes to their destinations, the rest to one buffer.

    ``reads`` lie inside ``span``, in order, and no other item of the GET
    overlaps their tensor bytes. The buffer holds the other bytes end to
    end (``buffered`` of them).
    """

    def __init__(self, span: ByteRange, reads: list[InPlaceRead]) -> None:
        self.reads = reads
        self._gaps: list[tuple[int, int]] = []  # object ranges that go to the buffer
        at = span.start
        for read in reads:
            self._gaps.append((at, read.data.start))
            at = read.data.end
        self._gaps.append((at, span.end))
        self.buffered = sum(end - start for start, end in self._gaps)

    def targets(self, buffer: memoryview) -> list[memoryview]:
        """What ``read_range_into`` fills, in order."""
        pieces, at = [], 0
        for index, (start, end) in enumerate(self._gaps):
            pieces.append(buffer[at : at + end - start])
            at += end - start
            if index < len(self.reads):
                pieces.append(destination_bytes(self.reads[index].target))
        return pieces

    def view(self, buffer: memoryview, start: int, end: int) -> memoryview:
        """Object bytes ``[start, end)`` in the buffer; they must not cross an in-place tensor."""
        at = 0
        for gap_start, gap_end in self._gaps:
            if gap_start <= start and end <= gap_end:
                return buffer[at + start - gap_start : at + end - gap_start]
            at += gap_end - gap_start
        raise ValueError(f"bytes {start}-{end} are not in the buffer")


def disjoint(ranges: list[ByteRange]) -> bool:
    """Whether no two of ``ranges`` share a byte."""
    ordered = sorted(ranges)
    return all(a.end <= b.start for a, b in zip(ordered, ordered[1:]))


def destination_bytes(target: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, writable in place."""
    array: Any = target.reshape(-1).view(torch.uint8).numpy()
    return memoryview(array).cast("B")
