"""An HTTP proxy between boto3 and a local S3 server that counts and breaks things.

boto3 is pointed at the proxy as its S3 endpoint; the proxy forwards each
request, unchanged (Host header included, so signatures still verify), to
the real server and relays the answer. Rules make it misbehave the way S3
and networks do:

* ``slowdown`` / ``internal_error`` / ``service_unavailable`` /
  ``access_denied`` / ``no_such_upload`` / ``not_implemented``: answer 503,
  500, 403, 404 or 501 with S3's XML error body, without forwarding;
* ``reset``: read the request, then drop the connection with a TCP RST;
* ``lose_answer``: forward (the server acts on it), then RST instead of
  relaying the answer, as when a connection dies on the way back;
* ``truncate``: forward, then send the headers and only part of the body,
  then close the connection (a body that ends before its Content-Length);
* ``delay``: wait before forwarding;
* ``hold``: stop the request until the test calls ``rule.release()``; the
  rule's ``hit`` event is set when one is held, so a test can act while a
  save is provably mid-way (no sleeps);
* ``stall``: a connection that stops moving without closing. A request
  with a body has only ``keep_fraction`` of it read, and is never
  forwarded; one without is forwarded, and its answer's headers and
  ``keep_fraction`` of its body are sent. Then nothing moves until
  ``rule.release()`` or ``delay`` seconds (``HOLD_LIMIT`` if 0), and the
  connection is reset: only the client's own timeouts end its wait;
* ``throttle``: a token bucket per key partition (the first
  ``partition_chars`` characters of the key after ``partition_root``), as S3
  limits request rates per prefix; requests over the rate get 503 SlowDown.

With ``tls=True`` the proxy answers HTTPS with a certificate from a
throw-away CA (``certificates.make_certificate``; ``ca_bundle`` is its file,
for ``AWS_CA_BUNDLE``), and keeps connections alive: the TLS counterpart
of the plain proxy, where moto itself closes every connection.

A rule fires by method, key pattern, query text, header, probability
(seeded, so runs repeat) and a count limit. Every request is recorded with
its method, key, range, status and bytes, so tests can assert on what
really went over the wire.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import random
import re
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from s3dcp_testkit.certificates import make_certificate, server_context
from s3dcp_testkit.http_framing import Body, BodyError

_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "service_unavailable": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "internal_error": (500, "InternalError", "We encountered an internal error. Please try again."),
    "access_denied": (403, "AccessDenied", "Access Denied"),
    "no_such_upload": (404, "NoSuchUpload", "The specified upload does not exist."),
    "not_implemented": (
        501,
        "NotImplemented",
        "A header you provided implies functionality that is not implemented.",
    ),
}
ACTIONS = (*_ERRORS, "reset", "lose_answer", "truncate", "delay", "hold", "stall", "throttle")
HOLD_LIMIT = 120.0  # a held request is let go after this long even if the test forgot it


@dataclass
class Rule:
    """When and how to misbehave.

    Attributes:
        action: one of ``ACTIONS``.
        method: only requests with this HTTP method, or one of these methods
            (``None``: any); e.g. ``("PUT", "POST", "DELETE")`` for S3's write budget.
        key_pattern: only requests whose ``bucket/key`` path matches this regex.
        probability: chance that a matching request is hit.
        count: hit at most this many requests (``None``: no limit).
        delay: seconds, for ``delay``; for ``stall``, how long nothing
            moves (0: ``HOLD_LIMIT``) unless released sooner.
        keep_fraction: share of the body sent before the cut, for
            ``truncate``; for ``stall``, of the request body read, or of
            the answer's body sent, before nothing moves.
        query_contains: only requests whose query string contains this text.
        header: only requests that carry this header (any value).
        rate / burst: for ``throttle``, requests per second and bucket size
            of each partition.
        partition_root: for ``throttle``, the path (``/bucket/prefix/``)
            that partitions are counted below; requests elsewhere pass.
        partition_chars: for ``throttle``, how many key characters after
            ``partition_root`` name a partition.
    """

    action: str
    method: str | tuple[str, ...] | None = None
    key_pattern: str | None = None
    probability: float = 1.0
    count: int | None = None
    delay: float = 0.0
    keep_fraction: float = 0.5
    query_contains: str | None = None
    header: str | None = None
    rate: float = 0.0
    burst: float = 1.0
    partition_root: str = "/"
    partition_chars: int = 1
    hits: int = field(default=0, init=False)
    max_delayed: int = field(default=0, init=False)  # most requests this ``delay`` rule held at once
    _delayed: int = field(default=0, init=False, repr=False)
    _delayed_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    hit: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    released: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; one of {ACTIONS}")
        if self.action == "throttle" and (self.rate <= 0 or self.burst < 1 or self.partition_chars < 0):
            raise ValueError("throttle needs rate > 0, burst >= 1 and partition_chars >= 0")

    def matches(self, method: str, path: str, query: str, headers: Any) -> bool:
        if self.method and method not in ((self.method,) if isinstance(self.method, str) else self.method):
            return False
        if self.key_pattern and not re.search(self.key_pattern, path):
            return False
        if self.query_contains and self.query_contains not in query:
            return False
        if self.header and self.header not in headers:
            return False
        if self.action == "throttle":
            return path.startswith(self.partition_root) and not self._take_token(path)
        return self.count is None or self.hits < self.count

    def partition(self, path: str) -> str:
        """The partition a throttled request counts against."""
        return path[len(self.partition_root) :][: self.partition_chars]

    def _take_token(self, path: str) -> bool:
        """Spend one token of the request's partition; False when it has none."""
        now = time.monotonic()
        name = self.partition(path)
        tokens, last = self._buckets.get(name, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[name] = (tokens - 1, now)
            return True
        self._buckets[name] = (tokens, now)
        return False

    def release(self) -> None:
        """Let every request this ``hold`` rule stopped (and will stop) go on."""
        self.released.set()

    def hold_for_delay(self) -> None:
        """The ``delay`` fault itself (a slow network, not test synchronization), counted in ``max_delayed``."""
        with self._delayed_lock:
            self._delayed += 1
            self.max_delayed = max(self.max_delayed, self._delayed)
        try:
            time.sleep(self.delay)
        finally:
            with self._delayed_lock:
                self._delayed -= 1


@dataclass
class Record:
    """One request as the proxy saw it."""

    method: str
    path: str
    query: str
    range: str | None
    status: int
    request_bytes: int
    response_bytes: int
    action: str | None
    headers: dict[str, str] = field(default_factory=dict)  # request headers, names lowercased
    body_crc32: str = ""  # base64 CRC32 and MD5 of the request body as received,
    body_md5: str = ""  # to compare with the checksum headers the client sent
    body_sha256: str = ""  # hex, to compare with a signed x-amz-content-sha256


class FaultProxy:
    """A loopback reverse proxy in front of ``upstream``; a context manager."""

    def __init__(self, upstream: str, seed: int = 1234, tls: bool = False) -> None:
        parts = urlsplit(upstream)
        self.tls = tls
        self.ca_bundle: str | None = None  # the CA file clients trust, with tls=True
        self._tls_dir: Path | None = None
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rules: list[Rule] = []
        self.records: list[Record] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0  # TCP connections accepted from clients since the last clear()

    # -- control -------------------------------------------------------------------
    def add_rule(self, action: str, **options: Any) -> Rule:
        rule = Rule(action, **options)
        with self._lock:
            self.rules.append(rule)
        return rule

    def add_fault_mix(self, rate: float, actions: tuple[str, ...], **options: Any) -> list[Rule]:
        """Hit a share ``rate`` of matching requests, spread evenly over ``actions``.

        Rules are tried in order, so each one's probability is raised to make
        up for the requests the ones before it already took.
        """
        share = rate / len(actions)
        return [
            self.add_rule(action, probability=share / (1 - i * share), **options) for i, action in enumerate(actions)
        ]

    def clear(self) -> None:
        """Drop all rules and records."""
        with self._lock:
            self.rules.clear()
            self.records.clear()
            self.max_in_flight = self.in_flight
            self.connections = 0

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _connected(self) -> None:
        with self._lock:
            self.connections += 1

    def requests(self, method: str | None = None, path_pattern: str | None = None) -> list[Record]:
        with self._lock:
            records = list(self.records)
        return [
            r
            for r in records
            if (method is None or r.method == method) and (path_pattern is None or re.search(path_pattern, r.path))
        ]

    def _pick_rule(self, method: str, path: str, query: str, headers: Any) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, query, headers) and self._random.random() < rule.probability:
                    rule.hits += 1
                    rule.hit.set()
                    return rule
        return None

    def statuses(self) -> dict[int, int]:
        """How many requests got each status (-1: connection reset)."""
        counts: dict[int, int] = {}
        for record in self.requests():
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    def _record(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> FaultProxy:
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        scheme = "http"
        if self.tls:
            context = self._tls_context()
            # the handshake is done in each connection's thread (Handler.setup), not in accept
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint_url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        return self

    def _tls_context(self) -> ssl.SSLContext:
        """A server context whose certificate, for 127.0.0.1, a new throw-away CA signed."""
        self._tls_dir = Path(tempfile.mkdtemp(prefix="fault-proxy-tls-"))
        made = make_certificate(self._tls_dir, days=2)
        self.ca_bundle = str(made.ca)
        return server_context(made.cert, made.key)

    def stop(self) -> None:
        with self._lock:
            for rule in self.rules:
                rule.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._tls_dir is not None:
            shutil.rmtree(self._tls_dir, ignore_errors=True)
            self._tls_dir = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _error_body(code: str, message: str, path: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{path}</Resource>"
        "<RequestId>FAULTPROXY</RequestId></Error>"
    ).encode()


def _make_handler(proxy: FaultProxy) -> Callable[..., BaseHTTPRequestHandler]:
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            if isinstance(self.request, ssl.SSLSocket):
                self.request.settimeout(60)
                self.request.do_handshake()
            super().setup()
            proxy._connected()

        def log_message(self, *args: Any) -> None:
            pass

        def _read_body(self) -> bytes:
            chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
            return Body.of(self.rfile, chunked, self.headers.get("Content-Length")).read()

        def _reset(self) -> None:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _close_early(self) -> None:
            """FIN, not RST: the client still reads every byte sent, then end of stream."""
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_WR)

        def _upstream(self) -> http.client.HTTPConnection:
            connection = getattr(local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
                local.connection = connection
            return connection

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            for attempt in range(2):  # a kept-alive upstream connection may have closed
                connection = self._upstream()
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    return response.status, response.getheaders(), data
                except (http.client.HTTPException, ConnectionError):
                    connection.close()
                    local.connection = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        def _handle(self) -> None:
            proxy._enter()
            try:
                self._handle_counted()
            finally:
                proxy._leave()

        def _stall(self, rule: Rule) -> None:
            """Move nothing more on this connection until the rule is released or its time is up; then reset."""
            rule.released.wait(rule.delay or HOLD_LIMIT)  # the fault itself: a link that stopped
            self._reset()

        def _stall_request(self, rule: Rule, path: str, query: str) -> None:
            """Read ``keep_fraction`` of the request body (not all of it), then stall."""
            length = int(self.headers.get("Content-Length") or 0)
            kept = self.rfile.read(int(length * rule.keep_fraction))
            record = Record(self.command, path, query, self.headers.get("Range"), -1, len(kept), 0, rule.action)
            proxy._record(record)
            self._stall(rule)

        def _handle_counted(self) -> None:
            split = urlsplit(self.path)
            path = unquote(split.path)
            rule = proxy._pick_rule(self.command, path, split.query, self.headers)
            action = rule.action if rule else None
            if rule is not None and rule.action == "stall" and int(self.headers.get("Content-Length") or 0):
                self._stall_request(rule, path, split.query)
                return
            try:
                body = self._read_body()
            except BodyError:  # the client went away mid-request: nothing to forward or answer
                self.close_connection = True
                return
            record = Record(
                self.command,
                path,
                split.query,
                self.headers.get("Range"),
                0,
                len(body),
                0,
                action,
                headers={k.lower(): v for k, v in self.headers.items()},
                body_crc32=base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode(),
                body_md5=base64.b64encode(hashlib.md5(body).digest()).decode(),
                body_sha256=hashlib.sha256(body).hexdigest(),
            )
            if rule is not None and rule.action == "reset":
                record.status = -1
                proxy._record(record)
                self._reset()
                return
            if rule is not None and rule.action in (*_ERRORS, "throttle"):
                status, code, message = _ERRORS["slowdown" if rule.action == "throttle" else rule.action]
                payload = _error_body(code, message, path)
                record.status, record.response_bytes = status, len(payload)
                proxy._record(record)
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            if rule is not None and rule.action == "delay":
                rule.hold_for_delay()
            if rule is not None and rule.action == "hold":
                rule.released.wait(HOLD_LIMIT)
            status, headers, data = self._forward(body)
            record.status = status
            if rule is not None and rule.action == "lose_answer":
                record.status = -1
                proxy._record(record)
                self._reset()
                return
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                    self.send_header(name, value)
            length = next((v for k, v in headers if k.lower() == "content-length"), None)
            # recorded before the client gets the answer, so a test sees every finished request
            if self.command == "HEAD":
                proxy._record(record)
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(data)))
            if rule is not None and (rule.action == "stall" or (rule.action == "truncate" and data)):
                kept = data[: int(len(data) * rule.keep_fraction)]
                record.response_bytes = len(kept)
                proxy._record(record)
                self.end_headers()
                self.wfile.write(kept)
                self.wfile.flush()
                if rule.action == "stall":
                    self._stall(rule)
                else:
                    self._close_early()
                return
            record.response_bytes = len(data)
            proxy._record(record)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    return Handler
