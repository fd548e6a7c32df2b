"""Write a one-tensor ``torch.save`` archive straight from the tensor's memory.

``torch.save`` copies every byte of a tensor through its zip writer into
Python ``bytes`` objects, in many small writes, before s3dcp copies it again
into an upload part. For the tensors DCP writes (one dense CPU tensor per
archive) the archive is simple enough to emit directly: a handful of small
records, then the tensor's bytes as one buffer, with exactly the bytes
``torch.save`` would produce (same records, 64-byte alignment padding, data
descriptors, CRC-32s, zip64 end records and serialization id), so shard
objects stay identical to ``FileSystemWriter``'s files.

Everything but the tensor's bytes and three values computed from them
(their CRC-32, the serialization id and its CRC-32) depends only on the
dtype, shape and strides, so it is laid out once per such key and reused.
The layout is learnt from a template archive that ``torch.save`` itself
writes, and the writer checks itself against ``torch.save`` once per process
before it is used; if anything differs (another torch release, an unusual
tensor, a torch without the ``_rebuild_tensor_v2`` its archives name)
:func:`write_tensor` returns ``False`` and the caller uses ``torch.save``.
"""

from __future__ import annotations

import io
import logging
import pickle
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from s3dcp._format import crc32
from s3dcp._compat.torch import rebuild_tensor_v2
from s3dcp._format.archive import LEGACY_STORAGE_DTYPES

__all__ = ["Framing", "framing_for", "write_tensor"]

log = logging.getLogger("s3dcp")

_ALIGNMENT = 64
_SMALL = 64 * 1024  # tensors below this go to the stream in one write with their framing
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
    rebuild: Callable[..., Any]  # torch._utils._rebuild_tensor_v2, looked up once


def _hash_combine(seed: int, value: int) -> int:
    """``c10::hash_combine`` on 64-bit ``size_t``."""
    return (seed ^ ((value + 0x9E3779B9 + ((seed << 6) & _U64) + (seed >> 2)) & _U64)) & _U64


class _StorageStandIn:
    """Pickles as the storage reference ``torch.save`` writes for a tensor's data."""


class _TensorStandIn:
    """Pickles as the ``_rebuild_tensor_v2`` call ``torch.save`` writes for a dense tensor."""

    def __init__(self, rebuild: Callable[..., Any], size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.rebuild = rebuild
        self.size = size
        self.stride = stride

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            self.rebuild,
            (_StorageStandIn(), 0, self.size, self.stride, False, OrderedDict()),
        )


class _ArchivePickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, storage_id: tuple[Any, ...]) -> None:
        super().__init__(file, protocol=2)
        self._storage_id = storage_id

    def persistent_id(self, obj: Any) -> Any:
        return self._storage_id if isinstance(obj, _StorageStandIn) else None


def _data_pkl(tensor: torch.Tensor, rebuild: Callable[..., Any]) -> bytes:
    storage_type = getattr(torch, _LEGACY_STORAGE_NAMES[tensor.dtype])
    storage_id = ("storage", storage_type, "0", "cpu", tensor.numel())
    out = io.BytesIO()
    _ArchivePickler(out, storage_id).dump(_TensorStandIn(rebuild, tuple(tensor.size()), tuple(tensor.stride())))
    return out.getvalue()


_LEGACY_STORAGE_NAMES = {dtype: name for name, dtype in LEGACY_STORAGE_DTYPES.items()}


_ID_DIGITS = 40  # the serialization id: 20 digits of the torch release's hash, 20 of the archive's


