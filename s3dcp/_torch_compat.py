"""The private torch DCP names s3dcp relies on, imported in one place.

``_StorageInfo`` is what ``FileSystemWriter`` records per item in
``Metadata.storage_data``; writing the same class keeps s3dcp checkpoints
loadable by ``FileSystemReader`` and the other way round. If a torch release
moves it, this module is the one to change (``tests/unit/test_torch_compat.py``
checks the shape s3dcp expects).
"""

from __future__ import annotations

import sys

from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION, _StorageInfo

from .layout import METADATA_NAME, SHARD_SUFFIX

__all__ = ["StorageInfo", "DCP_VERSION", "METADATA_NAME", "SHARD_SUFFIX", "called_from_dcp_load"]

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
