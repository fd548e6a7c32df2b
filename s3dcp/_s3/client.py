"""botocore clients (lazy, once per process and settings) and error translation.

:class:`S3Client` is the one door to S3 for the rest of the package: every
request goes through :meth:`S3Client.call`, which retries by the
:class:`~s3dcp._s3.retry.RetryPolicy` and turns failures into s3dcp errors.
It pickles as its settings alone; the botocore client is created on first use
in each process, so writers survive ``pickle`` and ``fork``.

Every answer is checked to come from an S3 store at all (:func:`non_s3_answer`)
before botocore parses it: a web server's 404 page must not read as "no such
object", nor its HTML as an empty listing.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import botocore
import botocore.config
import botocore.exceptions
import botocore.session
import tenacity

from s3dcp._format import crc32
from s3dcp._compat import botocore as _botocore
from s3dcp._config import ClientSettings, S3ClientConfig
from s3dcp._errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CredentialsError,
    EndpointError,
    ObjectNotFoundError,
    S3DCPError,
    S3RequestError,
    WrongRegionError,
)
from s3dcp._s3.retry import (
    THROTTLING_STATUSES,
    TRANSIENT_STATUSES,
    FailureKind,
    RetryPolicy,
    TransferStopped,
    classify,
    error_code,
    is_untrusted_certificate,
)

__all__ = ["S3Client", "NotS3AnswerError", "translate_error", "non_s3_answer"]

log = logging.getLogger("s3dcp")

T = TypeVar("T")

ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "InvalidSecurity",
    }
)
WRONG_REGION_CODES = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)
_CREDENTIAL_TYPES: tuple[type[BaseException], ...] = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.ProfileNotFound,
)


class _ClientCache:
    """One botocore client per (process, settings); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[int, ClientSettings], Any] = {}

    def get(self, settings: ClientSettings) -> Any:
        key = (os.getpid(), settings)
        client = self._clients.get(key)
        if client is None:
            with self._lock:
                client = self._clients.get(key)
                if client is None:
                    client = _create_client(settings)
                    self._clients[key] = client
        return client


_CACHE = _ClientCache()


BOTOCORE_FLOOR = (1, 36, 0)  # the first with Config(request_checksum_calculation=...)


def _require_botocore_floor() -> None:
    """Refuse a botocore older than :data:`BOTOCORE_FLOOR`: every request would fail on a bare TypeError."""
    found = botocore.__version__
    try:
        version = tuple(int(part) for part in found.split(".")[:3])
    except ValueError:
        return  # a development build: the Config in _client_config decides
    if version < BOTOCORE_FLOOR:
        raise S3DCPError(_botocore_floor_message(found))


def _botocore_floor_message(found: str) -> str:
    major, minor, patch = BOTOCORE_FLOOR
    return (
        f"s3dcp needs botocore>={major}.{minor}.{patch}; this environment has {found}: "
        f"pip install -U 'botocore>={major}.{minor}'"
    )


def _create_client(settings: ClientSettings) -> Any:
    _require_botocore_floor()
    session = botocore.session.Session()
    if settings.config_file:
        session.set_config_variable("config_file", settings.config_file)
    if settings.credentials_file:
        session.set_config_variable("credentials_file", settings.credentials_file)
    if settings.profile and settings.access_key_id is None:
        session.set_config_variable("profile", settings.profile)
    config = settings.config
    client_config = _client_config(settings)
    client = session.create_client(
        "s3",
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        config=client_config,
    )
    _install_request_defaults(client, config)
    _botocore.admit_memoryview_bodies(client, BODY_OPERATIONS)
    client.meta.events.register("before-parse.s3", _refuse_non_s3_answer)
    return client


def _client_config(settings: ClientSettings) -> botocore.config.Config:
    config = settings.config
    try:
        return botocore.config.Config(
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max(10, 2 * config.max_concurrency),
            s3=_s3_options(settings),
            tcp_keepalive=True,
            # "when_required": botocore adds no checksum of its own; the hooks below add the chosen one
            request_checksum_calculation="when_required",
        )
    except TypeError as err:  # an option this botocore does not know: older than its version says
        raise S3DCPError(_botocore_floor_message(botocore.__version__)) from err


