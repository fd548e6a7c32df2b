"""The classification table and the retry policy, with an injected sleep."""

from __future__ import annotations

import logging
import time
from typing import Any

import botocore.exceptions
import pytest
import urllib3.exceptions

from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._errors import S3DCPError
from s3dcp._s3.client import S3Client
from s3dcp._s3.retry import FailureKind, RetryPolicy, TruncatedBodyError, classify


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


# -- what the logs say about retries -------------------------------------------------------


def _client_with_fake_clock(monkeypatch: pytest.MonkeyPatch, **config: Any) -> tuple[S3Client, list[float]]:
    """An S3Client whose waits only move a fake clock (the one tenacity and the report read)."""
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    def fake_sleep(seconds: float) -> None:
        clock[0] += seconds

    settings = resolve_settings("us-east-1", S3ClientConfig(**config), environ={})
    return S3Client(settings, sleep=fake_sleep), clock


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "s3dcp" and r.levelno == level]


def test_a_long_retry_warns_once_with_what_to_check_and_its_success_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client, clock = _client_with_fake_clock(
        monkeypatch, retry_warning_after=5.0, retry_initial_backoff=4.0, retry_max_backoff=4.0, max_attempts=20
    )
    flaky = Flaky(*[client_error("SlowDown", 503)] * 8)
    with caplog.at_level(logging.DEBUG, logger="s3dcp"):
        assert client.run(flaky, "upload_part", "bkt", "ckpt/__0_0.distcp") == "ok"
    warnings = _records(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert "upload_part s3://bkt/ckpt/__0_0.distcp has been retrying" in warnings[0]
    assert "SlowDown (HTTP 503)" in warnings[0] and "throttling" in warnings[0]
    assert "up to 20 attempts" in warnings[0]
    assert len(_records(caplog, logging.DEBUG)) == 8  # every retry, below the warning
    assert _records(caplog, logging.INFO) == [
        f"upload_part s3://bkt/ckpt/__0_0.distcp succeeded after 9 attempts ({clock[0]:.1f} s)"
    ]


def test_short_retries_stay_below_warning(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    client, _ = _client_with_fake_clock(
        monkeypatch, retry_warning_after=5.0, retry_initial_backoff=0.1, retry_max_backoff=0.2
    )
    with caplog.at_level(logging.DEBUG, logger="s3dcp"):
        client.run(Flaky(*[client_error("InternalError", 500)] * 3), "put_object", "bkt", "k")
    assert _records(caplog, logging.WARNING) == [] and _records(caplog, logging.INFO) == []


def test_an_endpoint_that_keeps_failing_is_reported_long_before_the_deadline(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client, clock = _client_with_fake_clock(monkeypatch, read_timeout=60.0)
    warned_at: list[float] = []

    def times_out() -> str:
        clock[0] += 60.0  # each attempt waits read_timeout for an answer that never comes
        raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://store")

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno == logging.WARNING:
                warned_at.append(clock[0])

    spy = Spy()
    logging.getLogger("s3dcp").addHandler(spy)
    try:
        with caplog.at_level(logging.WARNING, logger="s3dcp"), pytest.raises(S3DCPError):
            client.run(times_out, "get_object", "bkt", "k")
    finally:
        logging.getLogger("s3dcp").removeHandler(spy)
    assert clock[0] >= 300.0  # it did run to the deadline
    assert len(warned_at) == 1 and warned_at[0] <= 61.0
    warning = _records(caplog, logging.WARNING)[0]
    assert "ReadTimeoutError" in warning and "Check the endpoint" in warning and "network" in warning


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "5", True])
def test_retry_warning_after_must_be_seconds(value: object) -> None:
    with pytest.raises(ValueError, match="retry_warning_after"):
        S3ClientConfig(retry_warning_after=value)  # type: ignore[arg-type]
    assert S3ClientConfig(retry_warning_after=0).retry_warning_after == 0