@dataclass(frozen=True)
class Framing:
    """Every byte of a one-tensor archive but the tensor's, for one dtype, shape and strides.

    Only three things in an archive depend on the tensor's values: its
    bytes, their CRC-32 (in the data descriptor and the central directory)
    and the serialization id (a hash of every record's CRC-32) with its own
    CRC-32. Everything else is laid out once per (dtype, shape, strides) and
    reused, so a small tensor costs a few microseconds of Python, not a
    hundred.
    """

    head: bytes  # every record before the tensor's bytes, up to and including its local header
    tail: bytes  # everything after them, with the value-dependent fields zero
    data_crc_at: tuple[int, ...]  # offsets in ``tail`` of the data's CRC-32
    id_at: int  # offset in ``tail`` of the serialization id
    id_crc_at: tuple[int, ...]  # offsets in ``tail`` of the id's CRC-32
    hash_before: int  # ``c10::hash_combine`` of the CRC-32s of the records before the data
    crcs_after: tuple[int, ...]  # CRC-32s of the records between the data and the id

    def matches(self, head: Any, tail: Any) -> bool:
        """Whether ``head`` and ``tail`` are this framing, whatever the tensor's values.

        An archive that matches holds a plain tensor of this dtype and shape
        whose bytes are exactly the ones between them.
        """
        if bytes(head) != self.head or len(tail) != len(self.tail):
            return False
        masked = bytearray(tail)
        for at in (*self.data_crc_at, *self.id_crc_at):
            masked[at : at + 4] = bytes(4)
        masked[self.id_at : self.id_at + _ID_DIGITS] = bytes(_ID_DIGITS)
        return masked == self.tail

    def finish(self, data_crc: int, name_hash: str) -> bytearray:
        """``tail`` for a tensor whose bytes have CRC-32 ``data_crc``."""
        combined = _hash_combine(self.hash_before, data_crc)
        for crc in self.crcs_after:
            combined = _hash_combine(combined, crc)
        serialization_id = f"{name_hash}{combined:020d}".encode()
        id_crc = crc32.compute(serialization_id)
        tail = bytearray(self.tail)
        for at in self.data_crc_at:
            struct.pack_into("<I", tail, at, data_crc)
        tail[self.id_at : self.id_at + _ID_DIGITS] = serialization_id
        for at in self.id_crc_at:
            struct.pack_into("<I", tail, at, id_crc)
        return tail


def _lay_out(template: _Template, tensor: torch.Tensor) -> Framing | None:
    """Lay out the archive ``torch.save`` writes for ``tensor``, leaving its bytes out.

    Records follow torch's ``PyTorchStreamWriter``: a local header padded so
    the payload starts on a 64-byte boundary, the payload, a data descriptor;
    then the central directory and the zip64 end records. Offsets count the
    tensor's bytes although they are not here.
    """
    nbytes = tensor.nbytes
    out = bytearray()
    data_at: int | None = None
    id_at = 0
    crc_at: dict[str, list[int]] = {_STORAGE_RECORD: [], _ID_RECORD: []}
    central: list[tuple[str, bytes]] = []
    hash_before, crcs_after = 0, []

    def cursor() -> int:
        return len(out) + (nbytes if data_at is not None else 0)

    for name, constant in template.records:
        full_name = f"{template.prefix}/{name}".encode()
        payload = _data_pkl(tensor, template.rebuild) if name == _PICKLE_RECORD else constant
        if name == _STORAGE_RECORD:
            size, crc = nbytes, 0
        elif name == _ID_RECORD:
            size, crc = _ID_DIGITS, 0
        else:
            assert payload is not None
            size, crc = len(payload), crc32.compute(payload)
            if data_at is None:
                hash_before = _hash_combine(hash_before, crc)
            else:
                crcs_after.append(crc)
        offset = cursor()
        padding = (-(offset + 30 + len(full_name) + 4)) % _ALIGNMENT
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 0, 0x0808, 0, 0, 0, 0, 0, 0, len(full_name), 4 + padding)
        out += full_name + b"FB" + struct.pack("<H", padding) + b"Z" * padding
        if name == _STORAGE_RECORD:
            data_at = len(out)
        elif name == _ID_RECORD:
            id_at = len(out)
            out += bytes(_ID_DIGITS)
        else:
            assert payload is not None
            out += payload
        if name in crc_at:
            crc_at[name].append(len(out) + 4)
        out += struct.pack("<4sIII", b"PK\x07\x08", crc, size, size)
        entry = struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02", 0, 0, 0x0808, 0, 0, 0, crc, size, size, len(full_name), 0, 0, 0, 0, 0, offset,
        )
        central.append((name, entry + full_name))
    if data_at is None:
        return None
    directory_offset = cursor()
    for name, entry in central:
        if name in crc_at:
            crc_at[name].append(len(out) + 16)
        out += entry
    count, directory_size = len(central), cursor() - directory_offset
    zip64_end = cursor()
    out += struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 0x031E, 0x2D, 0, 0, count, count, directory_size, directory_offset
    )
    out += struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_end, 1)
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, directory_size, directory_offset, 0)
    if min(crc_at[_STORAGE_RECORD] + crc_at[_ID_RECORD] + [id_at]) < data_at:
        return None  # the id before the data: not a layout this writer knows
    return Framing(
        head=bytes(out[:data_at]),
        tail=bytes(out[data_at:]),
        data_crc_at=tuple(at - data_at for at in crc_at[_STORAGE_RECORD]),
        id_at=id_at - data_at,
        id_crc_at=tuple(at - data_at for at in crc_at[_ID_RECORD]),
        hash_before=hash_before,
        crcs_after=tuple(crcs_after),
    )