# Every S3 operation s3dcp sends; all of them accept ExpectedBucketOwner (not
# every S3 operation does, e.g. CreateBucket and ListBuckets, hence the list).
BUCKET_OPERATIONS = (
    "PutObject",
    "GetObject",
    "HeadObject",
    "DeleteObject",
    "DeleteObjects",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "ListObjectsV2",
    "ListMultipartUploads",
    "ListParts",
    "CopyObject",
)
# The operations that create objects, which take encryption and storage class.
CREATE_OPERATIONS = ("PutObject", "CreateMultipartUpload", "CopyObject")
# The operations that carry object bytes, which take an upload checksum.
BODY_OPERATIONS = ("PutObject", "UploadPart")


def _install_request_defaults(client: Any, config: S3ClientConfig) -> None:
    """Add the configured server-side options to the params of every request.

    Done with botocore events on the client, not at each call site, so that
    every request gets them, including raw ``client.raw.get_object(...)``
    calls elsewhere in the package, without each call site having to
    remember. A value the caller passed explicitly is kept.
    """
    owner: dict[str, str | None] = {"ExpectedBucketOwner": config.expected_bucket_owner}
    create: dict[str, str | None] = {
        "ServerSideEncryption": config.server_side_encryption,
        "SSEKMSKeyId": config.sse_kms_key_id,
        "StorageClass": config.storage_class,
    }
    for operation in BUCKET_OPERATIONS:
        wanted = {**owner, **create} if operation in CREATE_OPERATIONS else owner
        defaults = {name: value for name, value in wanted.items() if value is not None}
        if defaults:
            client.meta.events.register(
                f"before-parameter-build.s3.{operation}", _defaults_handler(defaults)
            )
    if config.upload_checksum == "md5":
        for operation in BODY_OPERATIONS:
            client.meta.events.register(f"before-parameter-build.s3.{operation}", _add_content_md5)
    elif config.upload_checksum is not None:
        # declared on CreateMultipartUpload too, so the parts' checksums are kept and checked
        algorithm = _defaults_handler({"ChecksumAlgorithm": config.upload_checksum.upper()})
        for operation in (*BODY_OPERATIONS, "CreateMultipartUpload"):
            client.meta.events.register(f"before-parameter-build.s3.{operation}", algorithm)
        # and the value itself as a header: left to botocore, an unsigned body over HTTPS
        # would go as aws-chunked with a trailing checksum, which stores such as Ceph RGW
        # refuse (411 MissingContentLength)
        value = _checksum_value_handler(config.upload_checksum)
        for operation in BODY_OPERATIONS:
            client.meta.events.register(f"before-parameter-build.s3.{operation}", value)


_CHECKSUMS: dict[str, Callable[[Any], bytes]] = {
    "crc32": lambda body: crc32.compute(body).to_bytes(4, "big"),
    "sha1": lambda body: hashlib.sha1(body).digest(),
    "sha256": lambda body: hashlib.sha256(body).digest(),
}


def _checksum_value_handler(algorithm: str) -> Callable[..., None]:
    """Set ``Checksum<ALGORITHM>`` from an in-memory body unless the caller computed it."""
    parameter = f"Checksum{algorithm.upper()}"
    compute = _CHECKSUMS[algorithm]

    def add_checksum_value(params: dict[str, Any], **kwargs: Any) -> None:
        body = params.get("Body")
        if isinstance(body, (bytes, bytearray, memoryview)) and parameter not in params:
            params[parameter] = base64.b64encode(compute(body)).decode("ascii")

    return add_checksum_value


def _add_content_md5(params: dict[str, Any], **kwargs: Any) -> None:
    """Set ``ContentMD5`` from an in-memory body (s3dcp's bodies always are)."""
    body = params.get("Body")
    if isinstance(body, (bytes, bytearray, memoryview)) and "ContentMD5" not in params:
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        params["ContentMD5"] = base64.b64encode(digest).decode("ascii")


