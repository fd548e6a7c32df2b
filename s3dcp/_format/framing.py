"""The byte layout of a one-tensor ``torch.save`` archive: everything around the tensor's bytes.

DCP stores each tensor item as a ``torch.save`` zip archive. For one dense
tensor that archive is a handful of small records (``data.pkl``, the
``byteorder`` and version records), the storage record holding the tensor's
bytes, the serialization id, then the central directory and zip64 end
records, each record's payload starting on a 64-byte boundary. Only three
things in it depend on the tensor's values: its bytes, their CRC-32 and the
serialization id (with its own CRC-32). Everything else, a :class:`Framing`,
depends only on the dtype, shape and strides, so it is laid out once per such
key and shared by the three places that rely on it:

- :mod:`s3dcp._format.archive_writer` writes a framing around a tensor's own
  memory instead of calling ``torch.save``;
- :mod:`s3dcp._format.archive` views an item's tensor in place when its bytes
  are framed exactly as expected (no zip parsing);
- :mod:`s3dcp._format.in_place` reads a large tensor's bytes straight into its
  destination and the framing into two small buffers.

The layout is learnt from a template archive that ``torch.save`` itself
writes and checked against ``torch.save`` once per process before it is used;
if anything differs (another torch release, a torch without the
``_rebuild_tensor_v2`` its archives name) :func:`framing_for` and
:func:`framing_of` return ``None`` and every caller takes the ordinary path.
The zip record signatures and sizes below are also what
:mod:`s3dcp._format.archive` parses.
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
from typing import Any, TypeAlias

import torch

from s3dcp import _crc32 as crc32
from s3dcp._compat.torch import rebuild_tensor_v2
from s3dcp._config import MIB

__all__ = [
    "ALIGNMENT",
    "Chunk",
    "Framing",
    "LEGACY_STORAGE_DTYPES",
    "SUPPORTED_DTYPES",
    "framing_for",
    "framing_of",
]

log = logging.getLogger("s3dcp")

Chunk: TypeAlias = tuple[torch.dtype, tuple[int, ...]]
"""A stored tensor chunk's dtype and shape (from ``.metadata``): what a framing is laid out for."""

# -- zip records (APPNOTE.TXT), as torch's PyTorchStreamWriter writes them ------------------
LOCAL_HEADER = b"PK\x03\x04"
DATA_DESCRIPTOR = b"PK\x07\x08"
CENTRAL_HEADER = b"PK\x01\x02"
ZIP64_END = b"PK\x06\x06"
ZIP64_LOCATOR = b"PK\x06\x07"
END_OF_DIRECTORY = b"PK\x05\x06"
LOCAL_HEADER_SIZE = 30  # before the entry's name and extra field
CENTRAL_HEADER_SIZE = 46  # before the entry's name, extra field and comment
END_OF_DIRECTORY_SIZE = 22  # before the archive comment
ZIP64_LOCATOR_SIZE = 20
MAX_COMMENT = 0xFFFF  # so the end record is within this many bytes (and its own) of the end
U16 = 0xFFFF  # a 16-bit field that says "see the zip64 record"
U32 = 0xFFFFFFFF  # a 32-bit field that says "see the zip64 record"
_U64 = (1 << 64) - 1

ALIGNMENT = 64  # every record's payload starts on a multiple of this
MAX_DATA_BYTES = U32 - MIB  # larger tensors need zip64 fields in local headers: left to torch.save

# -- the records of a one-tensor archive, under its "archive/" prefix -------------------------
STORAGE_RECORD = "data/0"
PICKLE_RECORD = "data.pkl"
ID_RECORD = ".data/serialization_id"
ID_DIGITS = 40  # the serialization id: 20 digits of the torch release's hash, 20 of the archive's
_NAME_HASH_DIGITS = 20

LEGACY_STORAGE_DTYPES = {
    # the legacy storage classes a torch.save pickle names for each dtype; part of the format
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}
_LEGACY_STORAGE_NAMES = {dtype: name for name, dtype in LEGACY_STORAGE_DTYPES.items()}
SUPPORTED_DTYPES = frozenset(LEGACY_STORAGE_DTYPES.values())  # the dtypes a framing is laid out for


