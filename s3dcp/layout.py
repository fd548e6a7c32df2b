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

__all__ = [
    "METADATA_NAME",
    "SHARD_SUFFIX",
    "OWN_PREFIX",
    "SAVING_MARKER",
    "UPLOAD_MARKERS",
    "is_shard_name",
    "is_own_object",
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


def is_own_object(relative: str) -> bool:
    """True if ``relative`` (a path inside a checkpoint) is one of s3dcp's bookkeeping objects."""
    return relative.startswith(OWN_PREFIX)
