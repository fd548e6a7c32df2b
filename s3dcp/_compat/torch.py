"""Every private torch name s3dcp touches, each looked up when used and each with a fallback.

torch keeps these private, so any release may move or change them. Each is
looked up here by name (never imported at module level), so ``import
s3dcp`` works whatever torch has; a name that is gone logs once at DEBUG
and its caller takes the plain path:

- ``filesystem._StorageInfo``: :class:`FallbackStorageInfo`, same fields;
- ``filesystem.CURRENT_DCP_VERSION``: :data:`FALLBACK_DCP_VERSION`;
- ``metadata._MEM_FORMAT_ENCODING``: ``None``; the metadata reader then
  admits torch's memory-format constants only;
- ``torch._utils._rebuild_tensor_v2``: ``None``; tensors are written with
  ``torch.save``;
- ``torch._weights_only_unpickler._get_allowed_globals``:
  :data:`FALLBACK_ALLOWED_GLOBALS`, a fixed and shorter list;
- DCP's ``local_step`` frame: every ``read_metadata`` is a direct call;
- ``checkpoint._extension``: no stream transforms; only a save given
  extensions, or a load of items that record transforms, fails (clearly).

One difference in what DCP passes is also handled here: older DCP (torch
2.6) calls ``set_up_storage_writer(is_coordinator)`` and
``set_up_storage_reader(metadata, is_coordinator)`` without ``rank=``;
:func:`storage_rank` then finds the rank itself.

Three more names are only matched in pickles, never looked up, so they need
no fallback: :data:`REBUILD_TENSOR_V2`, :data:`GET_LAYOUT` and
:data:`OLD_PROPERTIES_MODULE`. ``tests/unit/test_compat_torch.py`` checks
the names have the shape s3dcp expects;
``tests/integration/test_torch_fallbacks.py`` forces each fallback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import IO, Any, Protocol, cast

import torch
import torch.distributed as dist

from ._missing import report_missing

__all__ = [
    "DCP_METADATA_CLASSES",
    "FALLBACK_ALLOWED_GLOBALS",
    "FALLBACK_DCP_VERSION",
    "GET_LAYOUT",
    "OLD_PROPERTIES_MODULE",
    "REBUILD_TENSOR_V2",
    "FallbackStorageInfo",
    "StreamTransform",
    "called_from_dcp_load",
    "dcp_version",
    "extension_registry",
    "mem_format_encoding",
    "rebuild_tensor_v2",
    "storage_info_class",
    "storage_rank",
    "stream_transform_class",
    "weights_only_global_names",
]


_FILESYSTEM = "torch.distributed.checkpoint.filesystem"
# the dataclasses a DCP .metadata pickle is made of (torch.distributed.checkpoint.metadata)
DCP_METADATA_CLASSES = (
    "Metadata",
    "MetadataIndex",
    "StorageMeta",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "TensorProperties",
)
_METADATA = "torch.distributed.checkpoint.metadata"
_EXTENSION = "torch.distributed.checkpoint._extension"
_WEIGHTS_ONLY = "torch._weights_only_unpickler"
_DCP_LOADER = "torch.distributed.checkpoint.state_dict_loader"

REBUILD_TENSOR_V2 = ("torch._utils", "_rebuild_tensor_v2")
"""The global a ``torch.save`` archive names to rebuild a dense tensor (module, name)."""

GET_LAYOUT = ("torch.serialization", "_get_layout")
"""The global a pickled ``torch.layout`` names (module, name); metadata maps it to its own function."""

OLD_PROPERTIES_MODULE = "torch.distributed._shard.sharded_tensor.metadata"
"""Where older torch's ``TensorProperties`` lived; metadata naming it loads as the current class."""

FALLBACK_DCP_VERSION = "1.0.0"
"""The version ``FileSystemWriter`` records (torch 2.13), for a torch that no longer says."""


