"""Write a one-tensor ``torch.save`` archive straight from the tensor's memory.

``torch.save`` copies every byte of a tensor through its zip writer into
Python ``bytes`` objects, in many small writes, before s3dcp copies it again
into an upload part. For the tensors DCP writes (one dense CPU tensor per
archive) the archive is simple enough to emit directly: a handful of small
records, then the tensor's bytes as one buffer, with exactly the bytes
``torch.save`` would produce (same records, 64-byte alignment padding, data
descriptors, CRC-32s, zip64 end records and serialization id), so shard
objects stay identical to ``FileSystemWriter``'s files.

The layout is learnt from a template archive that ``torch.save`` itself
writes, and the writer checks itself against ``torch.save`` once per process
before it is used; if anything differs (another torch release, an unusual
tensor) :func:`write_tensor` returns ``False`` and the caller uses
``torch.save``.
"""

from __future__ import annotations

import io
import logging
import pickle
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from . import crc32

__all__ = ["write_tensor"]

log = logging.getLogger("s3dcp")

_ALIGNMENT = 64
_SMALL = 64 * 1024  # records below this are joined with the headers around them
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_STORAGE_RECORD = "data/0"
_PICKLE_RECORD = "data.pkl"
_ID_RECORD = ".data/serialization_id"


@dataclass(frozen=True)
class _Template:
    """What every one-tensor archive of this torch release has in common."""

    prefix: str  # "archive"
    records: tuple[tuple[str, bytes | None], ...]  # (name, constant payload or None if per-tensor)
    name_hash: str  # the first 20 digits of the serialization id


def _hash_combine(seed: int, value: int) -> int:
    """``c10::hash_combine`` on 64-bit ``size_t``."""
    return (seed ^ ((value + 0x9E3779B9 + ((seed << 6) & _U64) + (seed >> 2)) & _U64)) & _U64


class _StorageStandIn:
    """Pickles as the storage reference ``torch.save`` writes for a tensor's data."""


class _TensorStandIn:
    """Pickles as the ``_rebuild_tensor_v2`` call ``torch.save`` writes for a dense tensor."""

    def __init__(self, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.size = size
        self.stride = stride

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            torch._utils._rebuild_tensor_v2,
            (_StorageStandIn(), 0, self.size, self.stride, False, OrderedDict()),
        )


class _ArchivePickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, storage_id: tuple[Any, ...]) -> None:
        super().__init__(file, protocol=2)
        self._storage_id = storage_id

    def persistent_id(self, obj: Any) -> Any:
        return self._storage_id if isinstance(obj, _StorageStandIn) else None


def _data_pkl(tensor: torch.Tensor) -> bytes:
    storage_type = getattr(torch, _legacy_storage_name(tensor.dtype))
    storage_id = ("storage", storage_type, "0", "cpu", tensor.numel())
    out = io.BytesIO()
    _ArchivePickler(out, storage_id).dump(_TensorStandIn(tuple(tensor.size()), tuple(tensor.stride())))
    return out.getvalue()


def _legacy_storage_name(dtype: torch.dtype) -> str:
    return torch.storage._dtype_to_storage_type_map()[dtype]  # type: ignore[attr-defined,no-any-return]


class _ArchiveWriter:
    """Emits zip records the way torch's ``PyTorchStreamWriter`` lays them out."""

    def __init__(self, stream: Any, prefix: str) -> None:
        self._stream = stream
        self._prefix = prefix
        self._cursor = 0
        self._central: list[bytes] = []
        self._pending: list[bytes] = []  # small pieces, written together: fewer write calls

    def _put(self, data: bytes) -> None:
        self._pending.append(data)
        self._cursor += len(data)

    def _flush(self) -> None:
        if self._pending:
            self._stream.write(b"".join(self._pending))
            self._pending.clear()

    def _put_with_crc(self, data: Any) -> int:
        """Write ``data`` and return its CRC-32, from the stream's own copy pass if it offers one."""
        if memoryview(data).nbytes < _SMALL:
            crc = crc32.compute(data)
            self._put(bytes(data))
            return crc
        self._flush()
        write_with_crc = getattr(self._stream, "write_with_crc", None)
        if write_with_crc is not None:
            crc = int(write_with_crc(data))
        else:
            crc = crc32.compute(data)
            self._stream.write(data)
        self._cursor += memoryview(data).nbytes
        return crc

    def record(self, name: str, payload: Any) -> int:
        """Write one stored record; return its CRC-32."""
        full_name = f"{self._prefix}/{name}".encode()
        size = memoryview(payload).nbytes
        offset = self._cursor
        start = offset + 30 + len(full_name) + 4
        padding = (-start) % _ALIGNMENT
        extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
        self._put(
            struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 0, 0x0808, 0, 0, 0, 0, 0, 0, len(full_name), len(extra))
            + full_name
            + extra
        )
        crc = self._put_with_crc(payload) if size else 0
        self._put(struct.pack("<4sIII", b"PK\x07\x08", crc, size, size))
        self._central.append(
            struct.pack(
                "<4sHHHHHHIIIHHHHHII",
                b"PK\x01\x02", 0, 0, 0x0808, 0, 0, 0, crc, size, size, len(full_name), 0, 0, 0, 0, 0, offset,
            )
            + full_name
        )
        return crc

    def finish(self) -> None:
        directory_offset = self._cursor
        directory = b"".join(self._central)
        self._put(directory)
        count = len(self._central)
        zip64_end = self._cursor
        self._put(
            struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 0x031E, 0x2D, 0, 0, count, count, len(directory), directory_offset)
            + struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_end, 1)
            + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(directory), directory_offset, 0)
        )
        self._flush()


