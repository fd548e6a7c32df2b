"""Parse and validate ``s3://bucket/prefix`` URIs and join object keys.

Validation happens here, once, so a typo fails at construction with a message
that says what is wrong instead of as a 400 from S3 half-way through a save.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

__all__ = ["S3Uri", "parse_s3_uri", "is_s3_uri", "validate_bucket_name"]

SCHEME = "s3://"
MAX_KEY_BYTES = 1024

_GENERAL_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# S3 Express One Zone directory buckets: base-name--zone-id--x-s3
_DIRECTORY_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]*--[a-z0-9]+-[a-z0-9]+--x-s3")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--table-s3", "--x-s3")


@dataclass(frozen=True)
class S3Uri:
    """A bucket and a key prefix with no leading or trailing slash."""

    bucket: str
    prefix: str

    def key(self, relative: str) -> str:
        """Return the full object key of ``relative`` under this prefix."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def relative(self, key: str) -> str:
        """Return ``key`` relative to this prefix (inverse of :meth:`key`)."""
        if not self.prefix:
            return key
        head = self.prefix + "/"
        if not key.startswith(head):
            raise ValueError(f"key {key!r} is not under {self}")
        return key[len(head) :]

    def child(self, relative: str) -> S3Uri:
        """Return the URI of a sub-prefix, e.g. ``run/step_10`` under ``run``."""
        return S3Uri(self.bucket, self.key(relative.strip("/")))

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


def is_s3_uri(value: object) -> bool:
    """True if ``value`` is a string (or path-like) that parses as an s3 URI."""
    try:
        parse_s3_uri(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False
    return True


def parse_s3_uri(uri: str | os.PathLike[str]) -> S3Uri:
    """Parse ``s3://bucket[/prefix]`` into an :class:`S3Uri`.

    Raises:
        TypeError: ``uri`` is not a string or path-like object.
        ValueError: the URI or bucket name is malformed; the message says how.
    """
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise TypeError(f"an s3:// URI must be a str, not {type(uri).__name__}")
    if not uri.startswith(SCHEME):
        raise ValueError(
            f"{uri!r} is not an S3 URI: expected 's3://bucket/prefix' "
            "(for a local directory use torch's FileSystemWriter/Reader)"
        )
    rest = uri[len(SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket: expected 's3://bucket/prefix'")
    validate_bucket_name(bucket)
    prefix = prefix.rstrip("/")
    if prefix:
        _validate_prefix(uri, prefix)
    return S3Uri(bucket, prefix)


def validate_bucket_name(bucket: str) -> None:
    """Raise ``ValueError`` unless ``bucket`` follows S3's bucket naming rules."""
    problem = _bucket_name_problem(bucket)
    if problem:
        raise ValueError(
            f"invalid S3 bucket name {bucket!r}: {problem} (bucket names are 3-63 "
            "characters of lowercase letters, digits, '.' and '-', starting and ending "
            "with a letter or digit)"
        )


def _bucket_name_problem(bucket: str) -> str | None:
    if _DIRECTORY_BUCKET.fullmatch(bucket) and len(bucket) <= 63:
        return None
    if not 3 <= len(bucket) <= 63:
        return f"it is {len(bucket)} characters long"
    if not _GENERAL_BUCKET.fullmatch(bucket):
        return "it contains characters that are not allowed or starts/ends badly"
    if ".." in bucket:
        return "it contains '..'"
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        pass
    else:
        return "it looks like an IP address"
    if bucket.startswith(_RESERVED_PREFIXES):
        return "it starts with a reserved prefix"
    if bucket.endswith(_RESERVED_SUFFIXES):
        return "it ends with a reserved suffix"
    return None


def _validate_prefix(uri: str, prefix: str) -> None:
    parts = prefix.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(
            f"{uri!r} has an empty, '.' or '..' path segment; use a plain path like 's3://bucket/run-7/step_100'"
        )
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in prefix):
        raise ValueError(f"{uri!r} contains control characters")
    # leave room for the longest object name a checkpoint adds below the prefix
    if len(prefix.encode("utf-8")) > MAX_KEY_BYTES - 128:
        raise ValueError(f"{uri!r} is too long: S3 keys are at most {MAX_KEY_BYTES} bytes")
