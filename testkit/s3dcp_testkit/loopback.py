"""A loopback server on a daemon thread of this process, and the request counts it keeps.

The benchmarks' servers (``null_sink.NullSink``, ``forwarder.CountingForwarder``)
are ``socketserver`` servers run by :class:`BackgroundServer`; each counts
the requests it answers in a :class:`Counts`.
"""

from __future__ import annotations

import itertools
import socket
import socketserver
import ssl
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from s3dcp_testkit.certificates import server_context
from s3dcp_testkit.http_framing import BodyError, header, read_head

RECV_BUFFER = 4 * 1024 * 1024  # socket receive buffer asked of the kernel


class Counts:
    """Requests and bytes seen, thread-safe; ``take()`` returns them and starts again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, operation: str, request_bytes: int, response_bytes: int) -> None:
        with self._lock:
            self._counts["requests"] += 1
            self._counts[f"op:{operation}"] += 1
            self._counts["request_body_bytes"] += request_bytes
            self._counts["response_body_bytes"] += response_bytes
            self._counts[f"response_bytes:{operation}"] += response_bytes

    def note(self, name: str, amount: int = 1) -> None:
        """Count something other than a request (connections opened, say) under ``name``."""
        with self._lock:
            self._counts[name] += amount

    def take(self) -> dict[str, int]:
        with self._lock:
            counts, self._counts = dict(self._counts), Counter()
        return counts


def open_connection(conn: socket.socket, tls: ssl.SSLContext | None) -> tuple[socket.socket, Any] | None:
    """An accepted connection, TLS-wrapped if asked, and a buffered reader on it (None if TLS fails)."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        try:
            conn = tls.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return None
    return conn, conn.makefile("rb", buffering=256 * 1024)


@dataclass(frozen=True)
class Request:
    """One S3 request's head, parsed: method, target, bucket, key, query and headers."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    bucket: str
    key: str
    query: dict[str, list[str]]

    @property
    def closes(self) -> bool:
        """Whether the connection ends after this request's answer."""
        return (header(self.headers, "connection") or "").lower() == "close" or self.version == "HTTP/1.0"


def read_request(conn: socket.socket, rfile: Any) -> Request | None:
    """The next request's head (``None`` at the connection's end); answers ``Expect: 100-continue``."""
    head = read_head(rfile)
    if head is None:
        return None
    request_line, headers = head
    method, target, version = request_line.split(" ", 2)
    url = urlsplit(target)
    bucket, _, key = unquote(url.path).lstrip("/").partition("/")
    if (header(headers, "expect") or "").lower() == "100-continue":
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    return Request(method, target, version, headers, bucket, key, parse_qs(url.query, keep_blank_values=True))


class ConnectionHandler(socketserver.BaseRequestHandler):
    """Serves one connection: its requests one after another, until one closes it or the client goes."""

    server: Any

    def handle(self) -> None:
        opened = open_connection(self.request, self.server.tls)
        if opened is None:
            return
        conn, rfile = opened
        try:
            while self.answer(conn, rfile):
                pass
        except (OSError, ValueError, BodyError, ssl.SSLError):
            pass
        finally:
            rfile.close()
            try:
                conn.close()
            except OSError:
                pass

    def answer(self, conn: socket.socket, rfile: Any) -> bool:
        """Read and answer one request; ``False`` when the connection is done."""
        raise NotImplementedError


class LoopbackServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A threaded server on 127.0.0.1 and a free port, optionally TLS, counting what it answers."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, handler: type[ConnectionHandler], tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.counts = Counts()
        super().__init__(("127.0.0.1", 0), handler, bind_and_activate=False)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)  # inherited by accepted sockets
        self.server_bind()
        self.server_activate()


class BackgroundServer:
    """A loopback server run on a daemon thread of this process; a context manager.

    Subclasses say how to build their ``socketserver`` server (which must
    have a ``counts`` attribute) in :meth:`_make_server`.

    Attributes:
        endpoint_url: ``http(s)://127.0.0.1:PORT`` once started.
        counts: a :class:`Counts` of the requests answered.
    """

    _ids = itertools.count()
    thread_name = "server"

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self._tls = server_context(*tls) if tls else None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""
        self.counts = Counts()

    def _make_server(self) -> Any:
        raise NotImplementedError

    def start(self) -> Any:
        self._server = self._make_server()
        self.counts = self._server.counts
        port = self._server.server_address[1]
        self.endpoint_url = f"{'https' if self._tls else 'http'}://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"{self.thread_name}-{next(self._ids)}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