def _learn_template() -> _Template | None:
    """Read the record layout off a real ``torch.save`` archive."""
    import zipfile

    buffer = io.BytesIO()
    torch.save(torch.arange(3, dtype=torch.float32), buffer)
    archive = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    names = [info.filename for info in archive.infolist()]
    prefix = names[0].split("/", 1)[0]
    records: list[tuple[str, bytes | None]] = []
    for full_name in names:
        name = full_name[len(prefix) + 1 :]
        dynamic = name in (_PICKLE_RECORD, _STORAGE_RECORD, _ID_RECORD)
        records.append((name, None if dynamic else archive.read(full_name)))
    if [n for n, _ in records if n in (_PICKLE_RECORD, _STORAGE_RECORD, _ID_RECORD)] != [
        _PICKLE_RECORD,
        _STORAGE_RECORD,
        _ID_RECORD,
    ] or records[-1][0] != _ID_RECORD:
        return None
    serialization_id = archive.read(f"{prefix}/{_ID_RECORD}").decode()
    return _Template(prefix, tuple(records), serialization_id[:20])


def _write(stream: Any, tensor: torch.Tensor, template: _Template) -> None:
    array: Any = tensor.reshape(-1).view(torch.uint8).numpy()
    data = memoryview(array).cast("B")  # the tensor's own bytes, not a copy
    writer = _ArchiveWriter(stream, template.prefix)
    combined = 0
    for name, payload in template.records:
        if name == _ID_RECORD:
            serialization_id = f"{template.name_hash}{combined:020d}".encode()
            writer.record(name, serialization_id)
            continue
        if name == _PICKLE_RECORD:
            payload = _data_pkl(tensor)
        elif name == _STORAGE_RECORD:
            crc = writer.record(name, data)
            combined = _hash_combine(combined, crc)
            continue
        assert payload is not None
        combined = _hash_combine(combined, writer.record(name, payload))
    writer.finish()


def _supported(tensor: torch.Tensor) -> bool:
    return (
        type(tensor) is torch.Tensor
        and tensor.device.type == "cpu"
        and tensor.layout == torch.strided
        and not tensor.requires_grad
        and tensor.numel() > 0
        and tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.nbytes
        and tensor.nbytes < _U32 - (1 << 20)  # no zip64 fields in local headers: leave those to torch
        and tensor.dtype in _SUPPORTED_DTYPES
    )


_SUPPORTED_DTYPES = frozenset(
    {
        torch.float64, torch.float32, torch.float16, torch.bfloat16,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
        torch.complex64, torch.complex128,
    }
)

_state_lock = threading.Lock()
_template: _Template | None = None
_checked = False


def _ready() -> _Template | None:
    """The template, once the writer has matched ``torch.save`` byte for byte."""
    global _template, _checked
    with _state_lock:
        if not _checked:
            _checked = True
            try:
                template = _learn_template()
                if template is not None and _matches_torch_save(template):
                    _template = template
                else:
                    log.debug("direct tensor archives disabled: layout differs from torch.save")
            except Exception as err:  # a torch we do not know: use torch.save
                log.debug("direct tensor archives disabled: %r", err)
        return _template


def _matches_torch_save(template: _Template) -> bool:
    generator = torch.Generator().manual_seed(0)
    samples = [
        torch.randn(7, 5, generator=generator),
        torch.randn(130, generator=generator).to(torch.bfloat16),
        torch.randint(0, 2, (9,), generator=generator).bool(),
    ]
    for sample in samples:
        ours, theirs = io.BytesIO(), io.BytesIO()
        _write(ours, sample, template)
        torch.save(sample, theirs)
        if ours.getvalue() != theirs.getvalue():
            return False
    return True


def write_tensor(stream: Any, tensor: torch.Tensor) -> bool:
    """Write ``tensor`` to ``stream`` as ``torch.save`` would; ``False`` if not handled.

    On ``False`` nothing was written and the caller should use ``torch.save``.
    """
    if not _supported(tensor):
        return False
    template = _ready()
    if template is None:
        return False
    _write(stream, tensor, template)
    return True