def _defaults_handler(defaults: dict[str, str]) -> Callable[..., None]:
    """A ``before-parameter-build`` handler that fills in ``defaults``."""

    def add_defaults(params: dict[str, Any], **kwargs: Any) -> None:
        for name, value in defaults.items():
            params.setdefault(name, value)

    return add_defaults


def _s3_options(settings: ClientSettings) -> dict[str, Any]:
    config = settings.config
    options: dict[str, Any] = {"payload_signing_enabled": _signs_payload(settings)}
    if config.force_path_style:
        options["addressing_style"] = "path"
    return options


def _signs_payload(settings: ClientSettings) -> bool:
    """botocore's rule made explicit: skip the body's SHA-256 only over TLS with a checksum.

    Stated here rather than left to botocore because s3dcp sets the CRC32
    header itself, which botocore's own rule would not see.
    """
    config = settings.config
    if config.sign_payload is not None:
        return config.sign_payload
    https = settings.endpoint_url is None or settings.endpoint_url.startswith("https:")
    return not (https and config.upload_checksum is not None)


class S3Client:
    """Retrying, error-translating access to one S3 endpoint.

    Args:
        settings: the resolved settings (see :func:`s3dcp._config.resolve_settings`).
        sleep: how to wait between attempts; tests pass a fake. Default: real
            waits, which a request's ``stop`` event cuts short.
    """

    def __init__(self, settings: ClientSettings, sleep: Callable[[float], None] | None = None):
        self.settings = settings
        self.policy = RetryPolicy.from_config(settings.config)
        self._sleep = sleep

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"S3Client(endpoint={self.settings.describe_endpoint()!r})"

    @property
    def raw(self) -> Any:
        """The botocore S3 client for this process (created on first use)."""
        try:
            return _CACHE.get(self.settings)
        except _CREDENTIAL_TYPES as err:
            raise translate_error(err, "create client", None, None, self.settings) from err

    def call(self, operation: str, bucket: str, key: str | None = None, **params: Any) -> Any:
        """Run one S3 API call (``"put_object"``, ...) with retries.

        ``Bucket`` and ``Key`` are passed for you. Raises an
        :class:`~s3dcp._errors.S3DCPError` subclass on failure.
        """
        return self.call_stoppable(None, operation, bucket, key, **params)

    def call_stoppable(
        self, stop: threading.Event | None, operation: str, bucket: str, key: str | None = None, **params: Any
    ) -> Any:
        """:meth:`call`, but once ``stop`` is set no further attempt is made.

        A wait between attempts ends at once and
        :class:`~s3dcp._s3.retry.TransferStopped` is raised, so a save that is
        given up does not go on retrying in its transfer threads.
        """
        request = dict(params, Bucket=bucket)
        if key is not None:
            request["Key"] = key

        def attempt() -> Any:
            return getattr(self.raw, operation)(**request)

        return self.run(attempt, operation, bucket, key, stop=stop)

    def run(
        self,
        attempt: Callable[[], T],
        operation: str,
        bucket: str,
        key: str | None,
        *,
        stop: threading.Event | None = None,
    ) -> T:
        """Run ``attempt`` (which may make several raw calls) with retries; ``stop`` as for :meth:`call`."""

        report = _RetryReport(operation, bucket, key, self.settings)
        attempts = 0

        def counted() -> T:
            nonlocal attempts
            if stop is not None and stop.is_set():
                raise TransferStopped(
                    f"{operation} on s3://{bucket}/{key or ''} was not sent: its transfer was stopped",
                    bucket=bucket,
                    key=key,
                )
            attempts += 1
            return attempt()

        def sleep(seconds: float) -> None:
            if self._sleep is not None:
                self._sleep(seconds)
            elif stop is not None:
                stop.wait(seconds)  # ends early when the transfer stops
            else:
                time.sleep(seconds)

        try:
            result = self.policy.call(counted, sleep=sleep, on_retry=report.retrying)
        except S3DCPError:
            raise
        except Exception as err:
            raise translate_error(err, operation, bucket, key, self.settings, attempts) from err
        report.succeeded(attempts)
        return result


