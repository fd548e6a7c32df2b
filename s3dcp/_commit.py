"""The records of a save: the saving marker first, ``.metadata`` last, never over a rival's.

Before any shard of a save is written, the coordinator stores
``.s3dcp-saving`` (the save id and its UTC start time) under the checkpoint,
so a save that dies half-way is recognisable as an unfinished checkpoint
even before its first shard lands. After the commit the marker is removed.

A checkpoint exists once its ``.metadata`` does. After the commit the
coordinator lists the checkpoint and removes, with the marker, the shard
objects that earlier saves to the same path left and the new ``.metadata``
does not reference (see :func:`tidy_after_commit`). Without ``overwrite`` the
PUT is create-only (``If-None-Match: *``), so of two jobs racing for one
path at most one commits; the other gets :class:`CheckpointExistsError`.

Two things make that less simple than it sounds:

* A retried PUT whose first attempt did land (only the answer was lost)
  meets its own object and gets 412. The stored bytes are then read back:
  if they are ours, the commit succeeded.
* Some S3-compatible stores do not implement conditional writes and answer
  501 ``NotImplemented``; then the commit falls back to a plain PUT, with a
  warning, and the existence check made before the save is the only guard.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Set
from concurrent.futures import Future
from datetime import datetime, timezone

from s3dcp._errors import CheckpointExistsError, ObjectNotFoundError, S3DCPError, S3RequestError
from s3dcp._format.layout import METADATA_NAME, SAVING_MARKER, find_strays
from s3dcp._interrupts import leave_signals_to_main_thread, result_of
from s3dcp._s3.client import S3Client
from s3dcp._s3.objects import delete_keys, list_pages, object_exists, put_object, read_object
from s3dcp._uri import S3Uri

__all__ = [
    "SaveStart",
    "refuse_complete",
    "uncommit",
    "commit_metadata",
    "put_saving_marker",
    "saving_marker_body",
    "tidy_after_commit",
    "CONFLICT_CODES",
    "UNSUPPORTED_CODES",
]

log = logging.getLogger("s3dcp")

CONFLICT_CODES = frozenset({"PreconditionFailed", "412"})
UNSUPPORTED_CODES = frozenset({"NotImplemented", "501"})


def refuse_complete(client: S3Client, uri: S3Uri, *, overwrite: bool, advice: str) -> bool:
    """Whether ``uri`` holds a complete checkpoint; unless ``overwrite``, refuse to write over one.

    Raises:
        CheckpointExistsError: there is one and ``overwrite`` is not set; the
            message ends with ``advice`` (what the caller should do instead).
    """
    key = uri.key(METADATA_NAME)
    exists = object_exists(client, uri.bucket, key)
    if exists and not overwrite:
        raise CheckpointExistsError(f"{uri} already holds a complete checkpoint; {advice}", bucket=uri.bucket, key=key)
    return exists


def uncommit(client: S3Client, uri: S3Uri) -> None:
    """Delete ``uri/.metadata`` before replacing what it references.

    Without it, a crash half-way through overwriting a checkpoint would leave
    the old ``.metadata`` describing a mix of old and new objects.
    """
    client.call("delete_object", uri.bucket, uri.key(METADATA_NAME))


class SaveStart:
    """The coordinator's steps before any shard of a save is written, in order.

    :meth:`begin` (DCP's ``prepare_local_plan``) refuses a complete checkpoint
    in the way unless overwriting, then stores the saving marker on a daemon
    thread while the ranks' plans are gathered. :meth:`ready` (``prepare_global_plan``)
    waits for the marker and, when overwriting, un-commits the old checkpoint.
    """

    def __init__(self, client: S3Client, uri: S3Uri, save_id: str, *, overwrite: bool) -> None:
        self._client, self._uri, self._save_id, self._overwrite = client, uri, save_id, overwrite
        self._existing = False
        self._marker: Future[None] | None = None

    def begin(self) -> None:
        advice = "save to a new path or pass overwrite=True to replace it"
        self._existing = refuse_complete(self._client, self._uri, overwrite=self._overwrite, advice=advice)
        self._marker = _in_background(lambda: put_saving_marker(self._client, self._uri, self._save_id))

    def ready(self) -> None:
        marker, self._marker = self._marker, None
        if marker is None:  # begin() was not run (the writer was not driven by dcp.save)
            put_saving_marker(self._client, self._uri, self._save_id)
        else:
            result_of(marker)
        if self._existing:
            uncommit(self._client, self._uri)


def _in_background(work: Callable[[], None]) -> Future[None]:
    """Run ``work`` on a daemon thread (a failed plan must not keep the process alive for it)."""
    future: Future[None] = Future()

    def run() -> None:
        leave_signals_to_main_thread()
        try:
            work()
        except BaseException as error:  # handed to whoever waits for the result
            future.set_exception(error)
        else:
            future.set_result(None)

    threading.Thread(target=run, name="s3dcp-marker", daemon=True).start()
    return future


def saving_marker_body(save_id: str, started: datetime) -> bytes:
    """The marker's bytes: small JSON that tells a person which save left it, and when."""
    when = started.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"save_id": save_id, "started": when}).encode() + b"\n"


