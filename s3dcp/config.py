"""Client configuration as data, and resolution of the standard AWS settings.

:class:`S3ClientConfig` is what users pass. :class:`ClientSettings` is the
fully resolved, hashable snapshot (config + region + environment) that a
writer or reader takes when it is built or ``reset()``: the environment is
read then, not once per process, and the boto3 client cache is keyed on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit, urlunsplit

__all__ = ["S3ClientConfig", "ClientSettings", "resolve_settings", "MIB", "GIB"]

MIB = 1024**2
GIB = 1024**3

# S3's own limits on multipart uploads.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * GIB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024**4


@dataclass(frozen=True, kw_only=True)
class S3ClientConfig:
    """How s3dcp talks to S3. Every field has a default that works on AWS.

    Attributes:
        endpoint_url: S3 endpoint, e.g. ``"http://127.0.0.1:9000"`` for MinIO.
            Default ``None``: ``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL``,
            then AWS itself.
        profile: named profile from the AWS config files. Default ``None``:
            ``AWS_PROFILE``, then the default chain. An explicit profile wins
            over credentials in environment variables.
        force_path_style: address buckets as ``endpoint/bucket/key`` instead of
            ``bucket.endpoint/key``; most self-hosted stores need this.
            Default ``False`` (botocore decides).
        max_attempts: attempts per request, first one included, for throttling,
            5xx and broken connections. Default 10.
        connect_attempts: attempts when the endpoint cannot be reached at all,
            kept low so a wrong endpoint fails in about a second. Default 3.
        retry_initial_backoff: upper bound in seconds of the first jittered wait.
            Default 0.1.
        retry_max_backoff: upper bound in seconds of any single wait. Default 20.
        retry_deadline: seconds after which one request stops retrying,
            whatever attempts remain. Default 300.
        connect_timeout: seconds to open a connection. Default 5.
        read_timeout: seconds to wait for response bytes. Default 60.
        part_size: bytes per multipart-upload part; objects smaller than this
            go in one PUT. Default 16 MiB.
        max_concurrency: S3 requests in flight per writer or reader, which
            also bounds upload memory to about ``max_concurrency * part_size``.
            Default 8.
        coalesce_gap: when a load needs two byte ranges of one object at most
            this many bytes apart, fetch them in one GET. Default 256 KiB.
        max_read_size: largest span one coalesced GET may cover (a single item
            larger than this is still fetched whole). Default 16 MiB. Download
            buffers alive at once are bounded by ``max_concurrency * max_read_size``
            (or the largest item, if bigger).
    """

    endpoint_url: str | None = None
    profile: str | None = None
    force_path_style: bool = False
    max_attempts: int = 10
    connect_attempts: int = 3
    retry_initial_backoff: float = 0.1
    retry_max_backoff: float = 20.0
    retry_deadline: float = 300.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    part_size: int = 16 * MIB
    max_concurrency: int = 8
    coalesce_gap: int = 256 * 1024
    max_read_size: int = 16 * MIB

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            _validate_endpoint(self.endpoint_url)
        if self.profile is not None and not self.profile.strip():
            raise ValueError("profile must be a non-empty profile name or None")
        for name in ("max_attempts", "connect_attempts", "max_concurrency"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in (
            "retry_initial_backoff",
            "retry_max_backoff",
            "retry_deadline",
            "connect_timeout",
            "read_timeout",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        validate_part_size(self.part_size)
        if not isinstance(self.coalesce_gap, int) or self.coalesce_gap < 0:
            raise ValueError(f"coalesce_gap must be an int >= 0, got {self.coalesce_gap!r}")
        if not isinstance(self.max_read_size, int) or self.max_read_size < 1:
            raise ValueError(f"max_read_size must be an int >= 1, got {self.max_read_size!r}")


def validate_part_size(part_size: object) -> int:
    """Return ``part_size`` if S3 accepts it as a multipart part size."""
    if not isinstance(part_size, int) or isinstance(part_size, bool):
        raise TypeError(f"part_size must be an int number of bytes, got {part_size!r}")
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValueError(
            f"part_size must be between 5 MiB and 5 GiB (S3's limits), got {part_size} bytes"
        )
    return part_size


def _validate_endpoint(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"endpoint_url {redact_url(url)!r} must look like 'https://host[:port]'"
        )


def redact_url(url: str) -> str:
    """Drop any ``user:password@`` part so a URL can go into messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class ClientSettings:
    """Everything that decides which boto3 client to use, resolved once.

    Secrets are kept out of ``repr`` and compared by value, so two writers
    built under the same environment share one client per process.
    """

    config: S3ClientConfig
    region: str | None
    endpoint_url: str | None
    profile: str | None
    profile_is_explicit: bool
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    config_file: str | None = None
    credentials_file: str | None = None

    def describe_endpoint(self) -> str:
        """The endpoint for messages: never holds credentials."""
        if self.endpoint_url:
            return redact_url(self.endpoint_url)
        return f"AWS S3 ({self.region or 'default region'})"

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr
        )
        has_keys = self.access_key_id is not None
        return f"ClientSettings({shown}, env_credentials={has_keys})"


def resolve_settings(
    region: str | None,
    config: S3ClientConfig | None,
    environ: Mapping[str, str] | None = None,
) -> ClientSettings:
    """Snapshot config, region and the standard AWS environment variables.

    Order: explicit arguments, then ``AWS_*`` variables, then botocore's own
    chain (config files, instance metadata) when the client is created.
    """
    if region is not None and (not isinstance(region, str) or not region.strip()):
        raise ValueError(f"region must be a non-empty string or None, got {region!r}")
    if config is None:
        config = S3ClientConfig()
    elif not isinstance(config, S3ClientConfig):
        raise TypeError(
            f"s3client_config must be an S3ClientConfig, not {type(config).__name__}"
        )
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name)
        return value if value else None

    endpoint = config.endpoint_url
    if endpoint is None and (get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") or "").lower() != "true":
        endpoint = get("AWS_ENDPOINT_URL_S3") or get("AWS_ENDPOINT_URL")
        if endpoint is not None:
            _validate_endpoint(endpoint)
    profile_is_explicit = config.profile is not None
    profile = config.profile or get("AWS_PROFILE") or get("AWS_DEFAULT_PROFILE")
    access_key = secret_key = token = None
    if not profile_is_explicit and get("AWS_ACCESS_KEY_ID") and get("AWS_SECRET_ACCESS_KEY"):
        access_key = get("AWS_ACCESS_KEY_ID")
        secret_key = get("AWS_SECRET_ACCESS_KEY")
        token = get("AWS_SESSION_TOKEN") or get("AWS_SECURITY_TOKEN")
    return ClientSettings(
        config=config,
        region=region or get("AWS_REGION") or get("AWS_DEFAULT_REGION"),
        endpoint_url=endpoint,
        profile=profile,
        profile_is_explicit=profile_is_explicit,
        access_key_id=access_key,
        secret_access_key=secret_key,
        session_token=token,
        config_file=get("AWS_CONFIG_FILE"),
        credentials_file=get("AWS_SHARED_CREDENTIALS_FILE"),
    )