class _RetryReport:
    """What the logs say about one request's retries.

    Every retry is a DEBUG line. Once the request has been retrying for
    ``retry_warning_after`` seconds, one WARNING says which request, how
    many attempts, the last error and what to check, since a save that
    stalls on a throttling or unreachable store otherwise looks hung; if the
    request then succeeds, an INFO line says so. A request that hangs
    without failing is reported when its attempt times out (``read_timeout``).
    """

    def __init__(self, operation: str, bucket: str, key: str | None, settings: ClientSettings) -> None:
        self.operation = operation
        self.where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
        self.settings = settings
        self.started = time.monotonic()
        self.warned = False

    def retrying(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        attempts = state.attempt_number
        log.debug("retrying %s %s after attempt %d: %s", self.operation, self.where, attempts, _describe_failure(error))
        waited = time.monotonic() - self.started
        if self.warned or waited < self.settings.config.retry_warning_after:
            return
        self.warned = True
        config = self.settings.config
        log.warning(
            "%s %s has been retrying for %.1f s (%d attempt%s so far, last error: %s); it goes on for up to "
            "%d attempts or %.0f s. %s",
            self.operation,
            self.where,
            waited,
            attempts,
            "" if attempts == 1 else "s",
            _describe_failure(error),
            config.max_attempts,
            config.retry_deadline,
            self._what_to_check(error),
        )

    def succeeded(self, attempts: int) -> None:
        if self.warned:
            log.info(
                "%s %s succeeded after %d attempts (%.1f s)",
                self.operation,
                self.where,
                attempts,
                time.monotonic() - self.started,
            )

    def _what_to_check(self, error: BaseException | None) -> str:
        kind = classify(error) if error is not None else FailureKind.TRANSIENT
        endpoint = self.settings.describe_endpoint()
        if kind is FailureKind.THROTTLED:
            return (
                f"{endpoint} is throttling: spread shard objects over key prefixes "
                "(prefix_strategy=HexPrefixStrategy()) or lower max_concurrency"
            )
        if kind is FailureKind.TRANSIENT:
            return f"{endpoint} answers with server errors: check the store's health"
        return f"Check the endpoint ({endpoint}), that it is up, and the network between here and there"


def _describe_failure(error: BaseException | None) -> str:
    if error is None:
        return "no error"
    code, status = error_code(error)
    if code or status:
        return f"{code} (HTTP {status})"
    return type(error).__name__


def translate_error(
    error: BaseException,
    operation: str,
    bucket: str | None,
    key: str | None,
    settings: ClientSettings,
    attempts: int = 1,
) -> S3RequestError:
    """Turn a botocore/urllib3 failure into an s3dcp error with a useful message.

    The message names the object and endpoint and says what to check. It
    never includes credentials, and only includes the server's own message
    text for errors that are not about authentication.
    """
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}" if bucket else "S3"
    endpoint = settings.describe_endpoint()
    context: dict[str, Any] = {"bucket": bucket, "key": key, "attempts": attempts}
    if isinstance(error, _CREDENTIAL_TYPES):
        return CredentialsError(
            f"no usable AWS credentials for {operation} on {where} ({type(error).__name__}): "
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile with "
            "AWS_PROFILE or S3ClientConfig(profile=...), or run where an instance role "
            "is available",
            **context,
        )
    if is_untrusted_certificate(error):
        return EndpointError(
            f"{operation} on {where} failed: the TLS certificate of {endpoint} is not trusted "
            "(certificate verify failed). If the store uses a private CA, point AWS_CA_BUNDLE "
            "(or ca_bundle in the AWS profile) at that CA's certificate file",
            **context,
        )
    kind = classify(error)
    if kind is FailureKind.UNREACHABLE or (
        kind is FailureKind.CONNECTION and not isinstance(error, botocore.exceptions.ClientError)
    ):
        return EndpointError(
            f"{operation} on {where} failed: could not talk to {endpoint} "
            f"({type(error).__name__}, {attempts} attempt{'s' if attempts > 1 else ''}). "
            "Check endpoint_url / AWS_ENDPOINT_URL and that "
            "the server is up and reachable",
            **context,
        )
    if isinstance(error, NotS3AnswerError):
        return _endpoint_is_not_s3(operation, where, endpoint, error.status, error.content_type, error.problem,
                                   context)
    code, status = error_code(error)
    if not isinstance(error, botocore.exceptions.ClientError):
        return S3RequestError(
            f"{operation} on {where} failed at {endpoint}: {type(error).__name__}",
            **context,
        )
    response: dict[str, Any] = dict(error.response)
    error_info = response.get("Error", {})
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    code_text = code or str(status)
    # botocore makes the code up from the status when the body held no S3 error document
    problem = non_s3_answer(status or 0, headers, None if not code or code.isdigit() else True)
    server_side = status in THROTTLING_STATUSES or status in TRANSIENT_STATUSES
    if problem is not None and not server_side:  # normally caught before parsing already
        return _endpoint_is_not_s3(operation, where, endpoint, status or 0, _content_type(headers), problem, context)
    if code == "NoSuchBucket":
        return BucketNotFoundError(
            f"bucket {bucket!r} does not exist at {endpoint}: check the bucket name, "
            "the endpoint and the region, or create the bucket first",
            code=code_text,
            **context,
        )
    bucket_region = error_info.get("Region") or headers.get("x-amz-bucket-region")
    if code in WRONG_REGION_CODES or status == 301 or (
        bucket_region and settings.region and bucket_region != settings.region
    ):
        hint = (
            f"it is in {bucket_region!r}; pass region={bucket_region!r}"
            if bucket_region
            else "pass the bucket's region"
        )
        return WrongRegionError(
            f"{operation} on {where} was refused because the bucket is in another region "
            f"than {settings.region or 'the default'!r}: {hint}",
            code=code_text,
            **context,
        )
    if code in ACCESS_DENIED_CODES or status == 403:
        reason = {
            "InvalidAccessKeyId": "the access key id is not known to this endpoint",
            "SignatureDoesNotMatch": "the secret access key is wrong",
            "ExpiredToken": "the session token has expired",
        }.get(code or "", "access was denied")
        return AccessDeniedError(
            f"{operation} on {where} refused by {endpoint} ({code_text}): {reason}. "
            "Check the credentials and that they allow this request on this bucket",
            code=code_text,
            **context,
        )
    if code == "NoSuchKey" or (status == 404 and code in (None, "404", "NotFound")):
        return ObjectNotFoundError(
            f"{operation} on {where}: no such object at {endpoint}", code="NoSuchKey", **context
        )
    server_message = error_info.get("Message") or ""
    detail = f"{code_text} (HTTP {status})"
    if server_message:
        detail += f": {server_message}"
    if attempts > 1:
        detail += f" (after {attempts} attempts)"
    if problem is not None:
        # a store's own server error, or some other server answering for it: cannot tell which
        detail += (
            f". The answer did not look like S3 ({problem}, content type {_content_type(headers) or 'none'}): "
            "if this persists, check the endpoint URL, any HTTP proxy, and the port"
        )
    if kind is FailureKind.THROTTLED:
        detail += (
            ". The store kept throttling: spread shard objects over key prefixes "
            "(prefix_strategy=HexPrefixStrategy()), lower max_concurrency, or raise "
            "max_attempts / retry_deadline"
        )
    return S3RequestError(f"{operation} on {where} failed at {endpoint}: {detail}", code=code_text, **context)


