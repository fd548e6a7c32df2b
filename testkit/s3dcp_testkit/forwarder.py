"""A counting HTTP forwarder, optionally terminating TLS, for the benchmarks.

``CountingForwarder`` listens on 127.0.0.1 and a free port and relays each
client connection to one upstream HTTP server (moto, for the benchmarks),
request by request: it reads the request head, copies the body (by
``Content-Length`` or chunked framing), then copies the response back. It
counts requests and the body bytes in both directions, which is how the
benchmarks know how many requests a client sent and how many bytes a load
fetched, whatever the client library. With ``tls=(cert, key)`` clients
speak HTTPS to it while it speaks plain HTTP upstream, which puts a real TLS
hop in front of a server that has none.

``Expect: 100-continue`` is answered by the forwarder itself (the upstream
never sees it), so clients do not wait for an interim answer the upstream
might not send. Unsigned ``aws-chunked`` bodies (botocore sends them over
HTTPS, with a trailing checksum) are decoded on the way and forwarded as
plain bodies without the trailer: moto decodes them by repeated ``bytes``
concatenation, which takes minutes for a 256 MiB object and would measure
moto, not the client. The counts keep the bytes the client sent. Other
chunked bodies are passed on chunked (not necessarily in the same chunks).
Decoding rewrites the signed ``x-amz-content-sha256`` header, so only an
upstream that does not check signatures (moto, the memory store) accepts
such a request; in front of Ceph RGW, clients must not send aws-chunked
bodies (botocore's ``request_checksum_calculation="when_required"``, which
that RGW needs over HTTPS anyway).
"""

from __future__ import annotations

import socket
import socketserver
import ssl
from pathlib import Path
from typing import Any

from s3dcp_testkit.http_framing import Body, BodyError, copy, copy_chunked, encode_head, header, is_chunked, read_head
from s3dcp_testkit.loopback import RECV_BUFFER, BackgroundServer, Counts, open_connection

COPY_CHUNK = 1024 * 1024


def _unsigned_aws_chunked(headers: list[tuple[str, str]]) -> bool:
    return (
        header(headers, "x-amz-content-sha256") == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        and header(headers, "x-amz-decoded-content-length") is not None
    )


def _plain_body_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers for the same request with its aws-chunked body decoded (the trailing checksum is dropped)."""
    dropped = {
        "content-length",
        "transfer-encoding",
        "x-amz-content-sha256",
        "x-amz-trailer",
        "x-amz-decoded-content-length",
    }
    plain = [(k, v) for k, v in headers if k.lower() not in dropped and k.lower() != "content-encoding"]
    encodings = [e.strip() for e in (header(headers, "content-encoding") or "").split(",")]
    encodings = [e for e in encodings if e and e != "aws-chunked"]
    if encodings:
        plain.append(("Content-Encoding", ", ".join(encodings)))
    plain += [
        ("Content-Length", header(headers, "x-amz-decoded-content-length") or "0"),
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
    ]
    return plain


def _copy_aws_chunked(body: Body, out: socket.socket, buffer: memoryview) -> None:
    """Pass on the payload of an unsigned aws-chunked body, dropping its framing and trailer.

    aws-chunked framing is HTTP's chunked framing, inside the HTTP body.
    """
    payload = Body(body, None)
    while got := payload.readinto(buffer):
        out.sendall(buffer[:got])
    body.drain(buffer)  # nothing, unless the client sent more after the closing blank line


def upstream_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http://host:port`` URL."""
    host, _, port = url.split("://", 1)[1].rstrip("/").rpartition(":")
    return host, int(port)


class Upstream:
    """One plain HTTP connection to the upstream, reopened when the upstream closes it."""

    def __init__(self, address: tuple[str, int]) -> None:
        self._address = address
        self.sock: socket.socket | None = None
        self.rfile: Any = None

    def ensure(self) -> None:
        if self.sock is None:
            self.sock = socket.create_connection(self._address, timeout=300)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            self.rfile = self.sock.makefile("rb", buffering=256 * 1024)

    def close(self) -> None:
        if self.sock is not None:
            self.rfile.close()
            self.sock.close()
        self.sock, self.rfile = None, None


