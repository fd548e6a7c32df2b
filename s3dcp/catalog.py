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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .layout import METADATA_NAME, SHARD_SUFFIX
from .client import S3Client
from .config import S3ClientConfig, resolve_settings
from .download import object_exists
from .errors import CheckpointNotFoundError, S3RequestError
from .uri import S3Uri, parse_s3_uri

__all__ = [
    "CheckpointInfo",
    "AbandonedUpload",
    "list_checkpoints",
    "latest_checkpoint",
    "delete_checkpoint",
    "prune",
    "gc",
    "parse_step",
    "list_pages",
    "delete_keys",
]

_STEP = re.compile(r"^step_(\d+)$")
_LISTING_THREADS = 8
_DELETE_BATCH = 1000  # keys per DeleteObjects request, S3's maximum
DEFAULT_GRACE = timedelta(hours=6)
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


def list_pages(client: S3Client, bucket: str, prefix: str, **params: Any) -> Iterator[dict[str, Any]]:
    """Every ListObjectsV2 page under ``prefix`` (each request retried on its own)."""
    token: str | None = None
    while True:
        request = dict(params, Prefix=prefix)
        if token:
            request["ContinuationToken"] = token
        page: dict[str, Any] = client.call("list_objects_v2", bucket, **request)
        yield page
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def _child_prefixes(client: S3Client, base: S3Uri) -> list[str]:
    """The sub-prefixes directly under ``base``, as full keys ending in ``/``."""
    head = f"{base.prefix}/" if base.prefix else ""
    return [
        entry["Prefix"]
        for page in list_pages(client, base.bucket, head, Delimiter="/")
        for entry in page.get("CommonPrefixes", [])
    ]


def _describe(client: S3Client, bucket: str, prefix: str) -> CheckpointInfo | None:
    """Sum up the objects under ``prefix`` (ending in ``/``); ``None`` if it holds no checkpoint."""
    size = count = 0
    newest: datetime | None = None
    complete = has_shards = False
    for page in list_pages(client, bucket, prefix):
        for entry in page.get("Contents", []):
            key = entry["Key"]
            size += entry["Size"]
            count += 1
            newest = entry["LastModified"] if newest is None else max(newest, entry["LastModified"])
            complete = complete or key == prefix + METADATA_NAME
            has_shards = has_shards or key.endswith(SHARD_SUFFIX)
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


def _keys_under(client: S3Client, bucket: str, prefix: str) -> list[str]:
    return [entry["Key"] for page in list_pages(client, bucket, prefix) for entry in page.get("Contents", [])]


def delete_keys(client: S3Client, bucket: str, keys: list[str]) -> None:
    """Delete ``keys`` with batched DeleteObjects; raise if S3 refused any."""
    for start in range(0, len(keys), _DELETE_BATCH):
        batch = keys[start : start + _DELETE_BATCH]
        answer = client.call(
            "delete_objects", bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
        )
        refused = answer.get("Errors", [])
        if refused:
            first = refused[0]
            raise S3RequestError(
                f"S3 refused to delete {len(refused)} of {len(batch)} objects in s3://{bucket}, e.g. "
                f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip(),
                bucket=bucket,
                key=first.get("Key"),
                code=first.get("Code"),
            )


def _remove(client: S3Client, uri: S3Uri) -> int:
    """Delete a checkpoint, ``.metadata`` first so it is never complete with shards missing."""
    head = f"{uri.prefix}/" if uri.prefix else ""
    keys = _keys_under(client, uri.bucket, head)
    metadata = head + METADATA_NAME
    if metadata in keys:
        delete_keys(client, uri.bucket, [metadata])
    delete_keys(client, uri.bucket, [key for key in keys if key != metadata])
    return len(keys)


def delete_checkpoint(
    uri: str | os.PathLike[str],
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> int:
    """Delete the checkpoint at ``uri`` (every object under it); return how many objects went.

    ``.metadata`` goes first, so a delete cut short leaves an incomplete
    checkpoint, never a complete-looking one with shards missing. Raises
    :class:`~s3dcp.errors.CheckpointNotFoundError` if nothing is there.
    """
    parsed = parse_s3_uri(uri)
    client = _client(region, s3client_config)
    removed = _remove(client, parsed)
    if removed == 0:
        raise CheckpointNotFoundError(
            f"{parsed} holds no objects; nothing to delete (check the path)",
            bucket=parsed.bucket,
            key=parsed.prefix,
        )
    return removed


def prune(
    base_uri: str | os.PathLike[str],
    keep: int,
    *,
    dry_run: bool = False,
    grace: timedelta = DEFAULT_GRACE,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> list[CheckpointInfo]:
    """Delete all but the newest ``keep`` complete checkpoints under ``base_uri``.

    Incomplete checkpoints (saves that died, or are still running) go too,
    but only once nothing in them changed for ``grace``, so a save in
    progress is never touched. The newest complete checkpoint always stays
    (``keep`` must be at least 1). Returns what was deleted, or with
    ``dry_run`` what would be, oldest first.
    """
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f"keep must be an int >= 1 (the newest complete checkpoint always stays), got {keep!r}")
    base = parse_s3_uri(base_uri)
    client = _client(region, s3client_config)
    found = list_checkpoints(base_uri, region=region, s3client_config=s3client_config)
    complete = [info for info in found if info.complete]
    kept = {info.uri for info in complete[-keep:]}
    settled_before = datetime.now(timezone.utc) - grace
    doomed = [
        info
        for info in found
        if info.uri not in kept
        and (info.complete or (info.last_modified is not None and info.last_modified < settled_before))
    ]
    if not dry_run:
        for info in doomed:
            _remove(client, S3Uri(base.bucket, parse_s3_uri(info.uri).prefix))
    return doomed


@dataclass(frozen=True)
class AbandonedUpload:
    """A multipart upload nobody completed: its parts are stored, and billed, until aborted."""

    key: str
    upload_id: str
    initiated: datetime


def gc(
    base_uri: str | os.PathLike[str],
    older_than: timedelta = DEFAULT_GRACE,
    *,
    dry_run: bool = False,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> list[AbandonedUpload]:
    """Abort multipart uploads under ``base_uri`` started more than ``older_than`` ago.

    A save killed mid-upload (SIGKILL, preemption) cannot abort its own
    uploads; their parts stay stored until aborted here (or by a bucket
    lifecycle rule). Younger uploads may belong to a save still running and
    are left alone. Returns what was (or, with ``dry_run``, would be) aborted.
    """
    base = parse_s3_uri(base_uri)
    client = _client(region, s3client_config)
    head = f"{base.prefix}/" if base.prefix else ""
    cutoff = datetime.now(timezone.utc) - older_than
    stale: list[AbandonedUpload] = []
    key_marker: str | None = None
    upload_marker: str | None = None
    while True:
        params: dict[str, Any] = {"Prefix": head}
        if key_marker:
            params.update(KeyMarker=key_marker, UploadIdMarker=upload_marker or "")
        page = client.call("list_multipart_uploads", base.bucket, **params)
        for upload in page.get("Uploads", []):
            if upload["Initiated"] < cutoff:
                stale.append(AbandonedUpload(upload["Key"], upload["UploadId"], upload["Initiated"]))
        if not page.get("IsTruncated"):
            break
        key_marker, upload_marker = page.get("NextKeyMarker"), page.get("NextUploadIdMarker")
    if not dry_run:
        for upload in stale:
            client.call("abort_multipart_upload", base.bucket, upload.key, UploadId=upload.upload_id)
    return stale