# Response headers by which S3 stores name a request. Checked against what the stores send:
# AWS S3 sends x-amz-request-id and x-amz-id-2 on every response; Ceph RGW sends
# x-amz-request-id on every S3 response (its end_header writes it); MinIO X-Amz-Request-Id;
# moto's server x-amzn-requestid on almost every answer (not on a 416, which carries an S3
# error document instead). A store that sends none of them is still recognised by an S3
# error document, or on success by an ETag (object requests) or an XML body (listings).
REQUEST_ID_HEADERS = ("x-amz-request-id", "x-amz-id-2", "x-amzn-requestid")


class NotS3AnswerError(Exception):
    """An HTTP answer no S3 store gives: the endpoint is some other HTTP server.

    Raised while botocore handles the answer, before it is parsed (an HTML
    page could otherwise read as an empty listing, or as the bytes of an
    object); :func:`translate_error` turns it into an
    :class:`~s3dcp._errors.EndpointError`. Never retried.
    """

    def __init__(self, status: int, content_type: str | None, problem: str) -> None:
        super().__init__(status, content_type, problem)
        self.status = status
        self.content_type = content_type
        self.problem = problem


def non_s3_answer(status: int, headers: Mapping[str, str], error_document: bool | None) -> str | None:
    """What shows an answer is not from S3, or ``None`` if an S3 store could have sent it.

    Args:
        status: the HTTP status.
        headers: the response headers (any case).
        error_document: for an error status, whether the body is an S3 error
            document (``None``: no body, or not known).
    """
    names = {name.lower() for name in headers}
    if any(name in names for name in REQUEST_ID_HEADERS):
        return None
    xml = _is_xml(_content_type(headers))
    if status >= 300:
        if error_document:
            return None
        if error_document is None and xml:
            return None  # a HEAD error has no body to check: one labelled XML is taken as S3's
        return "no S3 request id header and no S3 error document"
    if "etag" in names or xml or status == 204:
        return None
    return "no S3 request id header, no ETag and no XML body"


