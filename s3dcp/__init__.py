"""s3dcp: save and load PyTorch Distributed Checkpoints straight to S3.

::

    import torch.distributed.checkpoint as dcp
    from s3dcp import S3StorageWriter, S3StorageReader

    dcp.save(state_dict, storage_writer=S3StorageWriter("us-east-1", "s3://bucket/run/step_100"))
    dcp.load(state_dict, storage_reader=S3StorageReader("us-east-1", "s3://bucket/run/step_100"))

The names that need torch (the DCP adapters) load on first use, so
``import s3dcp`` and the ``s3dcp`` command's listing and clean-up commands
start without importing torch.
"""

import importlib
import typing

from s3dcp._catalog import (
    AbandonedUpload,
    CheckpointInfo,
    Removal,
    Survey,
    UploadSweep,
    checkpoint_info,
    delete_checkpoint,
    gc,
    latest_checkpoint,
    list_checkpoints,
    plan_delete,
    plan_gc,
    plan_prune,
    prune,
    remove,
    survey,
)
from s3dcp._config import S3ClientConfig
from s3dcp._errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CheckpointDamagedError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    CredentialsError,
    EndpointError,
    ObjectNotFoundError,
    S3DCPError,
    S3RequestError,
    SharedReadError,
    UnsafeCheckpointError,
    UploadFailedError,
    WrongRegionError,
    find_s3dcp_error,
)
from s3dcp._prefix import (
    BinaryPrefixStrategy,
    HexPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3PrefixStrategyBase,
)
from s3dcp._stats import PhaseStats

if typing.TYPE_CHECKING:
    from s3dcp._copy import CopyReport, copy_checkpoint
    from s3dcp._reader import S3StorageReader
    from s3dcp._tiered.discovery import latest_tiered_checkpoint
    from s3dcp._tiered.reader import TieredStorageReader
    from s3dcp._tiered.upload import UploadStatus
    from s3dcp._tiered.writer import TieredStorageWriter
    from s3dcp._verify import Problem, VerifyReport, verify_checkpoint
    from s3dcp._writer import S3StorageWriter

__version__ = "0.1.0"

# public name -> the module that defines it, imported on first use (it imports torch)
_NEEDS_TORCH = {
    "S3StorageWriter": "._writer",
    "S3StorageReader": "._reader",
    "UploadStatus": "._tiered.upload",
    "TieredStorageWriter": "._tiered.writer",
    "TieredStorageReader": "._tiered.reader",
    "latest_tiered_checkpoint": "._tiered.discovery",
    "copy_checkpoint": "._copy",
    "CopyReport": "._copy",
    "verify_checkpoint": "._verify",
    "VerifyReport": "._verify",
    "Problem": "._verify",
}

__all__ = [
    "S3StorageWriter",
    "S3StorageReader",
    "S3ClientConfig",
    "S3PrefixStrategyBase",
    "RoundRobinPrefixStrategy",
    "BinaryPrefixStrategy",
    "HexPrefixStrategy",
    "S3DCPError",
    "CheckpointNotFoundError",
    "CheckpointExistsError",
    "CheckpointDamagedError",
    "ChecksumMismatchError",
    "UnsafeCheckpointError",
    "SharedReadError",
    "UploadFailedError",
    "S3RequestError",
    "BucketNotFoundError",
    "ObjectNotFoundError",
    "AccessDeniedError",
    "CredentialsError",
    "WrongRegionError",
    "EndpointError",
    "find_s3dcp_error",
    "CheckpointInfo",
    "list_checkpoints",
    "latest_checkpoint",
    "checkpoint_info",
    "survey",
    "Survey",
    "plan_delete",
    "delete_checkpoint",
    "plan_prune",
    "prune",
    "remove",
    "Removal",
    "plan_gc",
    "gc",
    "UploadSweep",
    "AbandonedUpload",
    "copy_checkpoint",
    "CopyReport",
    "verify_checkpoint",
    "VerifyReport",
    "Problem",
    "PhaseStats",
    "TieredStorageWriter",
    "TieredStorageReader",
    "UploadStatus",
    "latest_tiered_checkpoint",
]


def __getattr__(name: str) -> typing.Any:
    """Import a torch-dependent public name the first time it is asked for (``from s3dcp import X`` too)."""
    module = _NEEDS_TORCH.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
