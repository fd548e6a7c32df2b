"""Failed requests as s3dcp errors: the one mapping from botocore's failures to :mod:`s3dcp._errors`.

:func:`translate_error` decides in two steps, never by message text:

1. Failures that carry no S3 answer, by exception type: no credentials
   (:class:`~s3dcp._errors.CredentialsError`); an untrusted TLS certificate,
   an endpoint that cannot be reached, a connection too slow or stalled
   (a send or read that timed out), or an answer no S3 store gives
   (:class:`~s3dcp._errors.EndpointError`).
2. An S3 error answer (botocore's ``ClientError``), by its S3 error code and
   HTTP status in :data:`TRANSLATIONS`; one that matches no row is an
   :class:`~s3dcp._errors.S3RequestError` carrying the server's own message.

Messages name the object and endpoint and say what to check. They never
include credentials, and include the server's message text only for
errors that are not about authentication. Callers raise the result ``from``
the original, which stays the ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from s3dcp._config import ClientSettings
from s3dcp._errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CredentialsError,
    EndpointError,
    ObjectNotFoundError,
    S3RequestError,
    WrongRegionError,
)
from s3dcp._s3.hooks import NotS3AnswerError, content_type, non_s3_answer
from s3dcp._s3.retry import (
    THROTTLING_STATUSES,
    TRANSIENT_STATUSES,
    FailureKind,
    classify,
    error_code,
    is_untrusted_certificate,
    timed_out,
)
from s3dcp._s3.send import SendProgress, describe_rate, piece_size

__all__ = ["CREDENTIAL_TYPES", "Refusal", "Translation", "TRANSLATIONS", "translate_error"]

# botocore's failures to find credentials (before any request is sent).
CREDENTIAL_TYPES: tuple[type[BaseException], ...] = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.ProfileNotFound,
)


@dataclass(frozen=True)
class Refusal:
    """An S3 error answer to one request, with what its message needs.

    Attributes:
        operation: the request (``"get_object"``, ...).
        where: ``s3://bucket/key`` (or ``s3://bucket``, or ``S3``) for messages.
        endpoint: the endpoint for messages (never with credentials).
        bucket: the bucket of the request, if any.
        code: the S3 error code; botocore makes it up from the status when
            the answer had no error document (a HEAD has no body).
        status: the HTTP status.
        bucket_region: the region the answer says the bucket is in, if it says.
        region: the client's region (``None``: botocore's default).
    """

    operation: str
    where: str
    endpoint: str
    bucket: str | None
    code: str | None
    status: int | None
    bucket_region: str | None
    region: str | None

    @property
    def code_text(self) -> str:
        """The code for messages and ``S3RequestError.code``: the status as text when there is none."""
        return self.code or str(self.status)

    @property
    def has_s3_code(self) -> bool:
        """Whether the answer named an S3 error code, not just a status (a HEAD's answer cannot)."""
        return self.code not in (None, str(self.status), "NotFound")

    @property
    def in_other_region(self) -> bool:
        """The answer says the bucket is in a region other than the client's."""
        return bool(self.bucket_region and self.region and self.bucket_region != self.region)


@dataclass(frozen=True)
class Translation:
    """One row of :data:`TRANSLATIONS`: which answers become ``error``, and its message.

    An answer matches when its code is in ``codes``, its status in
    ``statuses``, its status in ``bare_statuses`` while it named no S3 code,
    or, with ``other_region``, the bucket is in another region than the
    client's.

    Attributes:
        error: the s3dcp error class.
        message: builds the message from the answer.
        codes: S3 error codes that mean this, whatever the status.
        statuses: HTTP statuses that mean this, whatever the code.
        bare_statuses: HTTP statuses that mean this when the answer named no
            S3 code (a HEAD's 404 has no body to name one).
        other_region: also when the answer puts the bucket in another region.
        reported_code: the ``code`` the error carries; default: the answer's.
    """

    error: type[S3RequestError]
    message: Callable[[Refusal], str]
    codes: frozenset[str] = frozenset()
    statuses: frozenset[int] = frozenset()
    bare_statuses: frozenset[int] = frozenset()
    other_region: bool = False
    reported_code: str | None = None

    def matches(self, refusal: Refusal) -> bool:
        return (
            refusal.code in self.codes
            or refusal.status in self.statuses
            or (refusal.status in self.bare_statuses and not refusal.has_s3_code)
            or (self.other_region and refusal.in_other_region)
        )


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
# What an access-denied message says was wrong; any other code: "access was denied".
_ACCESS_DENIED_REASONS: Mapping[str, str] = {
    "InvalidAccessKeyId": "the access key id is not known to this endpoint",
    "SignatureDoesNotMatch": "the secret access key is wrong",
    "ExpiredToken": "the session token has expired",
}


def _bucket_not_found(refusal: Refusal) -> str:
    return (
        f"bucket {refusal.bucket!r} does not exist at {refusal.endpoint}: check the bucket name, "
        "the endpoint and the region, or create the bucket first"
    )


def _wrong_region(refusal: Refusal) -> str:
    region = refusal.bucket_region
    hint = f"it is in {region!r}; pass region={region!r}" if region else "pass the bucket's region"
    return (
        f"{refusal.operation} on {refusal.where} was refused because the bucket is in another region "
        f"than {refusal.region or 'the default'!r}: {hint}"
    )


def _access_denied(refusal: Refusal) -> str:
    reason = _ACCESS_DENIED_REASONS.get(refusal.code or "", "access was denied")
    return (
        f"{refusal.operation} on {refusal.where} refused by {refusal.endpoint} ({refusal.code_text}): {reason}. "
        "Check the credentials and that they allow this request on this bucket"
    )


def _no_such_object(refusal: Refusal) -> str:
    return f"{refusal.operation} on {refusal.where}: no such object at {refusal.endpoint}"


# S3 error answers by code and status, first match wins. The order matters where
# an answer could match two rows: a bucket that is missing is reported as such
# even from another region, and an answer that puts the bucket in another region
# is reported as that, whatever else it refuses.
TRANSLATIONS: tuple[Translation, ...] = (
    Translation(BucketNotFoundError, _bucket_not_found, codes=frozenset({"NoSuchBucket"})),
    Translation(
        WrongRegionError, _wrong_region, codes=WRONG_REGION_CODES, statuses=frozenset({301}), other_region=True
    ),
    Translation(AccessDeniedError, _access_denied, codes=ACCESS_DENIED_CODES, statuses=frozenset({403})),
    Translation(
        ObjectNotFoundError,
        _no_such_object,
        codes=frozenset({"NoSuchKey"}),
        bare_statuses=frozenset({404}),
        reported_code="NoSuchKey",
    ),
)


def translate_error(
    error: BaseException,
    operation: str,
    bucket: str | None,
    key: str | None,
    settings: ClientSettings,
    attempts: int = 1,
    last_send: SendProgress | None = None,
) -> S3RequestError:
    """Turn a botocore/urllib3 failure into an s3dcp error with a useful message.

    The caller raises it ``from error``. See the module docstring for the order
    in which failures are recognised. ``last_send``: how far the last
    attempt's request body got, if it had one sent in pieces.
    """
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}" if bucket else "S3"
    endpoint = settings.describe_endpoint()
    context: dict[str, Any] = {"bucket": bucket, "key": key, "attempts": attempts}
    if isinstance(error, CREDENTIAL_TYPES):
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
    if timed_out(error):
        return EndpointError(_too_slow(operation, where, endpoint, error, attempts, last_send, settings), **context)
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
        return _endpoint_is_not_s3(operation, where, endpoint, error.status, error.content_type, error.problem, context)
    if not isinstance(error, botocore.exceptions.ClientError):
        return S3RequestError(f"{operation} on {where} failed at {endpoint}: {type(error).__name__}", **context)
    return _translate_refusal(error, kind, operation, where, endpoint, settings, context)


