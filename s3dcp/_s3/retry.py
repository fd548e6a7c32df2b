"""Which S3 failures are worth retrying, and how long to keep trying.

Classification looks at exception types and S3 error codes only, never at
message text. botocore's own retries are switched off (one attempt per
botocore call) so attempts never multiply: this module is the only place
that retries.
"""

from __future__ import annotations

import enum
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import botocore.exceptions
import tenacity
import urllib3.exceptions

from s3dcp._config import S3ClientConfig
from s3dcp._errors import S3DCPError

__all__ = ["FailureKind", "classify", "timed_out", "RetryPolicy", "TransferStopped"]

T = TypeVar("T")


class FailureKind(enum.Enum):
    """What a failed request means for the next attempt."""

    THROTTLED = "throttled"  # the store asks us to slow down
    TRANSIENT = "transient"  # a server-side hiccup
    CONNECTION = "connection"  # reset, timeout, broken body mid-stream
    UNREACHABLE = "unreachable"  # could not connect at all
    PERMANENT = "permanent"  # retrying cannot help


THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "ProvisionedThroughputExceededException",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "ConditionalRequestConflict",  # 409: a concurrent conditional write; S3 says retry
    }
)
THROTTLING_STATUSES = frozenset({429, 503})
TRANSIENT_STATUSES = frozenset({500, 502, 504})

_UNREACHABLE_TYPES: tuple[type[BaseException], ...] = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ProxyConnectionError,
)
_CONNECTION_TYPES: tuple[type[BaseException], ...] = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, streaming errors
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    urllib3.exceptions.HTTPError,  # ProtocolError, ReadTimeoutError on body reads
    ConnectionError,  # the builtin: reset, aborted, broken pipe
    TimeoutError,
)

# botocore's ReadTimeoutError derives from its vendored urllib3's, not from urllib3's own
_TIMEOUT_TYPES = (TimeoutError, urllib3.exceptions.TimeoutError, botocore.exceptions.ReadTimeoutError)


class TransferStopped(S3DCPError):
    """A request was not sent, or not sent again, because its transfer was stopped.

    Raised inside a save's transfer threads once the save is being given up
    (Ctrl-C, SIGTERM, or a failure elsewhere in it); the error that stopped
    the save is the one its caller sees.
    """


class TruncatedBodyError(Exception):
    """A response body ended before Content-Length bytes arrived."""


def error_code(error: BaseException) -> tuple[str | None, int | None]:
    """Return (S3 error code, HTTP status) of a botocore ``ClientError``."""
    if not isinstance(error, botocore.exceptions.ClientError):
        return None, None
    response = error.response
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return (str(code) if code else None), status


def is_untrusted_certificate(error: BaseException) -> bool:
    """A TLS handshake that failed on the server's certificate: retrying cannot fix it.

    Found by type: an :class:`ssl.SSLCertVerificationError` anywhere in the
    chain (botocore's ``SSLError`` keeps urllib3's under ``kwargs["error"]``,
    which holds the one from :mod:`ssl` as its argument and context).
    """
    return any(isinstance(link, ssl.SSLCertVerificationError) for link in _chain(error))


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it wraps: its cause and context, and those held in its arguments."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        kwargs = getattr(current, "kwargs", None)  # botocore's errors keep what they wrap here
        held = list(kwargs.values()) if isinstance(kwargs, dict) else []
        held += [current.__cause__, current.__context__, *current.args]
        todo.extend(link for link in held if isinstance(link, BaseException))


def timed_out(error: BaseException) -> bool:
    """A connection that was open but moved too little: a send or a read hit its socket timeout.

    Not a connection that could not be opened in time (that is
    :attr:`FailureKind.UNREACHABLE`). Found by type, anywhere in the chain:
    botocore wraps a send that timed out as ``ConnectionClosedError`` around
    urllib3's ``ProtocolError`` around the socket's ``TimeoutError``.
    """
    if classify(error) is not FailureKind.CONNECTION:
        return False
    return any(isinstance(link, _TIMEOUT_TYPES) for link in _chain(error))


def classify(error: BaseException) -> FailureKind:
    """Sort a failed request into a :class:`FailureKind`."""
    if is_untrusted_certificate(error):
        return FailureKind.PERMANENT
    if isinstance(error, botocore.exceptions.ClientError):
        code, status = error_code(error)
        if code in THROTTLING_CODES or status in THROTTLING_STATUSES:
            return FailureKind.THROTTLED
        if code in TRANSIENT_CODES or status in TRANSIENT_STATUSES:
            return FailureKind.TRANSIENT
        return FailureKind.PERMANENT
    if isinstance(error, _UNREACHABLE_TYPES):
        return FailureKind.UNREACHABLE
    if isinstance(error, (TruncatedBodyError, *_CONNECTION_TYPES)):
        return FailureKind.CONNECTION
    return FailureKind.PERMANENT


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff with attempt and time budgets.

    Full jitter (each wait drawn uniformly from zero to the exponential
    bound) keeps thousands of ranks that were throttled together from
    retrying together.
    """

    max_attempts: int = 10
    connect_attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 20.0
    deadline: float = 300.0

    @classmethod
    def from_config(cls, config: S3ClientConfig) -> RetryPolicy:
        return cls(
            max_attempts=config.max_attempts,
            connect_attempts=config.connect_attempts,
            initial_backoff=config.retry_initial_backoff,
            max_backoff=config.retry_max_backoff,
            deadline=config.retry_deadline,
        )

    def attempts_for(self, kind: FailureKind) -> int:
        """How many attempts in all a failure of this kind may use."""
        if kind is FailureKind.PERMANENT:
            return 1
        if kind is FailureKind.UNREACHABLE:
            return min(self.connect_attempts, self.max_attempts)
        return self.max_attempts

    def retrying(
        self,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[tenacity.RetryCallState], None] | None = None,
    ) -> tenacity.Retrying:
        """Build the ``tenacity.Retrying`` that runs one request."""

        def should_stop(state: tenacity.RetryCallState) -> bool:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            if error is None:
                return True
            if state.attempt_number >= self.attempts_for(classify(error)):
                return True
            return (state.seconds_since_start or 0.0) >= self.deadline

        return tenacity.Retrying(
            sleep=sleep,
            stop=should_stop,
            wait=tenacity.wait_random_exponential(multiplier=self.initial_backoff, max=self.max_backoff),
            retry=tenacity.retry_if_exception(lambda e: classify(e) is not FailureKind.PERMANENT),
            before_sleep=on_retry,
            reraise=True,
        )

    def call(
        self,
        func: Callable[[], T],
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[tenacity.RetryCallState], None] | None = None,
    ) -> T:
        """Run ``func`` under this policy; re-raise its last error when done."""
        return self.retrying(sleep, on_retry)(func)