class RelayHandler(socketserver.BaseRequestHandler):
    """One client connection, relayed request by request; the hooks below let a subclass pace or delay it."""

    server: RelayServer

    def handle(self) -> None:
        opened = open_connection(self.request, self.server.tls)
        if opened is None:
            return
        conn, rfile = self._connection(*opened)
        upstream = Upstream(self.server.upstream)
        buffer = memoryview(bytearray(COPY_CHUNK))
        try:
            while self._relay_one(conn, rfile, upstream, buffer):
                pass
        except (OSError, ValueError, BodyError, ssl.SSLError):
            pass
        finally:
            upstream.close()
            rfile.close()
            try:
                conn.close()
            except OSError:
                pass

    def _connection(self, conn: socket.socket, rfile: Any) -> tuple[Any, Any]:
        """The connection and its reader as the relay uses them (a subclass may wrap them)."""
        return conn, rfile

    def _operation(self, request_line: str, headers: list[tuple[str, str]]) -> str:
        """The name a request is counted under: its HTTP method."""
        return request_line.split(" ", 1)[0]

    def _request_sent(self) -> None:
        """Called once a request's body has been passed upstream."""

    def _answering(self, operation: str) -> None:
        """Called just before the first byte of the answer (its status line) goes to the client."""

    def _relay_one(self, conn: Any, rfile: Any, upstream: Upstream, buffer: memoryview) -> bool:
        head = read_head(rfile)
        if head is None:
            return False
        return self._relay(conn, rfile, upstream, buffer, *head)

    def _relay(
        self,
        conn: Any,
        rfile: Any,
        upstream: Upstream,
        buffer: memoryview,
        request_line: str,
        headers: list[tuple[str, str]],
    ) -> bool:
        """Relay one request whose head has been read, and its answer; False when the connection is done."""
        method = request_line.split(" ", 1)[0]
        operation = self._operation(request_line, headers)
        if (header(headers, "expect") or "").lower() == "100-continue":
            headers = [(k, v) for k, v in headers if k.lower() != "expect"]
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        client_close = (header(headers, "connection") or "").lower() == "close"
        upstream.ensure()
        assert upstream.sock is not None
        length = header(headers, "content-length")
        if _unsigned_aws_chunked(headers):
            upstream.sock.sendall(encode_head(request_line, _plain_body_headers(headers)))
            body = Body.of(rfile, is_chunked(headers), length)
            _copy_aws_chunked(body, upstream.sock, buffer)
            sent = body.total
        else:
            upstream.sock.sendall(encode_head(request_line, headers))
            if is_chunked(headers):
                sent = copy_chunked(Body(rfile, None), upstream.sock, buffer)
            else:
                sent = copy(rfile, upstream.sock, int(length), buffer) if length else 0
        self._request_sent()

        while True:  # skip interim 1xx answers
            answer = read_head(upstream.rfile)
            if answer is None:
                raise BodyError("upstream closed without answering")
            status_line, response_headers = answer
            status = int(status_line.split(" ", 2)[1])
            if status >= 200:
                break
        upstream_close = (header(response_headers, "connection") or "").lower() == "close"
        # the client keeps its connection even if the upstream drops its own after this answer
        forwarded = [(k, v) for k, v in response_headers if k.lower() != "connection" or client_close]
        length = header(response_headers, "content-length")
        no_body = method == "HEAD" or status in (204, 304)
        known = 0 if no_body else int(length) if length is not None and not is_chunked(response_headers) else None
        if known is not None:  # counted before the client can see the answer, so a count taken
            self.server.counts.add(operation, sent, known)  # right after the client is done includes it
        self._answering(operation)
        conn.sendall(encode_head(status_line, forwarded))
        until_close = False
        if known is not None:
            copy(upstream.rfile, conn, known, buffer)
        elif is_chunked(response_headers):
            self.server.counts.add(operation, sent, copy_chunked(Body(upstream.rfile, None), conn, buffer))
        else:  # body until the upstream closes: pass it on, then close the client too
            received = 0
            while True:
                got = upstream.rfile.readinto(buffer)
                if not got:
                    break
                conn.sendall(buffer[:got])
                received += got
            self.server.counts.add(operation, sent, received)
            client_close = until_close = True
        if upstream_close or until_close:
            upstream.close()
        return not client_close


class RelayServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        upstream: tuple[str, int],
        tls: ssl.SSLContext | None,
        handler: type[RelayHandler] = RelayHandler,
        receive_buffer: int = RECV_BUFFER,
    ) -> None:
        self.upstream = upstream
        self.tls = tls
        self.counts = Counts()
        super().__init__(("127.0.0.1", 0), handler, bind_and_activate=False)
        # asked of the kernel for the listening socket, whose accepted connections inherit it
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.server_bind()
        self.server_activate()


class CountingForwarder(BackgroundServer):
    """Relays HTTP(S) on 127.0.0.1:PORT to ``upstream_url`` (plain HTTP); a context manager.

    Attributes:
        endpoint_url: what clients use, once started.
        counts: a :class:`loopback.Counts` keyed by HTTP method.
    """

    thread_name = "forwarder"

    def __init__(self, upstream_url: str, tls: tuple[Path, Path] | None = None) -> None:
        super().__init__(tls)
        self._upstream = upstream_address(upstream_url)

    def _make_server(self) -> RelayServer:
        return RelayServer(self._upstream, self._tls)