def _hash_combine(seed: int, value: int) -> int:
    """``c10::hash_combine`` on 64-bit ``size_t``."""
    return (seed ^ ((value + 0x9E3779B9 + ((seed << 6) & _U64) + (seed >> 2)) & _U64)) & _U64


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
    name_hash: str  # the first 20 digits of the serialization id, this torch release's

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
        masked[self.id_at : self.id_at + ID_DIGITS] = bytes(ID_DIGITS)
        return masked == self.tail

    def recorded_crc(self, tail: Any) -> int:
        """The CRC-32 of the tensor's bytes that a matching ``tail`` records."""
        at = self.data_crc_at[0]
        return int.from_bytes(tail[at : at + 4], "little")

    def finish(self, data_crc: int) -> bytearray:
        """``tail`` for a tensor whose bytes have CRC-32 ``data_crc``."""
        combined = _hash_combine(self.hash_before, data_crc)
        for crc in self.crcs_after:
            combined = _hash_combine(combined, crc)
        serialization_id = f"{self.name_hash}{combined:020d}".encode()
        id_crc = crc32.compute(serialization_id)
        tail = bytearray(self.tail)
        for at in self.data_crc_at:
            struct.pack_into("<I", tail, at, data_crc)
        tail[self.id_at : self.id_at + ID_DIGITS] = serialization_id
        for at in self.id_crc_at:
            struct.pack_into("<I", tail, at, id_crc)
        return tail


def framing_for(dtype: torch.dtype, size: tuple[int, ...]) -> Framing | None:
    """The framing ``write_tensor`` (and ``torch.save``) gives a contiguous tensor of this dtype and shape.

    ``None`` when such a tensor is not one ``write_tensor`` handles.
    """
    if dtype not in SUPPORTED_DTYPES:
        return None
    strides, step = [], 1
    for dim in reversed(size):
        strides.append(step)
        step *= max(dim, 1)
    known = _framings.get((dtype, tuple(size), tuple(reversed(strides))))
    if known is not None:
        return known
    return framing_of(torch.empty(size, dtype=dtype, device="meta"))  # sizes and strides, no memory


def framing_of(tensor: torch.Tensor) -> Framing | None:
    """The framing for ``tensor``'s dtype, shape and strides, laid out once and kept.

    ``None`` for an empty tensor, one too large for a plain local header, a
    dtype with no legacy storage class, or when this torch's archives are not
    laid out as this module knows. Whether the tensor's *memory* can be
    written as it stands is the writer's question, not this one.
    """
    if tensor.dtype not in SUPPORTED_DTYPES or tensor.numel() == 0 or tensor.nbytes >= MAX_DATA_BYTES:
        return None
    key = (tensor.dtype, tuple(tensor.size()), tuple(tensor.stride()))
    framing = _framings.get(key)
    if framing is not None:
        return framing
    template = _ready()
    if template is None:
        return None
    framing = _lay_out(template, tensor)
    if framing is None:
        return None
    if len(_framings) >= _MAX_FRAMINGS:
        _framings.clear()  # a model has far fewer shapes; this only bounds a pathological run
    _framings[key] = framing
    return framing


# -- learning the layout from torch.save ---------------------------------------------------


