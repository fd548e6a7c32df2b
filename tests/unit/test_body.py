"""GET bodies land in the caller's buffers whichever reader fits, and connections are reused."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import urllib3
from botocore.response import StreamingBody

import s3dcp._s3.body
from s3dcp._compat import ssl as compat_ssl
from s3dcp._s3.body import open_body
from s3dcp._s3.retry import TruncatedBodyError
from tests.helpers import serve_on_loopback

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections = 0

    def setup(self) -> None:
        super().setup()
        type(self).connections += 1

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(PAYLOAD), 300_000):
                piece = PAYLOAD[start : start + 300_000]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/short":  # promises more than it sends, then hangs up
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.connections = 0
    with serve_on_loopback(_Handler) as url:
        yield url


def read_all(body: StreamingBody, size: int, step: int = 70_000) -> bytes:
    reader = open_body(body, "test")
    target = memoryview(bytearray(size))
    filled = 0
    while filled < size:
        count = reader.read_into(target[filled : filled + step])
        if not count:
            break
        filled += count
    reader.release()
    body.close()
    return bytes(target[:filled])


def streaming(pool: urllib3.PoolManager, url: str) -> StreamingBody:
    response = pool.request("GET", url, preload_content=False, decode_content=False)
    return StreamingBody(response, response.headers.get("Content-Length"))


@pytest.mark.parametrize("path", ["/plain", "/chunked"])
def test_bodies_arrive_whole_and_the_connection_serves_the_next_request(server: str, path: str) -> None:
    pool = urllib3.PoolManager(maxsize=1)
    for _ in range(3):
        assert read_all(streaming(pool, server + path), len(PAYLOAD)) == PAYLOAD
    assert _Handler.connections == 1


def test_a_body_cut_short_reads_what_came_then_reports_the_end(server: str) -> None:
    pool = urllib3.PoolManager(maxsize=1)
    body = streaming(pool, server + "/short")
    reader = open_body(body, "test")
    target = memoryview(bytearray(len(PAYLOAD)))
    filled = 0
    while True:
        try:
            count = reader.read_into(target[filled:])
        except TruncatedBodyError:
            break
        if not count:
            break
        filled += count
    body.close()
    assert bytes(target[:filled]) == PAYLOAD[:filled] and filled <= 1000


def test_a_body_of_another_kind_is_read_and_copied() -> None:
    class Plain:
        def __init__(self) -> None:
            self._at = 0

        def read(self, size: int) -> bytes:
            chunk = PAYLOAD[self._at : self._at + size]
            self._at += len(chunk)
            return chunk

        def close(self) -> None:
            pass

    assert read_all(Plain(), len(PAYLOAD)) == PAYLOAD  # type: ignore[arg-type]


def failing_receiver(after: int) -> Any:
    """A ``_socket_receiver`` whose receive raises TypeError (a changed signature) after ``after`` calls."""

    def receiver(sock: Any) -> Any:
        calls = 0

        def receive(view: memoryview) -> int:
            nonlocal calls
            calls += 1
            if calls > after:
                raise TypeError("read() takes 1 positional argument but 2 were given")
            return int(sock.recv_into(view))

        return receive

    return receiver


def test_a_direct_read_that_fails_before_the_socket_was_read_goes_on_through_http_client(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compat_ssl.SWITCH, "on", True)
    monkeypatch.setattr(s3dcp._s3.body, "_socket_receiver", failing_receiver(after=0))
    pool = urllib3.PoolManager(maxsize=1)
    for _ in range(2):
        assert read_all(streaming(pool, server + "/plain"), len(PAYLOAD)) == PAYLOAD
    assert _Handler.connections == 1  # released as usual after the fallback
    assert not compat_ssl.SWITCH.on  # retired for the process


def test_a_direct_read_that_fails_after_socket_bytes_has_the_request_retried(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compat_ssl.SWITCH, "on", True)
    monkeypatch.setattr(s3dcp._s3.body, "_socket_receiver", failing_receiver(after=1))
    pool = urllib3.PoolManager(maxsize=1)
    body = streaming(pool, server + "/plain")
    reader = open_body(body, "test")
    target = memoryview(bytearray(len(PAYLOAD)))
    with pytest.raises(TruncatedBodyError, match="TypeError"):
        reader.read_into(target)
    body.close()
    assert not compat_ssl.SWITCH.on
