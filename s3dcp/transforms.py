"""DCP stream transforms (``transform_descriptors``): resolving and undoing them on load.

``FileSystemWriter(_extensions=[ZStandard()])`` passes each item's bytes
through its extensions and records their descriptors (e.g. ``"stream.zstd/1"``)
on the item's storage record. Such an item's stored range holds the
transformed bytes, so it is fetched whole and decoded before parsing; it is
never read in place. torch's extension registry maps descriptors to
extensions, as ``FileSystemReader`` does; a torch without one can still load
every item that records no transforms.

s3dcp's digest of a transformed item covers the *stored* bytes: it is
checked before decoding, so a damaged object is reported as such and never
reaches the decoder.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from ._compat.torch import extension_registry
from .errors import UnsafeCheckpointError

__all__ = ["descriptors_of", "checked_descriptors", "resolve", "decode"]

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


def decode(stored: Any, extensions: Sequence[Any]) -> memoryview:
    """The item's bytes before the transforms: ``stored`` read back through ``extensions`` in order."""
    stream: Any = io.BytesIO(stored)
    for extension in extensions:
        stream = extension.transform_from(stream)
    return memoryview(bytearray(stream.read(-1)))  # writable: tensors are built straight on it
