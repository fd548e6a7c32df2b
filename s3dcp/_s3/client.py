"""The botocore client (created lazily, once per process and settings) and :class:`S3Client`.

:class:`S3Client` is the one door to S3 for the rest of the package: every
request goes through :meth:`S3Client.call` (or :meth:`S3Client.run`), which
retries by the :class:`~s3dcp._s3.retry.RetryPolicy`, logs the retries
(:mod:`s3dcp._s3.retry_report`) and turns failures into s3dcp errors
(:mod:`s3dcp._s3.translate`). It pickles as its settings alone; the botocore
client is created on first use in each process, with s3dcp's hooks
(:mod:`s3dcp._s3.hooks`), so writers survive ``pickle`` and ``fork``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import botocore
import botocore.config
import botocore.session
import tenacity

from s3dcp._config import ClientSettings
from s3dcp._errors import S3DCPError
from s3dcp._s3.concurrency import SETTLED, AdaptiveLimit
from s3dcp._s3.hooks import install_hooks
from s3dcp._s3.retry import FailureKind, RetryPolicy, TransferStopped, classify
from s3dcp._s3.retry_report import RetryReport
from s3dcp._s3.send import SendProgress, watch_sends
from s3dcp._s3.translate import CREDENTIAL_TYPES, translate_error

__all__ = ["S3Client", "ClientCache"]

T = TypeVar("T")
log = logging.getLogger("s3dcp")


class ClientCache:
    """This process's botocore clients by settings: at most ``max_size``, the least recently used dropped first.

    One client per settings, so every writer and reader built with the same
    settings shares its connection pool. Bounded because settings include
    credentials: a process that renews session tokens, or builds writers
    with many configs, would otherwise keep every old client and its
    connections. A dropped client is not closed (a request may still be
    using it); it closes its connections when it is garbage-collected, and
    is created again if its settings come back.

    Thread-safe; a client is created under the lock, so two threads never
    make two for the same settings. After a fork the child starts empty,
    with a new lock: the parent's clients share the parent's sockets, and
    the lock may have been held by a thread the child does not have.

    Args:
        create: makes the client for one settings.
        max_size: how many clients to keep.
    """

    def __init__(self, create: Callable[[ClientSettings], Any], max_size: int = 32) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self._create = create
        self._max_size = max_size
        self._forget()
        forget = weakref.WeakMethod(self._forget)  # the registration outlives a cache made in a test

        def after_fork_in_child() -> None:
            method = forget()
            if method is not None:
                method()

        os.register_at_fork(after_in_child=after_fork_in_child)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._clients: OrderedDict[ClientSettings, Any] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._clients)

    def get(self, settings: ClientSettings) -> Any:
        """The client for ``settings`` in this process, created on first use."""
        if self._pid != os.getpid():  # forked without os.fork (whose hook has already emptied the cache)
            self._forget()
        with self._lock:
            client = self._clients.get(settings)
            if client is None:
                client = self._create(settings)
                self._clients[settings] = client
                if len(self._clients) > self._max_size:
                    self._clients.popitem(last=False)
            else:
                self._clients.move_to_end(settings)
            return client


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
    install_hooks(client, settings.config)
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
            # "when_required": botocore adds no checksum of its own; s3dcp._s3.hooks adds the chosen one
            request_checksum_calculation="when_required",
        )
    except TypeError as err:  # an option this botocore does not know: older than its version says
        raise S3DCPError(_botocore_floor_message(botocore.__version__)) from err


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
        self._throttled = 0
        self._throttled_lock = threading.Lock()  # requests retry on many threads

    @property
    def throttled(self) -> int:
        """How many times the store has throttled (503 SlowDown) a request of this client so far.

        Transfers read it to lower their requests in flight
        (:class:`~s3dcp._s3.concurrency.AdaptiveLimit`).
        """
        return self._throttled

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"S3Client(endpoint={self.settings.describe_endpoint()!r})"

    def concurrency(self, direction: Literal["upload", "download", "copy"]) -> AdaptiveLimit:
        """A fresh limit of requests in flight for one transfer.

        It starts at the level the last transfer in ``direction`` to this
        endpoint settled at, if one did in this process, and otherwise at
        ``initial_concurrency``, growing while that pays.
        """
        config = self.settings.config
        key = (self.settings.describe_endpoint(), direction)
        settled = SETTLED.get(key)
        if settled is not None and config.initial_concurrency < config.max_concurrency:
            log.debug("starting at %d requests in flight, where an earlier %s settled", settled, direction)
            return AdaptiveLimit(config.max_concurrency, settled, throttled=lambda: self.throttled, settled=True)

        def remember(level: int) -> None:
            SETTLED[key] = level

        return AdaptiveLimit(
            config.max_concurrency, config.initial_concurrency, throttled=lambda: self.throttled, remember=remember
        )

    @property
    def raw(self) -> Any:
        """The botocore S3 client for this process (created on first use)."""
        try:
            return _CACHE.get(self.settings)
        except CREDENTIAL_TYPES as err:
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

        report = RetryReport(operation, bucket, key, self.settings)
        attempts = 0
        sends: list[SendProgress | None] = []  # how far each failed attempt's body got

        def counted() -> T:
            nonlocal attempts
            if stop is not None and stop.is_set():
                raise TransferStopped(
                    f"{operation} on s3://{bucket}/{key or ''} was not sent: its transfer was stopped",
                    bucket=bucket,
                    key=key,
                )
            attempts += 1
            with watch_sends(sends):
                return attempt()

        def sleep(seconds: float) -> None:
            if self._sleep is not None:
                self._sleep(seconds)
            elif stop is not None:
                stop.wait(seconds)  # ends early when the transfer stops
            else:
                time.sleep(seconds)

        def retrying(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            if error is not None and classify(error) is FailureKind.THROTTLED:
                with self._throttled_lock:
                    self._throttled += 1
            report.retrying(state)

        try:
            result = self.policy.call(counted, sleep=sleep, on_retry=retrying)
        except S3DCPError:
            raise
        except Exception as err:
            last_send = sends[-1] if sends else None
            raise translate_error(err, operation, bucket, key, self.settings, attempts, last_send) from err
        report.succeeded(attempts)
        return result


_CACHE = ClientCache(_create_client)
