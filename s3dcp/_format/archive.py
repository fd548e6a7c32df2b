"""Read a tensor item's bytes (one ``torch.save`` archive) back as a tensor.

:func:`load_tensor` is the one place that picks how, cheapest first:

1. :func:`framed_tensor`: the bytes are framed exactly as
   :mod:`s3dcp._format.framing` lays out the stored chunk (what
   ``write_tensor`` and ``torch.save`` write for a contiguous tensor), so the
   tensor is a view on the bytes between head and tail; comparing takes a
   few microseconds.
2. :func:`tensor_view`: any other plain one-tensor archive; its zip
   directory is parsed (tens of microseconds) and the tensor is again a view
   on the storage record, never a copy.
3. ``torch.load(weights_only=True)``: anything else (which can describe
   tensors and plain values only, never run code).

A view on the fetched bytes means a load copies each byte once: from the
download buffer into the destination tensor. The pickle inside the archive
is read by a tiny unpickler that knows only ``_rebuild_tensor_v2``,
``OrderedDict`` and the legacy storage classes, and builds nothing but a
description; nothing from the archive is executed.
"""

from __future__ import annotations

import functools
import io
import math
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, Any, cast

import torch

from s3dcp._compat.torch import REBUILD_TENSOR_V2
from s3dcp._format.framing import (
    CENTRAL_HEADER,
    CENTRAL_HEADER_SIZE,
    END_OF_DIRECTORY,
    END_OF_DIRECTORY_SIZE,
    LEGACY_STORAGE_DTYPES,
    LOCAL_HEADER,
    LOCAL_HEADER_SIZE,
    MAX_COMMENT,
    U16,
    U32,
    ZIP64_END,
    ZIP64_LOCATOR,
    ZIP64_LOCATOR_SIZE,
    Chunk,
    framing_for,
)
from s3dcp._format.plain_data import MemoryReader

__all__ = ["framed_tensor", "load_tensor", "tensor_view"]


class _Unsupported(Exception):
    """The archive is not the simple kind this reader handles."""


@dataclass(frozen=True)
class _Entry:
    data_offset: int
    size: int


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class _TensorSpec:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def load_tensor(data: memoryview, chunk: Chunk | None = None) -> torch.Tensor:
    """The tensor in one tensor item's bytes: a view on ``data`` whenever it can be.

    ``chunk``: the dtype and shape ``.metadata`` records for the item, if
    known; with it, bytes framed as expected skip parsing altogether.
    """
    view = framed_tensor(data, chunk)
    if view is None:
        view = tensor_view(data)
    if view is not None:
        return view
    tensor = torch.load(cast(IO[bytes], MemoryReader(data)), map_location="cpu", weights_only=True)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a tensor, found {type(tensor).__name__}")
    return tensor


def framed_tensor(data: memoryview, chunk: Chunk | None) -> torch.Tensor | None:
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
    numel = math.prod(size)
    if end - start != numel * dtype.itemsize:
        return None
    if not framing.matches(data[:start], data[end:]):
        return None
    return torch.frombuffer(data, dtype=dtype, count=numel, offset=start).view(size)


def tensor_view(buffer: memoryview) -> torch.Tensor | None:
    """The tensor stored in ``buffer`` (one ``torch.save`` archive), sharing its memory.

    Returns ``None`` when the archive is not a plain single-tensor archive
    (:func:`load_tensor` then uses ``torch.load``).
    """
    try:
        entries = _read_directory(buffer)
        prefix = _archive_prefix(entries)
        byteorder = entries.get(f"{prefix}/byteorder")
        if byteorder is not None and bytes(_payload(buffer, byteorder)) != b"little":
            raise _Unsupported("big-endian archive")
        spec = _read_spec(bytes(_payload(buffer, entries[f"{prefix}/data.pkl"])))
        record = entries.get(f"{prefix}/data/{spec.storage.key}")
        itemsize = torch.empty((), dtype=spec.storage.dtype).element_size()
        if record is None or record.size != spec.storage.numel * itemsize:
            raise _Unsupported("storage record missing or of the wrong size")
        _check_bounds(spec)
        if spec.storage.numel == 0:
            return torch.empty(spec.size, dtype=spec.storage.dtype)
        storage = torch.frombuffer(
            buffer, dtype=spec.storage.dtype, count=spec.storage.numel, offset=record.data_offset
        )
        return storage.as_strided(spec.size, spec.stride, spec.offset)
    except (_Unsupported, KeyError, struct.error, pickle.UnpicklingError, ValueError, TypeError, EOFError):
        return None


def _payload(buffer: memoryview, entry: _Entry) -> memoryview:
    return buffer[entry.data_offset : entry.data_offset + entry.size]


def _archive_prefix(entries: dict[str, _Entry]) -> str:
    for name in entries:
        if name.endswith("/data.pkl") and name.count("/") == 1:
            return name[: -len("/data.pkl")]
    raise _Unsupported("no data.pkl")