@dataclass(frozen=True)
class _Template:
    """What every one-tensor archive of this torch release has in common."""

    prefix: str  # "archive"
    records: tuple[tuple[str, bytes | None], ...]  # (name, constant payload or None if per-tensor)
    name_hash: str  # the first 20 digits of the serialization id
    rebuild: Callable[..., Any]  # torch._utils._rebuild_tensor_v2, looked up once


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
    crc_at: dict[str, list[int]] = {STORAGE_RECORD: [], ID_RECORD: []}
    central: list[tuple[str, bytes]] = []
    hash_before, crcs_after = 0, []

    def cursor() -> int:
        return len(out) + (nbytes if data_at is not None else 0)

    for name, constant in template.records:
        full_name = f"{template.prefix}/{name}".encode()
        payload = _data_pkl(tensor, template.rebuild) if name == PICKLE_RECORD else constant
        if name == STORAGE_RECORD:
            size, crc = nbytes, 0
        elif name == ID_RECORD:
            size, crc = ID_DIGITS, 0
        else:
            assert payload is not None
            size, crc = len(payload), crc32.compute(payload)
            if data_at is None:
                hash_before = _hash_combine(hash_before, crc)
            else:
                crcs_after.append(crc)
        offset = cursor()
        padding = (-(offset + LOCAL_HEADER_SIZE + len(full_name) + 4)) % ALIGNMENT
        out += struct.pack("<4sHHHHHIIIHH", LOCAL_HEADER, 0, 0x0808, 0, 0, 0, 0, 0, 0, len(full_name), 4 + padding)
        out += full_name + b"FB" + struct.pack("<H", padding) + b"Z" * padding
        if name == STORAGE_RECORD:
            data_at = len(out)
        elif name == ID_RECORD:
            id_at = len(out)
            out += bytes(ID_DIGITS)
        else:
            assert payload is not None
            out += payload
        if name in crc_at:
            crc_at[name].append(len(out) + 4)
        out += struct.pack("<4sIII", DATA_DESCRIPTOR, crc, size, size)
        entry = struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            CENTRAL_HEADER,
            0,
            0,
            0x0808,
            0,
            0,
            0,
            crc,
            size,
            size,
            len(full_name),
            0,
            0,
            0,
            0,
            0,
            offset,
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
        "<4sQHHIIQQQQ", ZIP64_END, 44, 0x031E, 0x2D, 0, 0, count, count, directory_size, directory_offset
    )
    out += struct.pack("<4sIQI", ZIP64_LOCATOR, 0, zip64_end, 1)
    out += struct.pack("<4sHHHHIIH", END_OF_DIRECTORY, 0, 0, count, count, directory_size, directory_offset, 0)
    if min(crc_at[STORAGE_RECORD] + crc_at[ID_RECORD] + [id_at]) < data_at:
        return None  # the id before the data: not a layout this module knows
    return Framing(
        head=bytes(out[:data_at]),
        tail=bytes(out[data_at:]),
        data_crc_at=tuple(at - data_at for at in crc_at[STORAGE_RECORD]),
        id_at=id_at - data_at,
        id_crc_at=tuple(at - data_at for at in crc_at[ID_RECORD]),
        hash_before=hash_before,
        crcs_after=tuple(crcs_after),
        name_hash=template.name_hash,
    )


def _learn_template() -> _Template | None:
    """Read the record layout off a real ``torch.save`` archive.

    ``None`` if the layout is not one this module knows, or if torch no
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
        dynamic = name in (PICKLE_RECORD, STORAGE_RECORD, ID_RECORD)
        records.append((name, None if dynamic else archive.read(full_name)))
    if [n for n, _ in records if n in (PICKLE_RECORD, STORAGE_RECORD, ID_RECORD)] != [
        PICKLE_RECORD,
        STORAGE_RECORD,
        ID_RECORD,
    ] or records[-1][0] != ID_RECORD:
        return None
    serialization_id = archive.read(f"{prefix}/{ID_RECORD}").decode()
    return _Template(prefix, tuple(records), serialization_id[:_NAME_HASH_DIGITS], rebuild)


_MAX_FRAMINGS = 4096
_framings: dict[tuple[Any, ...], Framing] = {}  # dict reads and writes are atomic: no lock
_state_lock = threading.Lock()
_template: _Template | None = None
_checked = False


def _ready() -> _Template | None:
    """The template, once its framings have matched ``torch.save`` byte for byte."""
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
    """Whether head, a tensor's bytes and the finished tail are exactly ``torch.save``'s archive."""
    generator = torch.Generator().manual_seed(0)
    samples = [
        torch.randn(7, 5, generator=generator),
        torch.randn(130, generator=generator).to(torch.bfloat16),
        torch.randint(0, 2, (9,), generator=generator).bool(),
        torch.randn(3, 10_000, generator=generator),  # large enough that the writer sends it apart
    ]
    for sample in samples:
        framing = _lay_out(template, sample)
        if framing is None:
            return False
        data = sample.reshape(-1).view(torch.uint8).numpy().tobytes()
        ours = b"".join((framing.head, data, framing.finish(crc32.compute(data))))
        theirs = io.BytesIO()
        torch.save(sample, theirs)
        if ours != theirs.getvalue():
            return False
    return True
