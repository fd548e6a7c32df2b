"""The local tier: DCP checkpoints in a directory, in ``FileSystemWriter``'s layout.

``root/name/`` holds a checkpoint: shard files ``{stem}{i}.distcp`` and
``.metadata`` (written last, atomically, so a directory without it is an
unfinished save). Items carry the same xxh3 digests as on S3, so a damaged
local file is found on load, item by item, and ``FileSystemReader`` loads
the directory as it is.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlanner, WriteItem
from torch.distributed.checkpoint.storage import WriteResult

from s3dcp._config import MIB
from s3dcp._errors import S3DCPError
from s3dcp._files import write_atomically
from s3dcp._format.layout import METADATA_NAME, parse_step
from s3dcp._format.metadata import load_metadata
from s3dcp._format.shard import write_items

__all__ = [
    "checkpoint_name",
    "is_checkpoint_name",
    "write_shard_file",
    "write_local_metadata",
    "read_local_metadata",
    "complete_local_checkpoints",
    "prune_local",
    "mark_uploading",
    "uploading_names",
]

log = logging.getLogger("s3dcp")

_BUFFER = 8 * MIB
_UPLOADING = ".s3dcp-uploading"  # under the root: which checkpoints some process still uploads
_FOREIGN_MARK_LIFETIME = 24 * 3600.0


def checkpoint_name(checkpoint_id: str | os.PathLike[str]) -> str:
    """A checkpoint's name under both roots: one directory name such as ``step_100``."""
    name = os.fspath(checkpoint_id)
    if (
        not isinstance(name, str)
        or not name
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or name.startswith(".")
        or any(ord(c) < 32 for c in name)
    ):
        raise ValueError(
            "a tiered checkpoint id is the name of one checkpoint under local_dir and s3_path, such as "
            f"'step_100' (no '/', not starting with '.'), not {name!r}"
        )
    return name


def is_checkpoint_name(checkpoint_id: object) -> bool:
    """Whether ``checkpoint_id`` names one tiered checkpoint (see :func:`checkpoint_name`)."""
    try:
        checkpoint_name(checkpoint_id)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False
    return True


def write_shard_file(
    checkpoint_dir: Path, relative: str, items: Sequence[WriteItem], planner: SavePlanner, *, sync: bool
) -> list[WriteResult]:
    """Write one shard file of ``items``; with ``sync`` it is on disk when this returns."""
    path = checkpoint_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb", buffering=_BUFFER) as stream:
        results = write_items(stream, items, planner, relative)
        stream.flush()
        if sync:
            os.fsync(stream.fileno())
    return results


def write_local_metadata(checkpoint_dir: Path, body: bytes, *, sync: bool) -> None:
    """Commit a local checkpoint: ``.metadata`` appears whole or not at all."""
    write_atomically(checkpoint_dir / METADATA_NAME, [body], sync=sync)


def read_local_metadata(checkpoint_dir: Path) -> tuple[Metadata, bytes] | None:
    """The local checkpoint's metadata and its bytes, or ``None`` if absent or unreadable.

    Unreadable metadata (truncated, damaged) is logged and treated as absent:
    the caller falls back to the durable tier.
    """
    path = checkpoint_dir / METADATA_NAME
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("cannot read local %s: %s; using the S3 copy", path, err)
        return None
    try:
        return load_metadata(body, str(path)), body
    except S3DCPError as err:
        log.warning("local %s is damaged (%s); using the S3 copy", path, err)
        return None


def complete_local_checkpoints(root: Path) -> list[str]:
    """Names of the complete checkpoints under ``root``, oldest first.

    Ordered by ``step_N`` where names have one, else by when ``.metadata``
    was written; stepped checkpoints sort after unstepped ones, as in
    :func:`s3dcp.latest_checkpoint`.
    """
    if not root.is_dir():
        return []
    found: list[tuple[bool, int, float, str]] = []
    for child in root.iterdir():
        if child.name.startswith("."):
            continue
        try:
            committed = (child / METADATA_NAME).stat().st_mtime
        except (FileNotFoundError, NotADirectoryError):
            continue
        step = parse_step(child.name)
        found.append((step is not None, step or 0, committed, child.name))
    return [name for *_, name in sorted(found)]


def _newest_last(root: Path) -> list[str]:
    """Every checkpoint directory under ``root`` (complete or not), oldest first."""
    found: list[tuple[bool, int, float, str]] = []
    for child in root.iterdir() if root.is_dir() else ():
        if child.is_dir() and not child.name.startswith("."):
            step = parse_step(child.name)
            found.append((step is not None, step or 0, child.stat().st_mtime, child.name))
    return [name for *_, name in sorted(found)]


def prune_local(root: Path, keep: int, *, current: str, own_stem: str, coordinator: bool) -> list[str]:
    """Remove local checkpoints beyond the newest ``keep``; return their names.

    Newest is by ``step_N``, then by directory time; unfinished directories
    (a save that crashed) count like the others, so they are cleared out
    in turn. Several ranks share a node's directory, and ranks on other
    nodes have directories of their own, so each rank removes only its own
    shard files (names starting with ``own_stem``); the coordinator first
    removes ``.metadata`` (uncommitting the copy), then the directory.
    ``current`` (the save in progress) and checkpoints that some process
    is still uploading (see :func:`mark_uploading`) are never removed.
    """
    spared = {current, *uploading_names(root)}
    names = _newest_last(root)
    removed = []
    for name in names[: max(0, len(names) - keep)]:
        if name in spared:
            continue
        directory = root / name
        if coordinator:
            (directory / METADATA_NAME).unlink(missing_ok=True)
            shutil.rmtree(directory, ignore_errors=True)
        else:
            stem = Path(own_stem)
            for path in (directory / stem.parent).glob(f"{stem.name}*"):
                path.unlink(missing_ok=True)
        removed.append(name)
    return removed


def mark_uploading(root: Path, name: str, rank: int) -> Path:
    """Record that this process is about to read ``root/name`` for an upload; unlink the path when done.

    Retention in any process on the node (other ranks, ``dcp.async_save``'s
    checkpoint process) skips marked checkpoints. A mark whose process is
    gone (same host, pid not running) no longer counts, so a crash cannot
    pin a checkpoint forever.
    """
    folder = root / _UPLOADING
    folder.mkdir(parents=True, exist_ok=True)
    mark = folder / f"{name}@{socket.gethostname()}@{os.getpid()}@{rank}"
    mark.touch()
    return mark


def uploading_names(root: Path) -> set[str]:
    """Checkpoints under ``root`` that a live process is still uploading."""
    folder = root / _UPLOADING
    names = set()
    for mark in folder.iterdir() if folder.is_dir() else ():
        try:
            name, host, pid, _ = mark.name.rsplit("@", 3)
            age = time.time() - mark.stat().st_mtime
        except (ValueError, FileNotFoundError):
            continue
        if host == socket.gethostname():
            if _process_alive(int(pid)):
                names.add(name)
        elif age < _FOREIGN_MARK_LIFETIME:  # another container's process: its pid means nothing here
            names.add(name)
    return names


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