def _read_directory(buffer: memoryview) -> dict[str, _Entry]:
    """Name -> location of each stored (uncompressed) entry of a zip archive."""
    tail_start = max(0, len(buffer) - (MAX_COMMENT + 1) - END_OF_DIRECTORY_SIZE)
    tail = bytes(buffer[tail_start:])
    at = tail.rfind(END_OF_DIRECTORY)
    if at < 0:
        raise _Unsupported("no end of central directory")
    eocd = tail_start + at
    count, dir_size, dir_offset = struct.unpack_from("<HII", buffer, eocd + 10)
    if count == U16 or dir_offset == U32 or dir_size == U32:
        locator = eocd - ZIP64_LOCATOR_SIZE
        if bytes(buffer[locator : locator + 4]) != ZIP64_LOCATOR:
            raise _Unsupported("zip64 locator missing")
        (zip64_eocd,) = struct.unpack_from("<Q", buffer, locator + 8)
        if bytes(buffer[zip64_eocd : zip64_eocd + 4]) != ZIP64_END:
            raise _Unsupported("zip64 end record missing")
        count, dir_size, dir_offset = struct.unpack_from("<QQQ", buffer, zip64_eocd + 32)
    entries: dict[str, _Entry] = {}
    position = dir_offset
    for _ in range(count):
        if bytes(buffer[position : position + 4]) != CENTRAL_HEADER:
            raise _Unsupported("bad central directory entry")
        (method,) = struct.unpack_from("<H", buffer, position + 10)
        compressed, uncompressed, name_len, extra_len, comment_len = struct.unpack_from("<IIHHH", buffer, position + 20)
        (local_offset,) = struct.unpack_from("<I", buffer, position + 42)
        name_at = position + CENTRAL_HEADER_SIZE
        name = bytes(buffer[name_at : name_at + name_len]).decode("utf-8")
        extra = bytes(buffer[name_at + name_len : name_at + name_len + extra_len])
        uncompressed, compressed, local_offset = _apply_zip64(extra, uncompressed, compressed, local_offset)
        if method != 0 or compressed != uncompressed:
            raise _Unsupported("compressed entry")
        entries[name] = _Entry(_local_data_offset(buffer, local_offset), uncompressed)
        position += CENTRAL_HEADER_SIZE + name_len + extra_len + comment_len
    return entries


def _apply_zip64(extra: bytes, uncompressed: int, compressed: int, offset: int) -> tuple[int, int, int]:
    position = 0
    while position + 4 <= len(extra):
        header_id, size = struct.unpack_from("<HH", extra, position)
        if header_id == 0x0001:
            values = list(struct.unpack_from(f"<{size // 8}Q", extra, position + 4))
            if uncompressed == U32:
                uncompressed = values.pop(0)
            if compressed == U32:
                compressed = values.pop(0)
            if offset == U32:
                offset = values.pop(0)
        position += 4 + size
    return uncompressed, compressed, offset


def _local_data_offset(buffer: memoryview, local_offset: int) -> int:
    if bytes(buffer[local_offset : local_offset + 4]) != LOCAL_HEADER:
        raise _Unsupported("bad local header")
    name_len, extra_len = struct.unpack_from("<HH", buffer, local_offset + 26)
    return int(local_offset + LOCAL_HEADER_SIZE + name_len + extra_len)


def _rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, *rest: Any
) -> _TensorSpec:
    if not isinstance(storage, _StorageRef) or hooks:
        raise _Unsupported("unexpected tensor arguments")
    return _TensorSpec(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _SpecUnpickler(pickle.Unpickler):
    """Knows just enough to describe one dense tensor; refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == REBUILD_TENSOR_V2:
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in LEGACY_STORAGE_DTYPES:
            return LEGACY_STORAGE_DTYPES[name]
        raise _Unsupported(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Unsupported("unexpected persistent id")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str) or not isinstance(numel, int):
            raise _Unsupported("unexpected storage description")
        return _StorageRef(key, dtype, numel)


@functools.lru_cache(maxsize=1024)
def _read_spec(data: bytes) -> _TensorSpec:
    """The tensor ``data.pkl`` describes; cached, since checkpoints repeat a few shapes many times."""
    spec = _SpecUnpickler(io.BytesIO(data)).load()
    if not isinstance(spec, _TensorSpec):
        raise _Unsupported("archive does not hold exactly one tensor")
    return spec


def _check_bounds(spec: _TensorSpec) -> None:
    """Refuse a size/stride/offset that would reach outside the storage."""
    if len(spec.size) != len(spec.stride) or spec.offset < 0:
        raise _Unsupported("inconsistent shape")
    if any(s < 0 for s in spec.size) or any(st < 0 for st in spec.stride):
        raise _Unsupported("negative size or stride")
    if 0 in spec.size:
        return
    last = spec.offset + sum((s - 1) * st for s, st in zip(spec.size, spec.stride))
    if last >= spec.storage.numel:
        raise _Unsupported("view reaches outside its storage")