def _private(module: str, name: str) -> Any:
    """torch's ``module.name``, or ``None`` (logged once) if this torch has no such name."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        _log_missing(f"{module}.{name}", type(err).__name__)
        return None


def _log_missing(qualified: str, why: str) -> None:
    report_missing(qualified, f"{why}; s3dcp uses its plain fallback")


@dataclass
class FallbackStorageInfo:
    """Per-item location, for a torch without ``filesystem._StorageInfo``.

    The same fields and pickled state, so saves work; but ``.metadata``
    then names this class, so only s3dcp can read such a checkpoint
    (``FileSystemReader`` interop depends on torch's class).
    """

    relative_path: str
    offset: int
    length: int
    transform_descriptors: Sequence[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def storage_info_class() -> type[Any]:
    """The class ``FileSystemWriter`` records per item, so either side reads the other's checkpoints."""
    found = _private(_FILESYSTEM, "_StorageInfo")
    return cast(type[Any], found) if isinstance(found, type) else FallbackStorageInfo


def dcp_version() -> str:
    """The checkpoint format version ``FileSystemWriter`` records in ``Metadata.version``."""
    found = _private(_FILESYSTEM, "CURRENT_DCP_VERSION")
    return found if isinstance(found, str) else FALLBACK_DCP_VERSION


def mem_format_encoding() -> type[Enum] | None:
    """The enum DCP's ``TensorProperties`` pickles its memory format as; ``None`` if torch has none."""
    found = _private(_METADATA, "_MEM_FORMAT_ENCODING")
    return found if isinstance(found, type) and issubclass(found, Enum) else None


def rebuild_tensor_v2() -> Callable[..., Any] | None:
    """The function a ``torch.save`` archive calls to rebuild a dense tensor; ``None`` if moved."""
    found = _private(*REBUILD_TENSOR_V2)
    return cast(Callable[..., Any], found) if callable(found) else None


def _dtype_names() -> list[str]:
    return sorted({str(value) for value in vars(torch).values() if isinstance(value, torch.dtype)})


FALLBACK_ALLOWED_GLOBALS = frozenset(
    {
        "collections.OrderedDict",
        "builtins.set",
        "builtins.complex",
        "builtins.bytearray",
        "torch.Size",
        "torch.device",
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        *(
            f"torch.{kind}Storage"
            for kind in (
                "Float",
                "Double",
                "Half",
                "BFloat16",
                "Long",
                "Int",
                "Short",
                "Char",
                "Byte",
                "Bool",
                "ComplexFloat",
                "ComplexDouble",
            )
        ),
        *(f"{_METADATA}.{name}" for name in DCP_METADATA_CLASSES),
    }
)
"""What s3dcp admits by default when torch's list is out of reach: tensors, their storages and
dtypes (added when used), a subset of torch's defaults; and DCP's metadata dataclasses, which
build plain values and run nothing."""


def weights_only_global_names() -> set[str]:
    """The ``module.name`` globals ``torch.load(weights_only=True)`` admits right now.

    torch's defaults plus what the user registered with
    ``torch.serialization.add_safe_globals``; read each time, since the
    user's set can change between loads. The user's come from the public
    ``get_safe_globals``; torch's defaults have no public accessor.
    """
    allowed = _private(_WEIGHTS_ONLY, "_get_allowed_globals")
    defaults: set[str]
    try:
        defaults = set(allowed()) if callable(allowed) else set()
    except Exception as err:  # a changed signature: the plain list below
        _log_missing(f"{_WEIGHTS_ONLY}._get_allowed_globals()", repr(err))
        defaults = set()
    if not defaults:
        defaults = set(FALLBACK_ALLOWED_GLOBALS) | set(_dtype_names())
    for entry in torch.serialization.get_safe_globals():
        if isinstance(entry, tuple):
            defaults.add(entry[1])
        else:
            defaults.add(f"{entry.__module__}.{entry.__qualname__}")
    return defaults


def called_from_dcp_load(depth: int = 2) -> bool:
    """True if the caller's caller is DCP's load step.

    torch 2.13's ``_load_state_dict`` catches every ``Exception`` from
    ``StorageReader.read_metadata`` and replaces it with a bare
    ``AssertionError``. The reader uses this check to keep its error for
    ``set_up_storage_reader`` (which DCP passes on intact) only in that case;
    direct callers of ``read_metadata`` get the error at once. A check that
    cannot be made (no frame, another torch) answers ``False``: a direct call.
    """
    try:
        frame = sys._getframe(depth)
    except (AttributeError, ValueError) as err:
        _log_missing(f"{_DCP_LOADER}.local_step (frame check)", type(err).__name__)
        return False
    return frame.f_code.co_name == "local_step" and frame.f_globals.get("__name__") == _DCP_LOADER


class StreamTransform(Protocol):
    """What s3dcp uses of a DCP ``StreamTransformExtension`` (e.g. ``ZStandard()``)."""

    def get_descriptor(self) -> str: ...

    def transform_to(self, output: IO[bytes]) -> IO[bytes]: ...

    def transform_from(self, input: IO[bytes]) -> IO[bytes]: ...


def stream_transform_class() -> type[Any] | None:
    """``StreamTransformExtension``, to check what a user passes; ``None`` if this torch has none."""
    found = _private(_EXTENSION, "StreamTransformExtension")
    return cast(type[Any], found) if isinstance(found, type) else None


def extension_registry() -> Any:
    """A fresh ``ExtensionRegistry`` of DCP's stream transforms; ``None`` if this torch has none."""
    registry = _private(_EXTENSION, "ExtensionRegistry")
    return registry() if callable(registry) else None


def storage_rank(passed: object) -> int:
    """This process's rank in a save or load, from what DCP passed to ``set_up_storage_*``.

    Newer DCP passes ``rank=`` (its rank in the checkpoint's process group);
    older DCP (torch 2.6) passes none. Then it is the default group's rank
    when ``torch.distributed`` is running (a save over a sub-group gets its
    global rank), else 0: a one-process save, as DCP's own.
    """
    if isinstance(passed, int) and not isinstance(passed, bool):
        return passed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return 0
