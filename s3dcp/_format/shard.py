"""The shard-file format of DCP's FileSystemWriter: splitting items into files and writing them.

A shard file is the concatenation of its items: a ``BYTE_IO`` item as its
raw bytes, a tensor as one ``torch.save`` archive. Each item's offset and
length go into the metadata, so any item can be read alone with a ranged GET
(a tensor item is read back by :func:`s3dcp._format.archive.load_tensor`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import torch
from torch.distributed.checkpoint.planner import SavePlanner, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult

from s3dcp._compat.torch import StreamTransform, storage_info_class
from s3dcp._format.archive_writer import write_tensor
from s3dcp._format.integrity import BinaryStream, DigestingWriter, set_checksum

__all__ = ["item_nbytes", "split_items", "write_items"]


def item_nbytes(item: WriteItem) -> int:
    """Bytes of tensor data an item holds (0 for ``BYTE_IO`` items, size unknown)."""
    if item.tensor_data is None:
        return 0
    numel = 1
    for dim in item.tensor_data.size:
        numel *= dim
    dtype = item.tensor_data.properties.dtype
    return numel * torch.empty((), dtype=dtype).element_size()


def split_items(items: Sequence[WriteItem], bins: int) -> list[list[WriteItem]]:
    """Split items into ``bins`` files of similar size (largest first, greedy).

    Byte items are dealt round-robin and come first in each file. Always
    ``bins`` lists, empty ones included. Both as ``FileSystemWriter`` does
    it (an empty file for a rank or thread with nothing to store, byte items
    before tensors), so a shard holds the same bytes whichever writer saved it.
    """
    if bins < 1:
        raise ValueError(f"bins must be an int >= 1 (the writer's thread_count), got {bins!r}")
    byte_items = [wi for wi in items if wi.type == WriteItemType.BYTE_IO]
    if bins == 1:
        return [byte_items + [wi for wi in items if wi.type != WriteItemType.BYTE_IO]]
    buckets: list[list[WriteItem]] = [[] for _ in range(bins)]
    sizes = [0] * bins
    tensor_items = sorted((wi for wi in items if wi.type != WriteItemType.BYTE_IO), key=item_nbytes, reverse=True)
    for i, item in enumerate(byte_items):
        buckets[i % bins].append(item)
    for item in tensor_items:
        smallest = min(range(bins), key=sizes.__getitem__)
        buckets[smallest].append(item)
        sizes[smallest] += item_nbytes(item)
    return buckets


def _as_saveable(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor whose storage holds exactly its own bytes.

    ``torch.save`` writes a view's whole storage; cloning a view first
    keeps a slice of a big tensor from writing the big tensor.
    """
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.untyped_storage().nbytes() != tensor.nbytes:
        tensor = tensor.clone()
    return tensor


def _resolved(planner: SavePlanner, item: WriteItem) -> io.BytesIO | torch.Tensor:
    """The planner's data for ``item``, refused unless it is the kind the item says."""
    data = planner.resolve_data(item)
    wanted = io.BytesIO if item.type == WriteItemType.BYTE_IO else torch.Tensor
    if not isinstance(data, wanted):
        kind = "BYTE_IO" if wanted is io.BytesIO else "tensor"
        raise TypeError(f"{kind} item {item.index.fqn!r} resolved to {type(data).__name__}")
    return data


def write_items(
    stream: BinaryStream,
    items: Sequence[WriteItem],
    planner: SavePlanner,
    relative_path: str,
    *,
    extensions: Sequence[StreamTransform] = (),
) -> list[WriteResult]:
    """Serialize ``items`` one after another into ``stream``.

    Items are resolved one at a time (``resolve_data`` may allocate, e.g. a
    device-to-host copy), so at most one item's staging copy is alive. Each
    item's checksum is computed from the bytes as they go into the stream.
    With ``extensions`` (DCP stream transforms, e.g. ``ZStandard()``) each
    item goes through them as ``FileSystemWriter`` sends it, its storage
    record names them, and its checksum covers the transformed (stored) bytes.
    """
    results = []
    writer = DigestingWriter(stream)
    storage_info = storage_info_class()  # once per shard, not per item
    if extensions:
        for item in items:
            results.append(_write_transformed(writer, item, planner, relative_path, extensions, storage_info))
        return results
    for item in items:
        offset = writer.tell()
        writer.begin()
        data = _resolved(planner, item)
        if isinstance(data, io.BytesIO):
            writer.write(data.getbuffer())
        else:
            tensor = _as_saveable(data)
            # the caller's own CPU memory (no copy made here) is left as it is until the
            # stream is committed, so whole parts may be sent from it; a copy made here
            # is not: it should be freed as soon as it is serialized
            unchanging = data.device.type == "cpu" and (
                tensor.untyped_storage().data_ptr() == data.untyped_storage().data_ptr()
            )
            if not write_tensor(writer, tensor, unchanging=unchanging):
                torch.save(tensor, writer)  # type: ignore[arg-type]
        length = writer.tell() - offset
        info = storage_info(relative_path, offset, length)
        set_checksum(info, writer.end())
        results.append(WriteResult(index=item.index, size_in_bytes=length, storage_data=info))
    return results


class _ItemEnd:
    """The bottom of one item's transform chain: passes writes on, ignores ``flush`` and ``close``.

    Extensions close (and may flush) the stream under them when their item
    ends; the shard stream itself must stay open for the next item.
    """

    def __init__(self, stream: DigestingWriter) -> None:
        self._stream = stream

    def write(self, data: Any) -> int:
        return self._stream.write(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def _write_transformed(
    writer: DigestingWriter,
    item: WriteItem,
    planner: SavePlanner,
    relative_path: str,
    extensions: Sequence[StreamTransform],
    storage_info: type[Any],
) -> WriteResult:
    """Write one item through ``extensions`` (the first is applied last, as ``FileSystemWriter`` does)."""
    offset = writer.tell()
    writer.begin()
    chain: Any = _ItemEnd(writer)
    for extension in extensions:
        chain = extension.transform_to(chain)
    data = _resolved(planner, item)
    if isinstance(data, io.BytesIO):
        chain.write(data.getbuffer())
    else:
        torch.save(_as_saveable(data), chain)
    chain.close()
    length = writer.tell() - offset
    descriptors = [extension.get_descriptor() for extension in reversed(extensions)]
    info = storage_info(relative_path, offset, length, transform_descriptors=descriptors)
    set_checksum(info, writer.end())
    return WriteResult(index=item.index, size_in_bytes=length, storage_data=info)
