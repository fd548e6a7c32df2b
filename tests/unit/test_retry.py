"""The classification table and the retry policy, with an injected sleep."""

from __future__ import annotations

import time
from typing import Any

import botocore.exceptions
import pytest
import urllib3.exceptions

from s3dcp.config import S3ClientConfig
from s3dcp.retry import FailureKind, RetryPolicy, TruncatedBodyError, classify


def client_error(code: str | None, status: int) -> botocore.exceptions.ClientError:
    error: dict[str, Any] = {"Message": "server says"}
    if code:
        error["Code"] = code
    return botocore.exceptions.ClientError(
        {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}}}, "PutObject"
    )


@pytest.mark.parametrize(
    "error, kind",
    [
        (client_error("SlowDown", 503), FailureKind.THROTTLED),
        (client_error("RequestLimitExceeded", 400), FailureKind.THROTTLED),
        (client_error(None, 429), FailureKind.THROTTLED),
        (client_error("ServiceUnavailable", 503), FailureKind.THROTTLED),
        (client_error("InternalError", 500), FailureKind.TRANSIENT),
        (client_error(None, 502), FailureKind.TRANSIENT),
        (client_error("RequestTimeout", 400), FailureKind.TRANSIENT),
        (client_error(None, 504), FailureKind.TRANSIENT),
        (client_error("NoSuchBucket", 404), FailureKind.PERMANENT),
        (client_error("NoSuchKey", 404), FailureKind.PERMANENT),
        (client_error("AccessDenied", 403), FailureKind.PERMANENT),
        (client_error("InvalidAccessKeyId", 403), FailureKind.PERMANENT),
        (client_error("SignatureDoesNotMatch", 403), FailureKind.PERMANENT),
        (client_error("InvalidRequest", 400), FailureKind.PERMANENT),
        (client_error("PreconditionFailed", 412), FailureKind.PERMANENT),
        (client_error("ConditionalRequestConflict", 409), FailureKind.TRANSIENT),
        (client_error("NotImplemented", 501), FailureKind.PERMANENT),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), FailureKind.UNREACHABLE),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), FailureKind.UNREACHABLE),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), FailureKind.CONNECTION),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), FailureKind.CONNECTION),
        (botocore.exceptions.ResponseStreamingError(error="x"), FailureKind.CONNECTION),
        (urllib3.exceptions.ProtocolError("reset"), FailureKind.CONNECTION),
        (ConnectionResetError(104, "reset"), FailureKind.CONNECTION),
        (TruncatedBodyError("short"), FailureKind.CONNECTION),
        (ValueError("bug"), FailureKind.PERMANENT),
        (botocore.exceptions.NoCredentialsError(), FailureKind.PERMANENT),
    ],
)
def test_classification_table(error: BaseException, kind: FailureKind) -> None:
    assert classify(error) is kind


class Flaky:
    """Fails with the given errors in turn, then returns 'ok'."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_transient_failures_are_retried_with_jittered_growing_waits() -> None:
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=5, initial_backoff=1.0, max_backoff=100.0)
    flaky = Flaky(client_error("SlowDown", 503), client_error("InternalError", 500), ConnectionResetError())
    assert policy.call(flaky, sleep=waits.append) == "ok"
    assert flaky.calls == 4
    assert len(waits) == 3
    for attempt, wait in enumerate(waits, start=1):
        assert 0 <= wait <= 2 ** (attempt - 1)


def test_full_jitter_spreads_waits() -> None:
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=200, initial_backoff=1.0, max_backoff=8.0)
    policy.call(Flaky(*[client_error("SlowDown", 503)] * 150), sleep=waits.append)
    late = waits[10:]
    assert max(late) <= 8.0
    assert min(late) < 2.0 and max(late) > 6.0  # uniform over [0, 8], not a fixed 8


def test_permanent_errors_are_not_retried() -> None:
    waits: list[float] = []
    flaky = Flaky(client_error("AccessDenied", 403))
    with pytest.raises(botocore.exceptions.ClientError):
        RetryPolicy().call(flaky, sleep=waits.append)
    assert flaky.calls == 1 and waits == []


def test_attempts_are_bounded() -> None:
    flaky = Flaky(*[client_error("SlowDown", 503)] * 20)
    with pytest.raises(botocore.exceptions.ClientError):
        RetryPolicy(max_attempts=4).call(flaky, sleep=lambda _: None)
    assert flaky.calls == 4


def test_unreachable_endpoint_gets_few_attempts() -> None:
    flaky = Flaky(*[botocore.exceptions.EndpointConnectionError(endpoint_url="http://x")] * 20)
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        RetryPolicy(max_attempts=10, connect_attempts=3).call(flaky, sleep=lambda _: None)
    assert flaky.calls == 3


def test_deadline_bounds_total_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    policy = RetryPolicy(max_attempts=1000, initial_backoff=10.0, max_backoff=10.0, deadline=30.0)
    flaky = Flaky(*[client_error("SlowDown", 503)] * 1000)

    def fake_sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # tenacity's clock
    with pytest.raises(botocore.exceptions.ClientError):
        policy.call(flaky, sleep=fake_sleep)
    assert 30.0 <= clock[0] <= 30.0 + 10.0
    assert flaky.calls < 1000


def test_policy_from_config() -> None:
    policy = RetryPolicy.from_config(S3ClientConfig(max_attempts=7, connect_attempts=2, retry_deadline=9.0))
    assert (policy.max_attempts, policy.connect_attempts, policy.deadline) == (7, 2, 9.0)
    assert policy.attempts_for(FailureKind.PERMANENT) == 1
