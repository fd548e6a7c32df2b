"""What the logs say about one request's retries.

Every retry is a DEBUG line. Once a request has been retrying for
``retry_warning_after`` seconds, one WARNING says which request, how many
attempts, the last error and what to check, since a save that stalls on a
throttling or unreachable store otherwise looks hung; if the request then
succeeds, an INFO line says so. A request that hangs without failing is
reported when its attempt times out (``read_timeout``).
"""

from __future__ import annotations

import logging
import time

import tenacity

from s3dcp._config import ClientSettings
from s3dcp._s3.retry import FailureKind, classify, error_code, timed_out

__all__ = ["RetryReport"]

log = logging.getLogger("s3dcp")


class RetryReport:
    """The log lines of one request's retries; :meth:`retrying` is tenacity's ``before_sleep``."""

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
        check = f"Check the endpoint ({endpoint}), that it is up, and the network between here and there"
        if error is not None and timed_out(error):
            check += (
                ". A send or read timed out: if the link is only slow, raise connect_timeout / read_timeout, "
                "or lower part_size and max_concurrency"
            )
        return check


def _describe_failure(error: BaseException | None) -> str:
    if error is None:
        return "no error"
    code, status = error_code(error)
    if code or status:
        return f"{code} (HTTP {status})"
    return type(error).__name__
