"""Errors that s3dcp raises on purpose.

Every error below derives from :class:`S3DCPError`, so ``except S3DCPError``
catches all of them. Where a built-in exception means the same thing it is a
second base, so ``except FileNotFoundError`` works too::

    S3DCPError (Exception)
    ├── CheckpointNotFoundError   (+ FileNotFoundError)  no .metadata at the path: nothing was saved there
    ├── CheckpointExistsError     (+ FileExistsError)    save over a complete checkpoint
    ├── CheckpointDamagedError                           committed, but objects missing, short or unreadable
    │                                                    (never a reason to start from scratch)
    ├── ChecksumMismatchError                            stored bytes differ from what was saved
    ├── UnsafeCheckpointError                            metadata that would run code or escape
    ├── SharedReadError                                  another rank failed to read items it shares with this one
    ├── UploadFailedError                                a tiered checkpoint's copy to S3 failed
    └── S3RequestError                                   an S3 request failed for good
        ├── BucketNotFoundError   (+ FileNotFoundError)
        ├── ObjectNotFoundError   (+ FileNotFoundError)    no such key
        ├── AccessDeniedError     (+ PermissionError)    403, bad keys, bad signature
        ├── CredentialsError                             no credentials could be found
        ├── WrongRegionError                             bucket lives in another region
        └── EndpointError         (+ ConnectionError)    the endpoint cannot be reached, or is not S3

Messages name the bucket and key involved and say what to check; they never
contain credentials. The original botocore error, when there is one, is kept
as ``__cause__``.

When DCP runs a save or load it wraps errors in its own
``CheckpointException``; :func:`find_s3dcp_error` digs ours back out.
"""

from __future__ import annotations

from typing import Any

__all__ = [
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
]


class S3DCPError(Exception):
    """Base of every error s3dcp raises on purpose.

    Attributes:
        bucket: the bucket involved, if any.
        key: the object key involved, if any.
    """

    def __init__(self, message: str, *, bucket: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.key = key


class CheckpointNotFoundError(S3DCPError, FileNotFoundError):
    """The path holds no complete checkpoint (its ``.metadata`` is missing)."""


class CheckpointExistsError(S3DCPError, FileExistsError):
    """A complete checkpoint already exists and ``overwrite`` was not set."""


class CheckpointDamagedError(S3DCPError):
    """A committed checkpoint (its ``.metadata`` exists) that cannot be loaded as saved.

    Objects its metadata lists are missing or shorter than recorded, or the
    ``.metadata`` itself does not unpickle. Unlike
    :class:`CheckpointNotFoundError` this is never a reason to start from
    scratch: the checkpoint was written, and its data is gone or broken.
    Restore the objects, or load an older checkpoint on purpose.
    """


class ChecksumMismatchError(S3DCPError):
    """An item's bytes in S3 do not match the digest recorded when it was saved.

    Attributes:
        item: the state-dict key (fully qualified name) of the item.
    """

    def __init__(
        self,
        message: str,
        *,
        bucket: str | None = None,
        key: str | None = None,
        item: str | None = None,
    ) -> None:
        super().__init__(message, bucket=bucket, key=key)
        self.item = item


class UnsafeCheckpointError(S3DCPError):
    """Checkpoint metadata that would run code or point outside the checkpoint.

    Raised for metadata that names classes or callables outside the allow-list,
    or object paths that leave the checkpoint. Metadata that merely does not
    unpickle is :class:`CheckpointDamagedError`.
    """


class SharedReadError(S3DCPError):
    """Another rank could not read stored items it reads for this one too (shared reads), so this load fails.

    The message names that rank and its error; that rank raises the error itself.
    """


class UploadFailedError(S3DCPError):
    """Copying a tiered checkpoint to S3 failed after every attempt; its local copy is intact."""


class S3RequestError(S3DCPError):
    """An S3 request failed and will not succeed by retrying.

    Attributes:
        code: the S3 error code (``"NoSuchKey"``, ``"AccessDenied"``, ...) or
            the HTTP status as text, or ``None`` for client-side failures.
        attempts: how many times the request was sent before giving up.
    """

    def __init__(
        self,
        message: str,
        *,
        bucket: str | None = None,
        key: str | None = None,
        code: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message, bucket=bucket, key=key)
        self.code = code
        self.attempts = attempts


class BucketNotFoundError(S3RequestError, FileNotFoundError):
    """The bucket does not exist (or not at this endpoint)."""


class ObjectNotFoundError(S3RequestError, FileNotFoundError):
    """The object does not exist (a HEAD cannot tell a missing bucket apart)."""


class AccessDeniedError(S3RequestError, PermissionError):
    """The credentials were refused or lack permission for this request."""


class CredentialsError(S3RequestError):
    """No usable credentials were found in the standard AWS chain."""


class WrongRegionError(S3RequestError):
    """The bucket lives in another region than the client was set up for."""


class EndpointError(S3RequestError, ConnectionError):
    """The S3 endpoint could not be reached, or what answers there is not S3.

    A web server or proxy answering in the store's place (an HTML page, a 404
    without an S3 error document) is reported as this, never as a missing
    object or checkpoint: its "not found" says nothing about the checkpoint.
    """


def find_s3dcp_error(error: BaseException) -> S3DCPError | None:
    """Return the s3dcp error behind ``error``, or ``None``.

    DCP re-raises failures as ``CheckpointException`` whose ``failures``
    maps each failed rank to ``(exception, traceback)``. This looks there,
    then along ``__cause__``/``__context__``, and returns the first
    :class:`S3DCPError` found (lowest rank first). A :class:`SharedReadError`
    (this rank failed because another did) comes last: the other rank's
    error, the cause, is returned if it is there.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    echo: SharedReadError | None = None
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, SharedReadError):
            echo = echo or current
        elif isinstance(current, S3DCPError):
            return current
        failures: Any = getattr(current, "failures", None)
        if isinstance(failures, dict):
            for rank in sorted(failures):
                wrapped = failures[rank]
                inner = wrapped[0] if isinstance(wrapped, tuple) else wrapped
                if isinstance(inner, BaseException):
                    todo.append(inner)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
    return echo