def put_saving_marker(client: S3Client, uri: S3Uri, save_id: str) -> None:
    """Store ``uri/.s3dcp-saving``: a save has started here and has not committed yet."""
    body = saving_marker_body(save_id, datetime.now(timezone.utc))
    put_object(client, uri.bucket, uri.key(SAVING_MARKER), body, ContentType="application/json")


def commit_metadata(client: S3Client, bucket: str, key: str, body: bytes, *, exclusive: bool) -> None:
    """Store ``body`` as the commit record ``s3://bucket/key``.

    Args:
        exclusive: refuse to replace an existing object (create-only PUT).

    Raises:
        CheckpointExistsError: ``exclusive`` and another save committed first.
    """
    if not exclusive:
        put_object(client, bucket, key, body)
        return
    try:
        put_object(client, bucket, key, body, IfNoneMatch="*")
    except S3RequestError as err:
        if err.code in UNSUPPORTED_CODES:
            log.warning(
                "s3://%s/%s: the store does not support create-only PUTs (%s); committing with "
                "a plain PUT, so a concurrent save to the same path is not detected",
                bucket,
                key,
                err.code,
            )
            put_object(client, bucket, key, body)
            return
        if err.code not in CONFLICT_CODES:
            raise
        if _stored_body_is(client, bucket, key, body):
            return  # an earlier attempt of ours landed; only its answer was lost
        raise CheckpointExistsError(
            f"s3://{bucket}/{key} was committed by another save while this one was running; "
            "this save's shard objects may have replaced some of that checkpoint's. Give each "
            "job its own checkpoint path",
            bucket=bucket,
            key=key,
        ) from err


def _stored_body_is(client: S3Client, bucket: str, key: str, body: bytes) -> bool:
    try:
        return read_object(client, bucket, key) == body
    except ObjectNotFoundError:
        return False


def _objects_under(client: S3Client, uri: S3Uri) -> dict[str, int]:
    head = f"{uri.prefix}/" if uri.prefix else ""
    return {
        entry["Key"][len(head) :]: int(entry.get("Size", 0))
        for page in list_pages(client, uri.bucket, head)
        for entry in page.get("Contents", [])
    }


def tidy_after_commit(client: S3Client, uri: S3Uri, referenced: Set[str]) -> dict[str, int]:
    """Remove the save marker and the strays earlier saves left; return the strays removed.

    Runs after ``.metadata`` is committed, so the checkpoint is complete and
    loadable throughout: only objects the new metadata does not reference
    are deleted (see :func:`~s3dcp._format.layout.find_strays`), never ``.metadata``.

    A failure here does not raise. The save the caller asked for has been
    committed, and reporting it as failed would make a training job retry
    or give up on a good checkpoint; what is lost is only storage. So a
    failed listing or delete is logged as a WARNING that names how many
    objects and bytes stayed, one of their keys, and that the next save to
    the same path removes them (or delete them by hand).

    A checkpoint at a bucket's root is not searched for strays: the whole
    bucket lies below it, and an unfinished save of another run (one that
    left no marker) would look like this checkpoint's leftovers.
    """
    marker = uri.key(SAVING_MARKER)
    try:
        strays = find_strays(_objects_under(client, uri), referenced) if uri.prefix else {}
    except S3DCPError as error:
        log.warning(
            "%s is committed, but listing it to remove shard objects that earlier saves left failed: %s. "
            "Any such objects stay and are billed as storage; the next save to this path removes them",
            uri,
            error,
        )
        strays = {}
    try:
        if strays:
            delete_keys(client, uri.bucket, [uri.key(relative) for relative in sorted(strays)] + [marker])
        else:
            client.call("delete_object", uri.bucket, marker)  # the usual case: one DELETE
    except S3DCPError as error:
        if strays:
            log.warning(
                "%s is committed, but %d shard objects (%d bytes) that earlier saves left there and the new "
                "checkpoint does not use could not all be removed: %s. They are billed as storage; the next "
                "save to this path removes them, or delete them yourself (e.g. s3://%s/%s)",
                uri,
                len(strays),
                sum(strays.values()),
                error,
                uri.bucket,
                uri.key(min(strays)),
            )
        else:
            log.warning(
                "%s is committed, but its save marker s3://%s/%s could not be removed: %s. The checkpoint is "
                "complete all the same; the next save to this path removes the marker, or delete it yourself",
                uri,
                uri.bucket,
                marker,
                error,
            )
        return {}
    if strays:
        log.info(
            "%s: removed %d shard objects (%d bytes) that earlier saves left and the new checkpoint does not use",
            uri,
            len(strays),
            sum(strays.values()),
        )
    return strays
