"""Large tensor items read straight into the tensors they load into.

An item normally arrives in a download buffer, its archive is parsed, and
the tensor is copied into its destination: for a 256 MiB tensor that is a
256 MiB buffer (fresh pages, zeroed by the kernel) and a 256 MiB copy. When
the destination is a whole, contiguous CPU tensor of the stored dtype and
shape, the archive around the tensor's bytes has a known layout (the one
:func:`~s3dcp.archive_writer.write_tensor` and ``torch.save`` write), so the
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

from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

from .archive_writer import Framing, framing_for
from .download import ByteRange

__all__ = ["InPlaceRead", "StoredChunks", "plan_in_place", "destination_bytes", "framed_tensor"]


class StoredChunks:
    """Dtype and shape of each stored tensor chunk, from a checkpoint's metadata."""

    def __init__(self, metadata: Metadata) -> None:
        self._chunks: dict[MetadataIndex, tuple[torch.dtype, tuple[int, ...]]] = {}
        for fqn, entry in metadata.state_dict_metadata.items():
            if isinstance(entry, TensorStorageMetadata):
                for chunk in entry.chunks:
                    index = MetadataIndex(fqn, chunk.offsets)
                    self._chunks[index] = (entry.properties.dtype, tuple(chunk.sizes))

    def get(self, index: MetadataIndex) -> tuple[torch.dtype, tuple[int, ...]] | None:
        return self._chunks.get(MetadataIndex(index.fqn, index.offset))


@dataclass(frozen=True)
class InPlaceRead:
    """One item to read into ``target``: ``framing.head``, the tensor's bytes, ``framing.tail``."""

    item: ReadItem
    target: torch.Tensor
    framing: Framing
    span: ByteRange


def plan_in_place(
    item: ReadItem, span: ByteRange, chunk: tuple[torch.dtype, tuple[int, ...]] | None, target: torch.Tensor
) -> InPlaceRead | None:
    """An in-place read of ``item`` into ``target``, or ``None`` if it must go the ordinary way."""
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
    ):
        return None
    framing = framing_for(dtype, size)
    if framing is None or len(framing.head) + target.nbytes + len(framing.tail) != span.length:
        return None
    return InPlaceRead(item, target, framing, span)


def destination_bytes(target: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, writable in place."""
    array: Any = target.reshape(-1).view(torch.uint8).numpy()
    return memoryview(array).cast("B")


def framed_tensor(data: memoryview, chunk: tuple[torch.dtype, tuple[int, ...]] | None) -> torch.Tensor | None:
    """The tensor in an item's bytes, as a view, if they are framed as ``write_tensor`` frames that chunk.

    Comparing the framing with the expected bytes takes a few microseconds;
    parsing the zip directory takes tens, which adds up over thousands of
    small tensors. ``None``: parse it (the archive is laid out otherwise).
    """
    if chunk is None:
        return None
    dtype, size = chunk
    framing = framing_for(dtype, size)
    if framing is None:
        return None
    start = len(framing.head)
    end = data.nbytes - len(framing.tail)
    numel = 1
    for dim in size:
        numel *= dim
    if end - start != numel * dtype.itemsize:
        return None
    if not framing.matches(data[:start], data[end:]):
        return None
    return torch.frombuffer(data, dtype=dtype, count=numel, offset=start).view(size)
