"""Per-item checksums: computed as bytes are written, checked when they are read.

Each item's digest (xxh3-64 of exactly the bytes its storage record points
at) rides on that record as one extra attribute. ``FileSystemReader``
unpickles the record as usual and never looks at it, so the checkpoint stays
in DCP's own format; s3dcp's reader checks it before using any item. For
an item stored through DCP stream transforms (e.g. ZStandard) those are the
transformed bytes, so damage is caught before a decoder sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import xxhash

from s3dcp import _crc32 as crc32
from s3dcp._crc32 import CrcWriter
from s3dcp._errors import ChecksumMismatchError

__all__ = ["ALGORITHM", "BinaryStream", "DigestingWriter", "digest", "set_checksum", "get_checksum", "verify"]

ALGORITHM = "xxh3_64"
_ATTRIBUTE = "s3dcp_checksum"


def digest(data: Any) -> str:
    """``"xxh3_64:<16 hex digits>"`` of a bytes-like object, or of a tuple of them end to end."""
    if isinstance(data, tuple):
        hasher = xxhash.xxh3_64()
        for piece in data:
            hasher.update(piece)
        return f"{ALGORITHM}:{hasher.hexdigest()}"
    return f"{ALGORITHM}:{xxhash.xxh3_64_hexdigest(data)}"


class BinaryStream(Protocol):
    """What a shard is written to: an upload, or a local file."""

    def write(self, data: Any, /) -> int: ...

    def tell(self) -> int: ...

    def flush(self) -> None: ...


class DigestingWriter:
    """Passes writes on to ``stream`` and digests them, one item at a time.

    ``begin()`` starts an item; ``end()`` returns the digest of every byte
    written since. Digesting as the bytes go by costs no second pass over
    the data and digests exactly what was sent. It is a
    :class:`~s3dcp._crc32.CrcWriter` whatever ``stream`` is: over one,
    the stream's copy pass computes the CRC-32 and feeds the digest too.
    """

    def __init__(self, stream: BinaryStream) -> None:
        self._stream = stream
        self._crc_stream = stream if isinstance(stream, CrcWriter) else None
        self._hasher = xxhash.xxh3_64()

    def begin(self) -> None:
        self._hasher.reset()

    def end(self) -> str:
        return f"{ALGORITHM}:{self._hasher.hexdigest()}"

    def write(self, data: Any) -> int:
        self._hasher.update(data)
        return int(self._stream.write(data))

    def write_with_crc(
        self, data: Any, /, *, also: Callable[[memoryview], Any] | None = None, unchanging: bool = False
    ) -> int:
        """Like ``write``, returning the CRC-32 of ``data`` (see ``ObjectUpload``).

        A stream that copies in pieces digests each piece right after copying it
        (and hands it to ``also``). ``unchanging`` is passed on: ``data`` keeps
        its bytes until the stream is committed.
        """
        update = self._hasher.update if also is None else _both(self._hasher.update, also)
        if self._crc_stream is not None:
            return int(self._crc_stream.write_with_crc(data, also=update, unchanging=unchanging))
        update(data)
        self._stream.write(data)
        return crc32.compute(data)

    def tell(self) -> int:
        return int(self._stream.tell())

    def flush(self) -> None:
        self._stream.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def _both(first: Callable[[memoryview], Any], second: Callable[[memoryview], Any]) -> Callable[[memoryview], None]:
    def both(piece: memoryview) -> None:
        first(piece)
        second(piece)

    return both


def set_checksum(storage_info: Any, value: str) -> None:
    """Record ``value`` on an item's storage record."""
    setattr(storage_info, _ATTRIBUTE, value)


def get_checksum(storage_info: Any) -> str | None:
    """The recorded checksum, or ``None`` (checkpoints written by other tools have none)."""
    value = getattr(storage_info, _ATTRIBUTE, None)
    return value if isinstance(value, str) else None


def verify(storage_info: Any, data: Any, *, bucket: str, key: str, item: str) -> None:
    """Raise :class:`ChecksumMismatchError` unless ``data`` has the recorded digest.

    ``data`` is the item's bytes, or a tuple of buffers holding them in order.

    Items with no recorded checksum pass: there is nothing to compare with.
    """
    expected = get_checksum(storage_info)
    if expected is None:
        return
    algorithm = expected.partition(":")[0]
    if algorithm != ALGORITHM:
        raise ChecksumMismatchError(
            f"s3://{bucket}/{key}: item {item!r} records a checksum of unknown kind "
            f"{algorithm!r}; load with verify=False to skip checking",
            bucket=bucket,
            key=key,
            item=item,
        )
    actual = digest(data)
    if actual != expected:
        start = storage_info.offset
        raise ChecksumMismatchError(
            f"s3://{bucket}/{key}: bytes {start}-{start + storage_info.length - 1} of item "
            f"{item!r} do not match the checksum recorded when it was saved ({expected}, "
            f"read {actual}). The object was changed or damaged after the save; restore it "
            "or load another checkpoint",
            bucket=bucket,
            key=key,
            item=item,
        )
