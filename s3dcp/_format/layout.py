"""The names of the objects a checkpoint is made of (no torch needed to read them).

A checkpoint at ``s3://bucket/prefix`` holds:

* ``prefix/.metadata``: the commit record, written last; the checkpoint is
  complete once it exists;
* DCP shard objects ``__{rank}_{i}.distcp``, directly under the prefix or,
  with a prefix strategy, under sub-prefixes of it (``0000/__0_0.distcp``);
* s3dcp's own bookkeeping objects, all named ``.s3dcp-*``: the marker of a
  save in progress (``.s3dcp-saving``) and the tiered upload markers
  (``.s3dcp-uploads/...``).

Management commands use these names to tell a checkpoint's own objects from
anything else stored beside them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping

__all__ = [
    "parse_step",
    "METADATA_NAME",
    "SHARD_SUFFIX",
    "OWN_PREFIX",
    "SAVING_MARKER",
    "UPLOAD_MARKERS",
    "is_shard_name",
    "is_empty_shard",
    "empty_shards",
    "is_own_object",
    "find_strays",
]

METADATA_NAME = ".metadata"
SHARD_SUFFIX = ".distcp"
OWN_PREFIX = ".s3dcp-"
SAVING_MARKER = ".s3dcp-saving"
UPLOAD_MARKERS = ".s3dcp-uploads"

_SHARD_NAME = re.compile(r"^__\d+_\d+\.distcp$")


def is_shard_name(relative: str) -> bool:
    """True if the last part of ``relative`` is a DCP shard name (``__3_0.distcp``)."""
    return _SHARD_NAME.match(relative.rsplit("/", 1)[-1]) is not None


def is_empty_shard(relative: str, size: int) -> bool:
    """True for a shard object of 0 bytes: what a rank or writer thread with nothing to store writes.

    ``FileSystemWriter`` writes one file per rank and writer thread, empty
    when it has no items; s3dcp writes the same objects so that a synced
    directory is identical. No metadata references one, and it costs no
    storage, so it is never a stray.
    """
    return size == 0 and is_shard_name(relative)


def is_own_object(relative: str) -> bool:
    """True if ``relative`` (a path inside a checkpoint) is one of s3dcp's bookkeeping objects."""
    return relative.startswith(OWN_PREFIX)


def _nested_checkpoints(objects: Mapping[str, int]) -> Callable[[str], bool]:
    """A test for "lies inside a sub-prefix that is a checkpoint (or a save) of its own"."""
    nested = {
        relative.rsplit("/", 1)[0]
        for relative in objects
        if "/" in relative and relative.rsplit("/", 1)[1] in (METADATA_NAME, SAVING_MARKER)
    }

    def inside_nested(relative: str) -> bool:
        parts = relative.split("/")[:-1]
        return any("/".join(parts[:depth]) in nested for depth in range(1, len(parts) + 1))

    return inside_nested


def empty_shards(objects: Mapping[str, int]) -> list[str]:
    """The empty shard objects of a checkpoint (not of checkpoints nested in it), to copy with it."""
    inside_nested = _nested_checkpoints(objects)
    return sorted(
        relative
        for relative, size in objects.items()
        if is_empty_shard(relative, size) and not is_own_object(relative) and not inside_nested(relative)
    )


def find_strays(objects: Mapping[str, int], referenced: Collection[str]) -> dict[str, int]:
    """The strays among a checkpoint's objects: shard objects its metadata does not reference.

    Args:
        objects: every object under the checkpoint, by path relative to it, with its size.
        referenced: the relative paths the checkpoint's ``.metadata`` records.

    A sub-prefix holding its own ``.metadata`` or ``.s3dcp-saving`` is
    another checkpoint (finished or being saved): nothing inside it is a
    stray of this one. Only DCP-shard-named objects can be strays; anything
    else stored beside a checkpoint is the user's, and s3dcp's own
    ``.s3dcp-*`` objects are bookkeeping, not strays. An empty shard object
    is part of the layout, not a stray: DCP writes one for each rank or
    writer thread with nothing to store, and the metadata never references
    it (see :func:`is_empty_shard`).
    """
    inside_nested = _nested_checkpoints(objects)
    return {
        relative: size
        for relative, size in objects.items()
        if is_shard_name(relative)
        and not is_empty_shard(relative, size)
        and relative not in referenced
        and not is_own_object(relative)
        and not inside_nested(relative)
    }


_STEP = re.compile(r"^step_(\d+)$")


def parse_step(path: str) -> int | None:
    """N of the last ``step_N`` part of ``path`` (``run/step_10`` -> 10), or ``None``."""
    for part in reversed(path.strip("/").split("/")):
        match = _STEP.match(part)
        if match:
            return int(match.group(1))
    return None
