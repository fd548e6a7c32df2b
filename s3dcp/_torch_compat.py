"""The private torch DCP names s3dcp relies on, imported in one place.

``_StorageInfo`` is what ``FileSystemWriter`` records per item in
``Metadata.storage_data``; writing the same class keeps s3dcp checkpoints
loadable by ``FileSystemReader`` and the other way round. If a torch release
moves it, this module is the one to change (``tests/unit/test_torch_compat.py``
checks the shape s3dcp expects). The same goes for the names of the globals
``torch.load(weights_only=True)`` admits, which torch keeps private, and for
DCP's stream transforms (``StreamTransformExtension``, ``ExtensionRegistry``),
which torch marks experimental.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, cast

from torch import _weights_only_unpickler
from torch.distributed.checkpoint._extension import ExtensionRegistry, StreamTransformExtension
from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION, _StorageInfo

from .layout import METADATA_NAME, SHARD_SUFFIX

__all__ = [
    "StorageInfo",
    "StreamTransformExtension",
    "extension_registry",
    "DCP_VERSION",
    "METADATA_NAME",
    "SHARD_SUFFIX",
    "called_from_dcp_load",
    "weights_only_global_names",
]

StorageInfo = _StorageInfo
"""Per-item location: ``relative_path``, ``offset``, ``length`` (and transforms)."""

DCP_VERSION: str = CURRENT_DCP_VERSION


def called_from_dcp_load(depth: int = 2) -> bool:
    """True if the caller's caller is DCP's load step.

    torch 2.13's ``_load_state_dict`` catches every ``Exception`` from
    ``StorageReader.read_metadata`` and replaces it with a bare
    ``AssertionError``. The reader uses this check to keep its error for
    ``set_up_storage_reader`` (which DCP passes on intact) only in that case;
    direct callers of ``read_metadata`` get the error at once.
    """
    frame = sys._getframe(depth)
    return (
        frame.f_code.co_name == "local_step"
        and frame.f_globals.get("__name__") == "torch.distributed.checkpoint.state_dict_loader"
    )


def weights_only_global_names() -> set[str]:
    """The ``module.name`` globals ``torch.load(weights_only=True)`` admits right now.

    torch's defaults plus what the user registered with
    ``torch.serialization.add_safe_globals``; read each time, since the
    user's set can change between loads.
    """
    user_allowed = cast(Callable[[], dict[str, Any]], _weights_only_unpickler._get_user_allowed_globals)
    return set(_weights_only_unpickler._get_allowed_globals()) | set(user_allowed())


def extension_registry() -> ExtensionRegistry:
    """A fresh ``ExtensionRegistry`` of DCP's stream transforms (private in torch 2.13)."""
    return ExtensionRegistry()
