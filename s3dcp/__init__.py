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

from .catalog import CheckpointInfo, latest_checkpoint, list_checkpoints
from .config import S3ClientConfig
from .errors import (
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
    UnsafeCheckpointError,
    UploadFailedError,
    WrongRegionError,
    find_s3dcp_error,
)
from .prefix import (
    BinaryPrefixStrategy,
    HexPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3PrefixStrategyBase,
)

if typing.TYPE_CHECKING:
    from .reader import S3StorageReader
    from .tier_upload import UploadStatus
    from .tiered import TieredStorageReader, TieredStorageWriter, latest_tiered_checkpoint
    from .writer import S3StorageWriter

__version__ = "0.1.0"

# public name -> the module that defines it, imported on first use (it imports torch)
_NEEDS_TORCH = {
    "S3StorageWriter": ".writer",
    "S3StorageReader": ".reader",
    "UploadStatus": ".tier_upload",
    "TieredStorageWriter": ".tiered",
    "TieredStorageReader": ".tiered",
    "latest_tiered_checkpoint": ".tiered",
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