def _too_slow(
    operation: str,
    where: str,
    endpoint: str,
    error: BaseException,
    attempts: int,
    last_send: SendProgress | None,
    settings: ClientSettings,
) -> str:
    """The message for attempts that timed out on an open connection: the link is too slow, or stalled."""
    config = settings.config
    slowest = piece_size(config.connect_timeout) / config.connect_timeout
    seen = ""
    if last_send is not None and last_send.sent < last_send.total:
        seen = f"; in the last attempt {last_send.describe(config.connect_timeout)}"
    return (
        f"{operation} on {where} failed: the connection to {endpoint} was too slow or stalled "
        f"({type(error).__name__}: a send or read timed out, {attempts} attempt{'s' if attempts > 1 else ''}"
        f"{seen}). A send is given up when it moves less than {describe_rate(slowest)} over connect_timeout "
        f"({config.connect_timeout:g} s), a read after read_timeout ({config.read_timeout:g} s) without data. "
        "On a slow link raise connect_timeout / read_timeout, or lower part_size and max_concurrency"
    )


def _translate_refusal(
    error: botocore.exceptions.ClientError,
    kind: FailureKind,
    operation: str,
    where: str,
    endpoint: str,
    settings: ClientSettings,
    context: dict[str, Any],
) -> S3RequestError:
    """An S3 error answer as the first matching row of :data:`TRANSLATIONS`, or as itself."""
    code, status = error_code(error)
    response: dict[str, Any] = dict(error.response)
    error_info = response.get("Error", {})
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    refusal = Refusal(
        operation=operation,
        where=where,
        endpoint=endpoint,
        bucket=context["bucket"],
        code=code,
        status=status,
        bucket_region=error_info.get("Region") or headers.get("x-amz-bucket-region"),
        region=settings.region,
    )
    # botocore makes the code up from the status when the body held no S3 error document
    problem = non_s3_answer(status or 0, headers, None if not code or code.isdigit() else True)
    server_side = status in THROTTLING_STATUSES or status in TRANSIENT_STATUSES
    if problem is not None and not server_side:  # normally caught before parsing already
        return _endpoint_is_not_s3(operation, where, endpoint, status or 0, content_type(headers), problem, context)
    for translation in TRANSLATIONS:
        if translation.matches(refusal):
            return translation.error(
                translation.message(refusal), code=translation.reported_code or refusal.code_text, **context
            )
    server_message = error_info.get("Message") or ""
    detail = f"{refusal.code_text} (HTTP {status})"
    if server_message:
        detail += f": {server_message}"
    if context["attempts"] > 1:
        detail += f" (after {context['attempts']} attempts)"
    if problem is not None:
        # a store's own server error, or some other server answering for it: cannot tell which
        detail += (
            f". The answer did not look like S3 ({problem}, content type {content_type(headers) or 'none'}): "
            "if this persists, check the endpoint URL, any HTTP proxy, and the port"
        )
    if kind is FailureKind.THROTTLED:
        detail += (
            ". The store kept throttling: spread shard objects over key prefixes "
            "(prefix_strategy=HexPrefixStrategy()), lower max_concurrency, or raise "
            "max_attempts / retry_deadline"
        )
    return S3RequestError(f"{operation} on {where} failed at {endpoint}: {detail}", code=refusal.code_text, **context)


def _endpoint_is_not_s3(
    operation: str,
    where: str,
    endpoint: str,
    status: int,
    answer_type: str | None,
    problem: str,
    context: dict[str, Any],
) -> EndpointError:
    return EndpointError(
        f"this endpoint does not look like S3: {operation} on {where} got HTTP {status} "
        f"(content type {answer_type or 'none'}) from {endpoint}, with {problem}. Check the endpoint URL "
        "(endpoint_url, AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3), that no HTTP proxy (HTTP_PROXY, HTTPS_PROXY) "
        "answers in the store's place, and the port",
        code=str(status),
        **context,
    )
