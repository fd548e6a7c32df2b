"""What checkpoints a run has: list them, find the newest complete one.

A run keeps its checkpoints side by side under one base prefix, one per
sub-prefix (``run-7/step_100``, ``run-7/step_200``, ...). A checkpoint is
complete when its ``.metadata`` exists (the writer puts it there last), so a
save that died half-way is listed as incomplete and never returned by
:func:`latest_checkpoint`.

Listing uses ListObjectsV2 with a ``/`` delimiter to find the sub-prefixes
(one request per 1,000), then one paginated listing per checkpoint, several
in parallel. :func:`latest_checkpoint` needs far less: it sorts the
sub-prefixes by step and asks for ``.metadata`` from the newest down, so on
a run with thousands of checkpoints it usually costs two or three requests.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ._torch_compat import METADATA_NAME, SHARD_SUFFIX
from .client import S3Client
from .config import S3ClientConfig, resolve_settings
from .download import object_exists
from .uri import S3Uri, parse_s3_uri

__all__ = ["CheckpointInfo", "list_checkpoints", "latest_checkpoint", "parse_step"]

_STEP = re.compile(r"^step_(\d+)$")
_LISTING_THREADS = 8
_NEVER = datetime.min.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint under a base prefix.

    Attributes:
        uri: ``s3://bucket/prefix`` of the checkpoint.
        step: N of a ``step_N`` part of its path, or ``None``.
        complete: its ``.metadata`` exists.
        size_bytes: total bytes of its objects.
        num_objects: how many objects it holds.
        last_modified: the newest of its objects' modification times.
    """

    uri: str
    step: int | None
    complete: bool
    size_bytes: int
    num_objects: int
    last_modified: datetime | None


def parse_step(path: str) -> int | None:
    """N of the last ``step_N`` part of ``path`` (``run/step_10`` -> 10), or ``None``."""
    for part in reversed(path.strip("/").split("/")):
        match = _STEP.match(part)
        if match:
            return int(match.group(1))
    return None


def _client(region: str | None, s3client_config: S3ClientConfig | None) -> S3Client:
    return S3Client(resolve_settings(region, s3client_config))


def _child_prefixes(client: S3Client, base: S3Uri) -> list[str]:
    """The sub-prefixes directly under ``base``, as full keys ending in ``/``."""
    head = f"{base.prefix}/" if base.prefix else ""
    children: list[str] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"Prefix": head, "Delimiter": "/"}
        if token:
            params["ContinuationToken"] = token
        page = client.call("list_objects_v2", base.bucket, **params)
        children.extend(entry["Prefix"] for entry in page.get("CommonPrefixes", []))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return children


def _describe(client: S3Client, bucket: str, prefix: str) -> CheckpointInfo | None:
    """Sum up the objects under ``prefix`` (ending in ``/``); ``None`` if it holds no checkpoint."""
    size = count = 0
    newest: datetime | None = None
    complete = has_shards = False
    token: str | None = None
    while True:
        params: dict[str, Any] = {"Prefix": prefix}
        if token:
            params["ContinuationToken"] = token
        page = client.call("list_objects_v2", bucket, **params)
        for entry in page.get("Contents", []):
            key = entry["Key"]
            size += entry["Size"]
            count += 1
            newest = entry["LastModified"] if newest is None else max(newest, entry["LastModified"])
            complete = complete or key == prefix + METADATA_NAME
            has_shards = has_shards or key.endswith(SHARD_SUFFIX)
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            break
    if not (complete or has_shards):
        return None  # something else lives here (logs, configs): not a checkpoint
    path = prefix.rstrip("/")
    return CheckpointInfo(f"s3://{bucket}/{path}", parse_step(path), complete, size, count, newest)


def _sort_key(info: CheckpointInfo) -> tuple[bool, int, datetime, str]:
    return (info.step is not None, info.step or 0, info.last_modified or _NEVER, info.uri)


def list_checkpoints(
    base_uri: str | os.PathLike[str],
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> list[CheckpointInfo]:
    """Every checkpoint directly under ``base_uri``, complete or not, oldest step first.

    A sub-prefix counts as a checkpoint if it holds a ``.metadata`` or any
    ``.distcp`` shard. Checkpoints without a ``step_N`` name come first,
    in modification order. ``step_10`` sorts after ``step_9``.
    """
    base = parse_s3_uri(base_uri)
    client = _client(region, s3client_config)
    children = _child_prefixes(client, base)
    with ThreadPoolExecutor(_LISTING_THREADS, thread_name_prefix="s3dcp-list") as pool:
        found = pool.map(lambda prefix: _describe(client, base.bucket, prefix), children)
        return sorted((info for info in found if info is not None), key=_sort_key)


def latest_checkpoint(
    base_uri: str | os.PathLike[str],
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> str | None:
    """The ``s3://`` URI of the newest complete checkpoint under ``base_uri``, or ``None``.

    Newest means highest ``step_N``; when no stepped checkpoint is complete,
    the complete one written last. Incomplete saves are never returned.
    """
    base = parse_s3_uri(base_uri)
    client = _client(region, s3client_config)
    children = _child_prefixes(client, base)
    stepped = sorted(
        ((step, prefix) for prefix in children if (step := parse_step(prefix)) is not None), reverse=True
    )
    for _, prefix in stepped:
        if object_exists(client, base.bucket, prefix + METADATA_NAME):
            return f"s3://{base.bucket}/{prefix.rstrip('/')}"
    unstepped = [prefix for prefix in children if parse_step(prefix) is None]
    complete: list[CheckpointInfo] = []
    for prefix in unstepped:
        info = _describe(client, base.bucket, prefix)
        if info is not None and info.complete:
            complete.append(info)
    if not complete:
        return None
    return max(complete, key=lambda info: (info.last_modified or _NEVER, info.uri)).uri
