"""Read and write ``.metadata``, the commit record of a checkpoint.

The bytes are what ``FileSystemWriter`` writes (a pickled DCP ``Metadata``),
so either side can read the other's checkpoints. Reading never uses plain
``pickle``: a checkpoint in a shared bucket may have been written by anyone,
and unpickling runs whatever callables the data names. :class:`SafeUnpickler`
admits only the classes DCP metadata is made of; anything else stops the
load before it is called.

Two ways a ``.metadata`` can fail to load, kept apart because they call for
different actions: it names something outside the allow-list
(:class:`~s3dcp._errors.UnsafeCheckpointError`: someone wrote code into it), or
it does not unpickle into DCP metadata at all, e.g. cut short or overwritten
(:class:`~s3dcp._errors.CheckpointDamagedError`: the commit record exists and
is broken, which is never a reason to start training from scratch).
"""

from __future__ import annotations

import io
import pathlib
import pickle
from collections import OrderedDict
from typing import IO, Any

import torch
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from s3dcp._compat.torch import (
    DCP_METADATA_CLASSES,
    GET_LAYOUT,
    OLD_PROPERTIES_MODULE,
    FallbackStorageInfo,
    dcp_version,
    mem_format_encoding,
    storage_info_class,
)
from s3dcp._errors import CheckpointDamagedError, UnsafeCheckpointError

__all__ = ["commit_record", "dump_metadata", "load_metadata", "check_relative_key", "SafeUnpickler"]


def _layout_by_name(name: object) -> torch.layout:
    """What pickled layouts call (``torch.serialization._get_layout``), without calling torch's."""
    if isinstance(name, str) and name.startswith("torch."):
        layout = getattr(torch, name[len("torch.") :], None)
        if isinstance(layout, torch.layout):
            return layout
    raise UnsafeCheckpointError(f"names an unknown tensor layout {name!r}")


def _allowed() -> dict[tuple[str, str], Any]:
    """What a ``.metadata`` may name, with torch's private classes looked up as this torch has them.

    s3dcp's stand-in for ``_StorageInfo`` is always admitted, so what it saved
    without torch's class loads anywhere. Without ``_MEM_FORMAT_ENCODING``
    memory formats are admitted only as torch's constants, the form a torch
    without that enum would have to use.
    """
    storage_infos = {storage_info_class(), FallbackStorageInfo}
    allowed: dict[tuple[str, str], Any] = {
        **{(dcp_metadata.__name__, name): getattr(dcp_metadata, name) for name in DCP_METADATA_CLASSES},
        **{(cls.__module__, cls.__qualname__): cls for cls in storage_infos},
        ("torch", "Size"): torch.Size,
        ("collections", "OrderedDict"): OrderedDict,
        GET_LAYOUT: _layout_by_name,
        # FileSystemWriter records its checkpoint_id as a path object; building one touches nothing
        **{
            ("pathlib", cls.__name__): cls
            for cls in (pathlib.PosixPath, pathlib.PurePosixPath, pathlib.PureWindowsPath)
        },
        # Older torch wrote tensor properties with the ShardedTensor classes. torch still loads
        # them; their pickled state is the same as the current classes', so they load as those.
        (OLD_PROPERTIES_MODULE, "TensorProperties"): dcp_metadata.TensorProperties,
    }
    encoding = mem_format_encoding()
    if encoding is not None:
        allowed[(encoding.__module__, encoding.__qualname__)] = encoding
        allowed[(OLD_PROPERTIES_MODULE, "MEM_FORMAT_ENCODING")] = encoding
    return allowed


_TORCH_CONSTANT_TYPES = (torch.dtype, torch.layout, torch.memory_format)


class SafeUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata and nothing else.

    Admitted: DCP's metadata dataclasses, ``_StorageInfo`` (and s3dcp's
    stand-in for it), ``torch.Size``,
    ``OrderedDict``, torch's dtype/layout/memory-format constants, pure
    path objects and the builtin containers and scalars pickle encodes
    without naming a class. The ShardedTensor ``TensorProperties`` and
    ``MEM_FORMAT_ENCODING`` that older torch wrote (and torch still loads)
    are read as their current DCP equivalents, which share their pickled
    state.
    """

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self._allowed = _allowed()  # once per record: torch's private names looked up as they are now

    def find_class(self, module: str, name: str) -> Any:
        allowed = self._allowed.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_CONSTANT_TYPES):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"refers to {module}.{name}, which DCP metadata never contains; it was not loaded and nothing in it was run"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError("holds a persistent reference, which DCP metadata never contains")


def dump_metadata(metadata: Metadata) -> bytes:
    """Serialize ``metadata`` exactly as DCP's ``FileSystemWriter`` does."""
    return pickle.dumps(metadata)


def commit_record(metadata: Metadata, results: list[list[Any]], storage_meta: StorageMeta | None) -> bytes:
    """The bytes of ``.metadata`` for a save: DCP's ``metadata`` completed as ``FileSystemWriter.finish`` does.

    ``results`` are every rank's ``WriteResult`` lists; their storage data
    (where each item's bytes are) becomes the per-item records.
    """
    metadata.version = dcp_version()
    metadata.storage_data = {result.index: result.storage_data for rank in results for result in rank}
    metadata.storage_meta = storage_meta
    return dump_metadata(metadata)


def load_metadata(data: bytes | bytearray, where: str) -> Metadata:
    """Deserialize ``.metadata`` read from ``where`` (used in messages), safely.

    Raises:
        UnsafeCheckpointError: the data names a class or callable DCP
            metadata never contains; nothing of it was run.
        CheckpointDamagedError: the data is not a readable DCP ``Metadata``
            pickle (truncated, overwritten, empty).
    """
    try:
        metadata = SafeUnpickler(io.BytesIO(data)).load()
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{where} {err}; refusing to load this checkpoint") from None
    except Exception as err:
        raise CheckpointDamagedError(
            f"{where} ({len(data)} bytes) does not unpickle ({type(err).__name__}: {err}): {_DAMAGED_RECORD}"
        ) from err
    if not isinstance(metadata, Metadata):
        raise CheckpointDamagedError(
            f"{where} holds a pickled {type(metadata).__name__}, not DCP Metadata: {_DAMAGED_RECORD}"
        )
    return metadata


_DAMAGED_RECORD = (
    "the checkpoint's commit record is damaged. Restore this .metadata from a copy or backup, "
    "or load an older checkpoint explicitly; the checkpoint was saved, so this is no reason to "
    "start from scratch"
)


def check_relative_key(relative: object, where: str) -> str:
    """Return ``relative`` if it is a key that stays inside the checkpoint prefix."""
    if not isinstance(relative, str) or not relative:
        raise UnsafeCheckpointError(f"{where} records an object path {relative!r} that is not a key")
    parts = relative.split("/")
    if relative.startswith("/") or "\\" in relative or any(p in ("", ".", "..") for p in parts):
        raise UnsafeCheckpointError(
            f"{where} records the object path {relative!r}, which leaves the checkpoint; refusing to read it"
        )
    if "://" in relative or any(ord(ch) < 0x20 for ch in relative):
        raise UnsafeCheckpointError(f"{where} records a malformed object path {relative!r}")
    return relative
