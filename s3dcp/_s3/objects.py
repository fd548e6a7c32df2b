"""Whole-object requests: store, read, test, list and delete, each written once.

Every request goes through :class:`~s3dcp._s3.client.S3Client` (retries,
error translation). Streaming uploads are in :mod:`s3dcp._s3.upload`,
ranged reads into caller buffers in :mod:`s3dcp._s3.download`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import botocore.exceptions

from s3dcp._errors import ObjectNotFoundError, S3RequestError
from s3dcp._s3.client import S3Client
from s3dcp._s3.retry import TruncatedBodyError, error_code

__all__ = ["put_object", "read_object", "object_exists", "list_pages", "delete_keys", "DELETE_BATCH"]

DELETE_BATCH = 1000  # keys per DeleteObjects request, S3's maximum


def put_object(
    client: S3Client,
    bucket: str,
    key: str,
    body: bytes | bytearray,
    *,
    stop: threading.Event | None = None,
    **params: Any,
) -> str:
    """Store ``body`` under ``key`` in one request; return the ETag.

    ``stop``: once set, the request is not retried (see :meth:`S3Client.call_stoppable`).
    """
    response = client.call_stoppable(stop, "put_object", bucket, key, Body=body, **params)
    return str(response.get("ETag", ""))


def read_object(client: S3Client, bucket: str, key: str) -> bytes:
    """Fetch a whole (small) object, e.g. ``.metadata``, checking its length."""

    def attempt() -> bytes:
        response = client.raw.get_object(Bucket=bucket, Key=key)
        body: Any = response["Body"]
        try:
            data: bytes = body.read()
        finally:
            body.close()
        expected = response.get("ContentLength")
        if expected is not None and len(data) != expected:
            raise TruncatedBodyError(f"body of s3://{bucket}/{key} ended early")
        return data

    return client.run(attempt, "get_object", bucket, key)


def object_exists(client: S3Client, bucket: str, key: str) -> bool:
    """Whether ``key`` exists, by a one-byte GET.

    A GET (unlike HEAD) carries S3's error code, so a missing bucket or a
    wrong secret is reported as such instead of as a bare 404/403.
    """

    def attempt() -> bool:
        try:
            response = client.raw.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")
        except botocore.exceptions.ClientError as err:
            if error_code(err)[0] == "InvalidRange":  # exists, but is empty
                return True
            raise
        response["Body"].close()
        return True

    try:
        return client.run(attempt, "get_object", bucket, key)
    except ObjectNotFoundError:
        return False


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


def delete_keys(client: S3Client, bucket: str, keys: list[str]) -> None:
    """Delete ``keys`` with batched DeleteObjects; raise if S3 refused any."""
    for start in range(0, len(keys), DELETE_BATCH):
        batch = keys[start : start + DELETE_BATCH]
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