def _refuse_non_s3_answer(response_dict: dict[str, Any], **kwargs: Any) -> None:
    """botocore ``before-parse`` hook: stop at an answer no S3 store would give.

    Throttling and server-error statuses are left to the retry policy and
    reported as server errors: a load balancer may answer them for a store
    that is restarting, and a store that crashes on a request may answer a
    generic page (moto's server does, for some bad upload ids).
    """
    status = int(response_dict.get("status_code") or 0)
    if status in THROTTLING_STATUSES or status in TRANSIENT_STATUSES:
        return
    headers = response_dict.get("headers") or {}
    body: Any = response_dict.get("body")
    document: bool | None = None
    if status >= 300 and isinstance(body, (bytes, bytearray)) and body:
        document = _is_s3_error_document(bytes(body))
    problem = non_s3_answer(status, headers, document)
    if problem is None:
        return
    if hasattr(body, "close"):
        body.close()  # an object body never read: give the connection back
    raise NotS3AnswerError(status, _content_type(headers), problem)


def _is_s3_error_document(body: bytes) -> bool:
    """An ``<Error><Code>...</Code>...</Error>`` XML document, as every S3 store sends with an error."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return False
    code = root.find("Code")
    return root.tag == "Error" and code is not None and bool((code.text or "").strip())


def _content_type(headers: Mapping[str, str]) -> str | None:
    for name, value in headers.items():
        if name.lower() == "content-type":
            return str(value)
    return None


def _is_xml(content_type: str | None) -> bool:
    kind = (content_type or "").split(";")[0].strip().lower()
    return kind in ("application/xml", "text/xml") or kind.endswith("+xml")


def _endpoint_is_not_s3(
    operation: str,
    where: str,
    endpoint: str,
    status: int,
    content_type: str | None,
    problem: str,
    context: dict[str, Any],
) -> EndpointError:
    return EndpointError(
        f"this endpoint does not look like S3: {operation} on {where} got HTTP {status} "
        f"(content type {content_type or 'none'}) from {endpoint}, with {problem}. Check the endpoint URL "
        "(endpoint_url, AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3), that no HTTP proxy (HTTP_PROXY, HTTPS_PROXY) "
        "answers in the store's place, and the port",
        code=str(status),
        **context,
    )
