"""Read and write ``.metadata``, the commit record of a checkpoint.

The bytes are what ``FileSystemWriter`` writes (a pickled DCP ``Metadata``),
so either side can read the other's checkpoints.
"""

from __future__ import annotations

import pickle

from torch.distributed.checkpoint.metadata import Metadata

from .errors import UnsafeCheckpointError

__all__ = ["dump_metadata", "load_metadata", "check_relative_key"]


def dump_metadata(metadata: Metadata) -> bytes:
    """Serialize ``metadata`` exactly as DCP's ``FileSystemWriter`` does."""
    return pickle.dumps(metadata)


def load_metadata(data: bytes | bytearray, where: str) -> Metadata:
    """Deserialize ``.metadata`` read from ``where`` (used in messages)."""
    try:
        metadata = pickle.loads(data)
    except Exception as err:
        raise UnsafeCheckpointError(
            f"{where} is not a readable DCP metadata file ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(
            f"{where} holds a {type(metadata).__name__}, not DCP Metadata"
        )
    return metadata


def check_relative_key(relative: object, where: str) -> str:
    """Return ``relative`` if it is a key that stays inside the checkpoint prefix."""
    if not isinstance(relative, str) or not relative:
        raise UnsafeCheckpointError(f"{where} records an object path {relative!r} that is not a key")
    parts = relative.split("/")
    if relative.startswith("/") or "\\" in relative or any(p in ("", ".", "..") for p in parts):
        raise UnsafeCheckpointError(
            f"{where} records the object path {relative!r}, which leaves the checkpoint; "
            "refusing to read it"
        )
    if "://" in relative or any(ord(ch) < 0x20 for ch in relative):
        raise UnsafeCheckpointError(f"{where} records a malformed object path {relative!r}")
    return relative
