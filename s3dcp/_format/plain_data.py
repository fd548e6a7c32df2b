"""Proving a ``BYTE_IO`` item is plain data before DCP's planner unpickles it.

DCP stores every non-tensor value as one ``torch.save`` archive and loads it
with ``weights_only=False``, which runs whatever callables the pickle names.
s3dcp first loads each item with ``weights_only=True``: what that admits
(tensors, containers, scalars, the classes registered with
``torch.serialization.add_safe_globals``) cannot run code, so the planner's
load cannot either.

``io.BytesIO`` is the one value type DCP itself handles that
``weights_only`` refuses (with ``bytes``, which protocol 2 calls for an
empty ``bytes``). They are admitted for the check when they are the only
globals the archive names besides admitted ones; every other global, and
everything a ``BytesIO``'s state holds, stays under the same allow-list.
A ``BytesIO``'s contents are bytes DCP hands back unread, but a user is
likely to unpickle them next, so contents that are themselves a
``torch.save`` archive or a pickle are held to the same allow-list too.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
import threading
import zipfile
from collections.abc import Callable, Iterator
from typing import IO, Any, cast

import torch

from s3dcp._compat.torch import weights_only_global_names
from s3dcp._errors import UnsafeCheckpointError

__all__ = ["check_plain_data", "MemoryReader"]

_BYTES_IO_NAME = f"{io.BytesIO.__module__}.{io.BytesIO.__qualname__}"
# BytesIO, and bytes, which pickle protocol 2 calls to make an empty bytes object (BytesIO())
_ADMITTED: dict[str, Callable[..., Any]] = {_BYTES_IO_NAME: io.BytesIO, "builtins.bytes": bytes}
# torch's allow-list is one process-wide set: admitting BytesIO for a check is serialized here
_ADMIT_BYTES_IO = threading.Lock()
_ZIP_MAGIC = b"PK\x03\x04"


class MemoryReader(io.RawIOBase):
    """A seekable read-only file over a buffer, without copying it.

    ``torch.load`` fills tensor storages through ``readinto``, so reading
    from this copies each byte once; ``io.BytesIO(view)`` would copy the
    whole buffer first.
    """

    def __init__(self, buffer: Any) -> None:
        super().__init__()
        self._view = memoryview(buffer).cast("B")
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        count = max(0, min(len(target), len(self._view) - self._position))
        target[:count] = self._view[self._position : self._position + count]
        self._position += count
        return count

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._position + size)
        data = bytes(self._view[self._position : end])
        self._position = max(self._position, end)
        return data


def check_plain_data(data: memoryview | bytes, item: str) -> None:
    """Raise :class:`UnsafeCheckpointError` unless a ``BYTE_IO`` item is plain data."""
    value = _load_weights_only(data, item)
    for contents in _bytes_io_contents(value):
        _check_contents(contents, item)


def _load_weights_only(data: memoryview | bytes, item: str) -> Any:
    """``torch.load(weights_only=True)`` of an item, admitting ``io.BytesIO`` if that is all it lacks."""
    try:
        return _torch_load(data)
    except pickle.UnpicklingError as err:
        refusal = err
    unadmitted = _unadmitted_globals(data)
    if unadmitted and unadmitted <= set(_ADMITTED):
        # only what the user has not admitted is added, so leaving the block removes nothing of theirs
        extra: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
            admitted for name, admitted in _ADMITTED.items() if name in unadmitted
        ]
        with _ADMIT_BYTES_IO:
            try:
                with torch.serialization.safe_globals(extra):
                    return _torch_load(data)
            except pickle.UnpicklingError as err:
                refusal = err
    named = sorted((unadmitted or set()) - set(_ADMITTED))
    why = f"it names {', '.join(named)}" if named else _why_refused(refusal)
    raise UnsafeCheckpointError(
        f"item {item!r} is not plain data: loading it would run code it names ({why}). If you trust "
        "this checkpoint and the type is yours, allow it with torch.serialization.add_safe_globals([...]) "
        "before loading"
    ) from None


def _torch_load(data: memoryview | bytes) -> Any:
    return torch.load(cast(IO[bytes], MemoryReader(data)), map_location="cpu", weights_only=True)


def _unadmitted_globals(data: memoryview | bytes) -> set[str] | None:
    """The globals a ``torch.save`` archive names that ``weights_only`` refuses (``None``: not readable)."""
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(cast(IO[bytes], MemoryReader(data))))
    except (ValueError, RuntimeError, pickle.UnpicklingError):
        return None  # not an archive, or one torch cannot disassemble: refused as it stands


def _bytes_io_contents(value: Any) -> Iterator[bytes]:
    """The contents of every ``io.BytesIO`` inside a loaded value (containers walked, cycles once)."""
    pending, seen = [value], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, io.BytesIO):
            yield current.getvalue()
        elif isinstance(current, dict):
            pending.extend(current.keys())
            pending.extend(current.values())
        elif isinstance(current, (list, tuple, set, frozenset)):
            pending.extend(current)


def _check_contents(contents: bytes, item: str) -> None:
    """Hold the bytes in a ``BytesIO`` to the allow-list if they are an archive or a pickle."""
    where = f"{item} (inside an io.BytesIO)"
    if _is_torch_archive(contents):
        try:
            check_plain_data(contents, where)
        except (RuntimeError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            pass  # an archive torch cannot read: bytes that no torch.load will unpickle either
        return
    names = _pickle_globals(contents)
    if names is None:
        return  # not a pickle: bytes, which nothing unpickles
    refused = sorted(names - weights_only_global_names() - set(_ADMITTED))
    if refused:
        raise UnsafeCheckpointError(
            f"item {where!r} holds a pickle that names {', '.join(refused)}, which unpickling it would "
            "run. If you trust this checkpoint and the type is yours, allow it with "
            "torch.serialization.add_safe_globals([...]) before loading"
        )


def _is_torch_archive(contents: bytes) -> bool:
    if not contents.startswith(_ZIP_MAGIC):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(contents)) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


_UNRESOLVABLE = "<a global pickle computes while loading>"


def _pickle_globals(contents: bytes) -> set[str] | None:
    """Every global a pickle names, read without running it; ``None`` if ``contents`` is not a pickle.

    A global whose name the pickle computes (memo lookups before
    ``STACK_GLOBAL``, the copyreg extension opcodes) cannot be named without
    running it, so it counts as a global nothing admits.
    """
    names: set[str] = set()
    strings: list[object] = []
    stopped = False
    try:
        for opcode, argument, _ in pickletools.genops(contents):
            if opcode.name in ("GLOBAL", "INST"):
                module, _, name = str(argument).partition(" ")
                names.add(_python3_name(module, name))
            elif opcode.name == "STACK_GLOBAL":
                pushed = strings[-2:] if len(strings) >= 2 else [None, None]
                resolved = all(isinstance(part, str) for part in pushed)
                names.add(_python3_name(str(pushed[0]), str(pushed[1])) if resolved else _UNRESOLVABLE)
            elif opcode.name.startswith("EXT"):
                names.add(_UNRESOLVABLE)
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings.append(argument)
            elif opcode.name != "MEMOIZE":
                strings.append(None)
            stopped = opcode.name == "STOP"
    except ValueError:
        return None
    # pickle.loads ignores what follows STOP, so trailing bytes do not make it less of a pickle
    return names if stopped else None


def _python3_name(module: str, name: str) -> str:
    """``module.name`` as pickle resolves it: Python 2 names (``__builtin__``) map to Python 3's."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _why_refused(error: Exception) -> str:
    """The line of torch's weights-only message that names what was refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or [type(error).__name__])[0]