def _learn_template() -> _Template | None:
    """Read the record layout off a real ``torch.save`` archive.

    ``None`` if the layout is not one this writer knows, or if torch no
    longer has the function its archives name to rebuild a tensor.
    """
    import zipfile

    rebuild = rebuild_tensor_v2()
    if rebuild is None:
        return None

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
    return _Template(prefix, tuple(records), serialization_id[:20], rebuild)


def _framing(tensor: torch.Tensor, template: _Template) -> Framing | None:
    """The framing for ``tensor``'s dtype, shape and strides, laid out once and kept."""
    key = (tensor.dtype, tuple(tensor.size()), tuple(tensor.stride()))
    framing = _framings.get(key)
    if framing is None:
        framing = _lay_out(template, tensor)
        if framing is None:
            return None
        if len(_framings) >= _MAX_FRAMINGS:
            _framings.clear()  # a model has far fewer shapes; this only bounds a pathological run
        _framings[key] = framing
    return framing


def _write(stream: Any, tensor: torch.Tensor, framing: Framing, name_hash: str, unchanging: bool = False) -> None:
    array: Any = tensor.reshape(-1).view(torch.uint8).numpy()
    data = memoryview(array).cast("B")  # the tensor's own bytes, not a copy
    if data.nbytes < _SMALL:  # one write: fewer calls through the stream's layers
        crc = crc32.compute(data)
        stream.write(b"".join((framing.head, data, framing.finish(crc, name_hash))))
        return
    stream.write(framing.head)
    write_with_crc = getattr(stream, "write_with_crc", None)
    if write_with_crc is not None:  # the stream's copy pass computes the CRC-32 too
        crc = int(write_with_crc(data, unchanging=True) if unchanging else write_with_crc(data))
    else:
        crc = crc32.compute(data)
        stream.write(data)
    stream.write(framing.finish(crc, name_hash))


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

_MAX_FRAMINGS = 4096
_framings: dict[tuple[Any, ...], Framing] = {}  # dict reads and writes are atomic: no lock
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
                    log.debug("direct tensor archives disabled: torch.save writes a layout this writer does not know")
            except Exception as err:  # a torch we do not know: use torch.save
                log.debug("direct tensor archives disabled: %r", err)
        return _template


def _matches_torch_save(template: _Template) -> bool:
    generator = torch.Generator().manual_seed(0)
    samples = [
        torch.randn(7, 5, generator=generator),
        torch.randn(130, generator=generator).to(torch.bfloat16),
        torch.randint(0, 2, (9,), generator=generator).bool(),
        torch.randn(3, 10_000, generator=generator),  # above _SMALL: head, data, tail apart
    ]
    for sample in samples:
        ours, theirs = io.BytesIO(), io.BytesIO()
        framing = _lay_out(template, sample)
        if framing is None:
            return False
        _write(ours, sample, framing, template.name_hash)
        torch.save(sample, theirs)
        if ours.getvalue() != theirs.getvalue():
            return False
    return True


def framing_for(dtype: torch.dtype, size: tuple[int, ...]) -> Framing | None:
    """The framing ``write_tensor`` (and ``torch.save``) gives a contiguous tensor of this dtype and shape.

    ``None`` when such a tensor is not one ``write_tensor`` handles.
    """
    if dtype not in _SUPPORTED_DTYPES:
        return None
    strides, step = [], 1
    for dim in reversed(size):
        strides.append(step)
        step *= max(dim, 1)
    known = _framings.get((dtype, tuple(size), tuple(reversed(strides))))
    if known is not None:
        return known
    shape = torch.empty(size, dtype=dtype, device="meta")  # sizes and strides, no memory
    if shape.numel() == 0 or shape.nbytes >= _U32 - (1 << 20):
        return None
    template = _ready()
    if template is None:
        return None
    return _framing(shape, template)


def write_tensor(stream: Any, tensor: torch.Tensor, unchanging: bool = False) -> bool:
    """Write ``tensor`` to ``stream`` as ``torch.save`` would; ``False`` if not handled.

    On ``False`` nothing was written and the caller should use ``torch.save``.
    ``unchanging`` promises the tensor keeps its values until the stream is
    committed, so a stream may send its memory without copying it.
    """
    if not _supported(tensor):
        return False
    template = _ready()
    if template is None:
        return False
    framing = _framing(tensor, template)
    if framing is None:
        return False
    _write(stream, tensor, framing, template.name_hash, unchanging)
    return True
