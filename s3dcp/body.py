"""Read a GetObject body into the caller's buffers, with as little work per byte as Python allows.

urllib3's ``read`` returns a new ``bytes`` for every chunk, which the caller
then copies into its buffer. Below urllib3, ``http.client``'s ``readinto``
fills the buffer directly, but over TLS each 16 KiB record still passes
through three Python frames (``SocketIO.readinto``, ``SSLSocket.recv_into``,
``SSLSocket.read``): about a quarter of a TLS load's CPU. So where the
connection is a plain socket or an ``ssl.SSLSocket`` and the body has a
known length, the bytes ``http.client`` already buffered past the headers
are taken first, then each record is read by one C call
(``SSLSocket._sslobj.read``, or ``socket.recv_into`` over plain HTTP)
straight into the buffer. The socket's timeout still applies (the C calls
honour it).

After the last byte, ``http.client`` is told the body is done and the
connection goes back to urllib3's pool, as urllib3 does when it reads a
body to its end; closing the body instead would close the connection.
Whatever does not fit these assumptions (another urllib3, a proxy tunnel,
chunked bodies) is read with ``http.client``'s ``readinto`` or, failing
that, through ``body.read`` and a copy. Every item's digest is checked after
the read in any case.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable
from typing import Any

from .retry import TruncatedBodyError

__all__ = ["BodyReader", "open_body"]


class BodyReader:
    """``read_into(view) -> count`` (0 once the body has ended) and ``release()`` after the last byte."""

    def __init__(self, read_into: Callable[[memoryview], int], release: Callable[[], None]) -> None:
        self.read_into = read_into
        self.release = release


def open_body(body: Any, where: str) -> BodyReader:
    """The fastest reader that fits ``body`` (a botocore ``StreamingBody``); ``where`` names it in errors."""
    stream: Any = getattr(body, "_raw_stream", None)
    response: Any = getattr(stream, "_fp", None)
    if not (
        isinstance(response, http.client.HTTPResponse)
        and hasattr(stream, "release_conn")
        and hasattr(response, "readinto")
    ):
        return _copying_reader(body)
    receive = _socket_receiver(getattr(getattr(stream, "connection", None), "sock", None))
    if receive is None or response.chunked or response.length is None:
        return _http_client_reader(stream, response, where)
    return _socket_reader(stream, response, receive, where)


def _copying_reader(body: Any) -> BodyReader:
    def read_copy(view: memoryview) -> int:
        chunk = body.read(view.nbytes)
        view[: len(chunk)] = chunk
        return len(chunk)

    return BodyReader(read_copy, lambda: None)


def _http_client_reader(stream: Any, response: http.client.HTTPResponse, where: str) -> BodyReader:
    def read_into(view: memoryview) -> int:
        try:
            return int(response.readinto(view))
        except (OSError, http.client.HTTPException) as err:  # reset, timeout, TLS error
            raise TruncatedBodyError(f"reading the body of {where} failed: {err!r}") from err

    def release() -> None:
        if not response.isclosed():  # a chunked body still has its closing, empty chunk
            try:
                if response.read(1):
                    return  # more than was asked for: the connection is left to be closed
            except (OSError, http.client.HTTPException):
                return
        if response.isclosed():  # read to its last byte: the connection can serve another request
            stream.release_conn()

    return BodyReader(read_into, release)


def _socket_receiver(sock: Any) -> Callable[[memoryview], int] | None:
    """One C call that reads what the socket has (one TLS record at most) into a view."""
    if isinstance(sock, ssl.SSLSocket):
        tls: Any = getattr(sock, "_sslobj", None)
        if tls is None or not hasattr(tls, "read"):
            return None

        def receive_tls(view: memoryview) -> int:
            try:
                return int(tls.read(view.nbytes, view))
            except ssl.SSLZeroReturnError:  # the peer closed the TLS session: end of stream
                return 0

        return receive_tls
    if type(sock) is socket.socket:
        return sock.recv_into
    return None


def _socket_reader(
    stream: Any, response: http.client.HTTPResponse, receive: Callable[[memoryview], int], where: str
) -> BodyReader:
    buffered: Any = response.fp  # the BufferedReader http.client read the headers through
    left = int(response.length or 0)
    try:
        ahead = len(buffered.peek()) if left else 0  # body bytes it already holds (reads once if none)
    except (OSError, http.client.HTTPException) as err:
        raise TruncatedBodyError(f"reading the body of {where} failed: {err!r}") from err

    def read_into(view: memoryview) -> int:
        nonlocal left, ahead
        size = min(view.nbytes, left)
        filled = 0
        try:
            if ahead and size:
                filled = buffered.readinto(view[: min(ahead, size)])  # from its buffer: no socket read
                ahead -= filled
            while filled < size:
                count = receive(view[filled:size])
                if not count:
                    break
                filled += count
        except (OSError, http.client.HTTPException) as err:  # reset, timeout, TLS error
            raise TruncatedBodyError(f"reading the body of {where} failed: {err!r}") from err
        left -= filled
        return filled

    def release() -> None:
        if left == 0:
            response.length = 0
            response.read()  # nothing left to read: http.client marks the response finished
            stream.release_conn()

    return BodyReader(read_into, release)
