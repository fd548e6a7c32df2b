"""Client configuration as data, and resolution of the standard AWS settings.

:class:`S3ClientConfig` is what users pass. :class:`ClientSettings` is the
fully resolved, hashable snapshot (config + region + environment) that a
writer or reader takes when it is built or ``reset()``: the environment is
read then, not once per process, and the botocore client cache is keyed on it.
"""

from __future__ import annotations

import os
import re
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

UPLOAD_CHECKSUMS = ("crc32", "sha1", "sha256", "md5", None)
SERVER_SIDE_ENCRYPTIONS = ("AES256", "aws:kms", "aws:kms:dsse")
KMS_ENCRYPTIONS = ("aws:kms", "aws:kms:dsse")
# Objects in these classes must be restored before a GET, so a checkpoint
# written there could not be loaded.
ARCHIVE_STORAGE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
_STORAGE_CLASS = re.compile(r"[A-Z0-9_]+")
_ACCOUNT_ID = re.compile(r"[0-9]{12}")


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
        retry_warning_after: once one request has been retrying for this
            many seconds, a WARNING on the ``s3dcp`` logger says so (once per
            request; an INFO line follows if it then succeeds). ``0`` warns at
            the first retry. Default 5.
        connect_timeout: seconds to open a connection, and the budget of
            each piece of a request body while it is sent: bodies go to the
            socket in pieces of ``connect_timeout`` x 64 KiB/s (64 KiB to
            64 MiB), so a send is given up, and retried, only when the
            connection moves less than about 64 KiB/s for this long. A
            part that takes longer than this to cross a slow link is fine.
            Default 5.
        read_timeout: seconds to wait for response bytes: for an answer to
            begin once a request is sent, and for each read of a body, so a
            download that stops arriving is retried after this long (from
            the bytes still missing). Default 60.
        part_size: bytes per multipart-upload part; objects smaller than this
            go in one PUT. Default 16 MiB.
        max_concurrency: S3 requests in flight per writer or reader. S3 answers
            each request after 10-30 ms and one connection carries roughly
            80-100 MB/s, so filling a fast link takes many requests at once.
            Upload memory stays within about
            ``(max_concurrency + thread_count) * part_size`` (parts on the wire,
            plus one being filled per shard object; parts sent straight from a
            tensor's memory need none). Default 32.
        initial_concurrency: requests in flight a save or load starts with.
            After one round at this level (as many requests as the level) a
            transfer tries 4 times as many, up to ``max_concurrency``, and
            keeps them only if that round moves at least 1.3 times the bytes
            per second: a distant store needs many requests at once, while
            one bound by CPU (often one on the same machine) gains nothing
            from them and the transfer goes back. A store that throttles
            (503 SlowDown) halves it. The level a transfer settles on is
            where the process's next one in that direction to that endpoint
            starts (a job's next checkpoint skips the round). Set it to
            ``max_concurrency`` for a fixed number. Default 16: on a link
            bound per connection the first round is where a first save
            falls behind, and a store bound by CPU costs no more at 16 than
            at 8 (measured, ``benchmarks/results/wan.md``).
        coalesce_gap: when a load needs two byte ranges of one object at most
            this many bytes apart, fetch them in one GET. Default 256 KiB.
        max_read_size: largest span one GET may cover. Items are coalesced
            into GETs of at most this size; a single item larger than this is
            fetched as consecutive ranged GETs of at most this size (but at
            least 1 MiB) in parallel, straight into the same destination, so
            one large tensor loads over several connections. Default 16 MiB.
            A store on the same machine, bound by CPU rather than by each
            connection, loads with less CPU in fewer, larger GETs (256 MiB
            measured 12% less there than before ranged pieces, 1 GiB 28%).
            Download buffers alive at once are bounded by
            ``max_concurrency * max_read_size`` (or the largest item, if bigger).
        server_side_encryption: how S3 encrypts the objects s3dcp writes:
            ``"AES256"`` (SSE-S3), ``"aws:kms"`` (SSE-KMS) or ``"aws:kms:dsse"``
            (dual-layer SSE-KMS). Default ``None``: the bucket's default.
        sse_kms_key_id: the KMS key (id, ARN or alias) for ``"aws:kms"`` or
            ``"aws:kms:dsse"``. Default ``None``: the AWS-managed ``aws/s3`` key
            (or the bucket's default key).
        storage_class: storage class of the objects s3dcp writes, e.g.
            ``"STANDARD_IA"``, ``"INTELLIGENT_TIERING"`` or a class your store
            defines (uppercase letters, digits, ``_``). ``"GLACIER"`` and
            ``"DEEP_ARCHIVE"`` are refused: their objects cannot be read without
            a restore. Default ``None``: the bucket's default (usually STANDARD).
        expected_bucket_owner: the 12-digit AWS account id that must own the
            bucket; S3 refuses every request (403) if another account owns it.
            Default ``None``: not checked.
        upload_checksum: the checksum sent with every PUT and part so the store
            can refuse bytes damaged on the way: ``"crc32"``, ``"sha1"`` or
            ``"sha256"`` (``x-amz-checksum-*`` headers, which AWS checks), ``"md5"``
            (``Content-MD5``, which older stores such as Ceph RGW 16 check instead),
            or ``None`` for none. Default ``"crc32"``, boto3's own default.
            Independent of the per-item digests verified on load.
        sign_payload: include a SHA-256 of each request body in its SigV4
            signature. Default ``None``: botocore's rule, which signs over plain
            HTTP and skips it over HTTPS when an upload checksum is sent (TLS plus
            the checksum already protect the bytes). ``False`` skips it over HTTP
            too, saving about 0.7 CPU seconds per GiB saved; do that only on a
            network you trust, since a checksum is no protection against
            deliberate tampering.
    """

    endpoint_url: str | None = None
    profile: str | None = None
    force_path_style: bool = False
    max_attempts: int = 10
    connect_attempts: int = 3
    retry_initial_backoff: float = 0.1
    retry_max_backoff: float = 20.0
    retry_deadline: float = 300.0
    retry_warning_after: float = 5.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    part_size: int = 16 * MIB
    max_concurrency: int = 32
    initial_concurrency: int = 16
    coalesce_gap: int = 256 * 1024
    max_read_size: int = 16 * MIB
    server_side_encryption: str | None = None
    sse_kms_key_id: str | None = None
    storage_class: str | None = None
    expected_bucket_owner: str | None = None
    upload_checksum: str | None = "crc32"
    sign_payload: bool | None = None

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            _validate_endpoint(self.endpoint_url)
        if self.profile is not None and not self.profile.strip():
            raise ValueError("profile must be a non-empty profile name or None")
        for name in ("max_attempts", "connect_attempts", "max_concurrency", "initial_concurrency"):
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
        warn = self.retry_warning_after
        if not isinstance(warn, (int, float)) or isinstance(warn, bool) or not 0 <= warn < float("inf"):
            raise ValueError(f"retry_warning_after must be a number of seconds >= 0, got {warn!r}")
        validate_part_size(self.part_size)
        if not isinstance(self.coalesce_gap, int) or self.coalesce_gap < 0:
            raise ValueError(f"coalesce_gap must be an int >= 0, got {self.coalesce_gap!r}")
        if not isinstance(self.max_read_size, int) or self.max_read_size < 1:
            raise ValueError(f"max_read_size must be an int >= 1, got {self.max_read_size!r}")
        self._validate_server_side()
        if self.sign_payload not in (None, True, False):
            raise ValueError(f"sign_payload must be True, False or None, got {self.sign_payload!r}")
        if self.upload_checksum not in UPLOAD_CHECKSUMS:
            allowed = ", ".join(repr(v) for v in UPLOAD_CHECKSUMS)
            raise ValueError(f"upload_checksum must be one of {allowed}, got {self.upload_checksum!r}")

    def _validate_server_side(self) -> None:
        sse = self.server_side_encryption
        if sse is not None and sse not in SERVER_SIDE_ENCRYPTIONS:
            allowed = ", ".join(repr(v) for v in SERVER_SIDE_ENCRYPTIONS)
            raise ValueError(f"server_side_encryption must be one of {allowed} or None, got {sse!r}")
        if self.sse_kms_key_id is not None:
            # Messages never echo the key id.
            if sse not in KMS_ENCRYPTIONS:
                raise ValueError(
                    "sse_kms_key_id is only used with KMS encryption: set "
                    'server_side_encryption="aws:kms" (or "aws:kms:dsse") as well, '
                    "or drop sse_kms_key_id"
                )
            if not isinstance(self.sse_kms_key_id, str) or not self.sse_kms_key_id.strip():
                raise ValueError(
                    "sse_kms_key_id must be a non-empty KMS key id, ARN or alias, or None for the AWS-managed key"
                )
        storage_class = self.storage_class
        if storage_class is not None:
            if not isinstance(storage_class, str) or not _STORAGE_CLASS.fullmatch(storage_class):
                raise ValueError(
                    "storage_class must be a storage class name of uppercase letters, digits "
                    f"and underscores such as 'STANDARD_IA', got {storage_class!r}"
                )
            if storage_class in ARCHIVE_STORAGE_CLASSES:
                raise ValueError(
                    f"storage_class {storage_class!r} is refused: objects in it cannot be read "
                    "back without a restore, so the checkpoint could not be loaded. Use "
                    "'GLACIER_IR' or 'STANDARD_IA' for cheaper storage that stays readable"
                )
        owner = self.expected_bucket_owner
        if owner is not None and (not isinstance(owner, str) or not _ACCOUNT_ID.fullmatch(owner)):
            raise ValueError(
                "expected_bucket_owner must be the bucket owner's 12-digit AWS account id "
                f"such as '123456789012', got {owner!r}"
            )


def validate_part_size(part_size: object) -> int:
    """Return ``part_size`` if S3 accepts it as a multipart part size."""
    if not isinstance(part_size, int) or isinstance(part_size, bool):
        raise TypeError(f"part_size must be an int number of bytes, got {part_size!r}")
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValueError(f"part_size must be between 5 MiB and 5 GiB (S3's limits), got {part_size} bytes")
    return part_size


def _validate_endpoint(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint_url {redact_url(url)!r} must look like 'https://host[:port]'")


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
    """Everything that decides which botocore client to use, resolved once.

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
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
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
        raise TypeError(f"s3client_config must be an S3ClientConfig, not {type(config).__name__}")
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
