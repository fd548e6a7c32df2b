"""DCP stream transforms (``transform_descriptors``): resolving and undoing them on load.

``FileSystemWriter(_extensions=[ZStandard()])`` passes each item's bytes
through its extensions and records their descriptors (e.g. ``"stream.zstd/1"``)
on the item's storage record. Such an item's stored range holds the
transformed bytes, so it is fetched whole, then decoded: a whole tensor
whose destination can take it is decoded straight into the destination
(its archive's framing checked on the way, as for in-place reads), anything
else into one buffer of its own. torch's extension registry maps
descriptors to extensions, as ``FileSystemReader`` does; a torch without
one can still load every item that records no transforms.

s3dcp's digest of a transformed item covers the *stored* bytes: it is
checked before decoding, so a damaged object is reported as such and never
reaches the decoder.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from s3dcp._compat.torch import extension_registry
from s3dcp._errors import UnsafeCheckpointError

__all__ = ["descriptors_of", "checked_descriptors", "resolve", "decode", "decode_into"]

_SLACK = 64 * 1024  # decoded bytes beyond the expected size that fit before the buffer grows

_INSTALL_HINT = {
    "stream.zstd": "pip install 's3dcp[zstd]' (or pip install zstandard)",
}


def descriptors_of(storage_info: Any) -> tuple[str, ...]:
    """The item's transform descriptors, in the order they were recorded (empty if none)."""
    return tuple(getattr(storage_info, "transform_descriptors", None) or ())


def checked_descriptors(storage_info: Any, where: str, item: str) -> tuple[str, ...]:
    """Like :func:`descriptors_of`, refusing a record whose descriptors are not strings."""
    descriptors = descriptors_of(storage_info)
    for descriptor in descriptors:
        if not isinstance(descriptor, str):
            raise UnsafeCheckpointError(
                f"{where} records a stream transform for {item!r} that is not a string: {descriptor!r}"
            )
    return descriptors


def resolve(descriptors: Sequence[str], where: str, item: str) -> list[Any]:
    """The extensions that undo ``descriptors``; raise a clear error for one this process cannot undo."""
    registry = extension_registry()
    if registry is None:
        raise UnsafeCheckpointError(
            f"{where} stores {item!r} through the DCP stream transforms {list(descriptors)!r}, which this "
            "process cannot undo: this torch does not provide DCP stream transforms "
            "(torch.distributed.checkpoint._extension is missing or changed); load it with a torch that has them"
        )
    extensions: list[Any] = []
    for descriptor in descriptors:
        try:
            extensions.extend(registry.from_descriptor_list([descriptor]))
        except ValueError as err:
            name = descriptor.partition("/")[0]
            hint = _INSTALL_HINT.get(
                name, "install and register the package that provides it (torch's ExtensionRegistry)"
            )
            raise UnsafeCheckpointError(
                f"{where} stores {item!r} through the DCP stream transform {descriptor!r}, which this "
                f"process cannot undo ({err}); to load it, {hint}"
            ) from err
    return extensions


class _StoredBytes(io.RawIOBase):
    """A read-only stream over the stored bytes, so the decoders read them without a copy up front."""

    def __init__(self, data: memoryview) -> None:
        super().__init__()
        self._data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        self._at = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        count = min(target.nbytes, self._data.nbytes - self._at)
        target[:count] = self._data[self._at : self._at + count]
        self._at += count
        return count


def _open(stored: Any, extensions: Sequence[Any]) -> Any:
    stream: Any = _StoredBytes(memoryview(stored))
    for extension in extensions:
        stream = extension.transform_from(stream)
    return stream


def _fill(stream: Any, view: memoryview) -> int:
    """Read from ``stream`` until ``view`` is full or the stream ends; the count read."""
    filled = 0
    readinto = getattr(stream, "readinto", None)
    while filled < view.nbytes:
        if readinto is not None:
            count = readinto(view[filled:])
        else:
            chunk = stream.read(view.nbytes - filled)
            count = len(chunk)
            view[filled : filled + count] = chunk
        if not count:
            break
        filled += count
    return filled


def decode(stored: Any, extensions: Sequence[Any], size_hint: int = 0) -> memoryview:
    """The item's bytes before the transforms: ``stored`` read back through ``extensions`` in order.

    ``size_hint``: the decoded size if known (a tensor's bytes); with it the
    bytes are decoded into one buffer of about that size, never copied again.
    """
    stream = _open(stored, extensions)
    out = bytearray(size_hint + _SLACK if size_hint else 2 * memoryview(stored).nbytes + _SLACK)
    filled = 0
    while True:
        with memoryview(out) as view:
            filled += _fill(stream, view[filled:])
        if filled < len(out):
            break
        out.extend(bytes(len(out)))  # more than expected: grow and go on
    del out[filled:]
    return memoryview(out)  # writable: tensors are built straight on it


def decode_into(
    stored: Any, extensions: Sequence[Any], head: bytes, target: memoryview, tail_length: int
) -> bytes | None:
    """Decode an item whose decoded bytes should be ``head``, then ``target``'s bytes, then a tail.

    The tensor's bytes go straight into ``target``; returns the tail (for
    the caller to check against the expected framing), or ``None`` if the
    decoded bytes do not begin with ``head`` or end early or late.
    ``target`` may have been written to even then.
    """
    stream = _open(stored, extensions)
    start = bytearray(len(head))
    if _fill(stream, memoryview(start)) != len(head) or start != head:
        return None
    if _fill(stream, target) != target.nbytes:
        return None
    tail = bytearray(tail_length + 1)  # one more: the stream must end after the tail
    if _fill(stream, memoryview(tail)) != tail_length:
        return None
    return bytes(tail[:tail_length])
