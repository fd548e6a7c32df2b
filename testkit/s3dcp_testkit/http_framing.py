"""HTTP/1.1 framing for the loopback servers: message heads, and bodies framed by length or chunked.

One parser for every server here: :class:`Body` reads a body whose end is
given by ``Content-Length`` or by ``Transfer-Encoding: chunked`` framing
(chunk extensions skipped, trailers kept), as a stream (``readinto``,
``readline``) or whole (``read``). The helpers below drop a body, copy it
to a socket, or copy it re-framed as chunks.
"""

from __future__ import annotations

import socket
from typing import Any

LINE_LIMIT = 65537  # longest head or chunk-size line read


class BodyError(Exception):
    """A message ended before its framing said it would."""


def read_head(rfile: Any) -> tuple[str, list[tuple[str, str]]] | None:
    """One request or status line and its headers; None at a clean end of stream."""
    line = rfile.readline(LINE_LIMIT)
    while line in (b"\r\n", b"\n"):  # tolerate stray blank lines between messages
        line = rfile.readline(LINE_LIMIT)
    if not line:
        return None
    headers: list[tuple[str, str]] = []
    while True:
        field = rfile.readline(LINE_LIMIT)
        if field in (b"\r\n", b"\n", b""):
            break
        name, _, value = field.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return line.decode("latin-1").rstrip("\r\n"), headers


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The value of the first header called ``name`` (any case), or None."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def is_chunked(headers: list[tuple[str, str]]) -> bool:
    return (header(headers, "transfer-encoding") or "").lower().endswith("chunked")


def encode_head(first_line: str, headers: list[tuple[str, str]]) -> bytes:
    return ("\r\n".join([first_line] + [f"{k}: {v}" for k, v in headers]) + "\r\n\r\n").encode("latin-1")


class Body:
    """A message body as a stream, framed by a length (``length``) or chunked (``length=None``).

    ``total`` counts the payload bytes read; ``trailers`` holds a chunked
    body's trailer lines once it has been read to the end.
    """

    def __init__(self, rfile: Any, length: int | None) -> None:
        self._rfile = rfile
        self._chunked = length is None
        self._left = 0 if length is None else length
        self._done = length == 0
        self._started = False
        self.total = 0
        self.trailers: list[bytes] = []

    @classmethod
    def of(cls, rfile: Any, chunked: bool, content_length: str | None) -> Body:
        """The body a message with these headers carries (none without a length or chunked framing)."""
        return cls(rfile, None if chunked else int(content_length or 0))

    def _fill(self) -> None:
        while self._chunked and self._left == 0 and not self._done:
            if self._started:
                self._rfile.readline(LINE_LIMIT)  # CRLF after the previous chunk
            self._started = True
            size_line = self._rfile.readline(LINE_LIMIT)
            if not size_line:
                raise BodyError("chunked body ended early")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (line := self._rfile.readline(LINE_LIMIT)) not in (b"\r\n", b"\n", b""):
                    self.trailers.append(line)
                self._done = True
            self._left = size
        if not self._chunked and self._left == 0:
            self._done = True

    def readinto(self, buffer: memoryview) -> int:
        """Read up to ``len(buffer)`` payload bytes, never across a chunk's end; 0 at the end."""
        self._fill()
        if self._done:
            return 0
        got = self._rfile.readinto(buffer[: min(len(buffer), self._left)])
        if not got:
            raise BodyError("body ended early")
        self._left -= got
        self.total += got
        return int(got)

    def readline(self, limit: int = LINE_LIMIT) -> bytes:
        line = bytearray()
        while len(line) < limit and not line.endswith(b"\n"):
            self._fill()
            if self._done:
                break
            part = self._rfile.readline(min(limit - len(line), self._left))
            if not part:
                raise BodyError("body ended early")
            self._left -= len(part)
            self.total += len(part)
            line += part
        return bytes(line)

    def read(self) -> bytes:
        """The rest of the payload."""
        data = bytearray()
        buffer = memoryview(bytearray(1 << 20))
        while got := self.readinto(buffer):
            data += buffer[:got]
        return bytes(data)

    def drain(self, buffer: memoryview) -> int:
        """Read and drop the rest of the payload; returns ``total``."""
        while self.readinto(buffer):
            pass
        return self.total


def copy(source: Any, out: socket.socket, length: int, buffer: memoryview) -> int:
    """Send exactly ``length`` bytes read from ``source`` (a file or a :class:`Body`) to ``out``."""
    left = length
    while left:
        got = source.readinto(buffer[: min(left, len(buffer))])
        if not got:
            raise BodyError("body ended early")
        out.sendall(buffer[:got])
        left -= got
    return length


def copy_chunked(body: Body, out: socket.socket, buffer: memoryview) -> int:
    """Send the rest of ``body`` to ``out`` as a chunked body (trailers included); returns its payload size."""
    while got := body.readinto(buffer):
        out.sendall(b"%x\r\n" % got)
        out.sendall(buffer[:got])
        out.sendall(b"\r\n")
    out.sendall(b"0\r\n" + b"".join(body.trailers) + b"\r\n")
    return body.total
