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

The private names this needs (botocore's, urllib3's, http.client's and
ssl's) are looked up through :mod:`s3dcp._compat`: one that is missing
means the plain path. A direct read that fails as if its signature changed
retires the direct TLS reads for the process; the body goes on through
``http.client`` if no byte came from the socket yet, else the request is
retried (:class:`~s3dcp._s3.retry.TruncatedBodyError`).
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable
from typing import Any

from s3dcp._compat import botocore as _botocore
from s3dcp._compat import http_client as _http_client
from s3dcp._compat import ssl as _ssl
from s3dcp._compat import urllib3 as _urllib3
from s3dcp._s3.retry import TruncatedBodyError

__all__ = ["BodyReader", "open_body"]


class BodyReader:
    """``read_into(view) -> count`` (0 once the body has ended) and ``release()`` after the last byte."""

    def __init__(self, read_into: Callable[[memoryview], int], release: Callable[[], None]) -> None:
        self.read_into = read_into
        self.release = release


def open_body(body: Any, where: str) -> BodyReader:
    """The fastest reader that fits ``body`` (a botocore ``StreamingBody``); ``where`` names it in errors."""
    stream: Any = _botocore.raw_stream(body)
    response = _urllib3.http_client_response(stream)
    if response is None or not hasattr(response, "readinto"):
        return _copying_reader(body)
    receive = _socket_receiver(_urllib3.connection_socket(stream))
    length = _http_client.known_length(response) if receive is not None else None
    buffered = _http_client.buffered_reader(response) if length is not None else None
    if receive is None or length is None or buffered is None:
        return _http_client_reader(stream, response, where)
    return _socket_reader(stream, response, buffered, length, receive, where)


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
        tls_read = _ssl.record_reader(sock)
        if tls_read is None:
            return None

        def receive_tls(view: memoryview) -> int:
            try:
                return int(tls_read(view.nbytes, view))
            except ssl.SSLZeroReturnError:  # the peer closed the TLS session: end of stream
                return 0

        return receive_tls
    if type(sock) is socket.socket:
        return sock.recv_into
    return None


def _socket_reader(
    stream: Any,
    response: http.client.HTTPResponse,
    buffered: Any,
    length: int,
    receive: Callable[[memoryview], int],
    where: str,
) -> BodyReader:
    """Read ``length`` bytes: those ``buffered`` (http.client's reader) holds, then by ``receive``.

    Should ``receive`` fail with AttributeError or TypeError (a private name
    changed), the direct reads are retired for the process; if no byte had
    come from the socket yet, this body goes on through ``http.client``,
    else :class:`TruncatedBodyError` has the request retried.
    """
    left = length
    taken = 0  # bytes taken from the buffer so far (all of them when the socket was not read yet)
    try:
        ahead = len(buffered.peek()) if left else 0  # body bytes it already holds (reads once if none)
    except (OSError, http.client.HTTPException) as err:
        raise TruncatedBodyError(f"reading the body of {where} failed: {err!r}") from err
    plain: BodyReader | None = None  # http.client's reader, once the direct reads failed

    def read_into(view: memoryview) -> int:
        nonlocal left, ahead, taken, plain
        if plain is not None:
            return plain.read_into(view)
        size = min(view.nbytes, left)
        filled = 0
        try:
            if ahead and size:
                filled = buffered.readinto(view[: min(ahead, size)])  # from its buffer: no socket read
                ahead -= filled
                taken += filled
            while filled < size:
                count = receive(view[filled:size])
                if not count:
                    break
                filled += count
        except (OSError, http.client.HTTPException) as err:  # reset, timeout, TLS error
            raise TruncatedBodyError(f"reading the body of {where} failed: {err!r}") from err
        except (AttributeError, TypeError) as err:  # a private name changed under the direct read
            _ssl.retire_record_reader(err)
            if length - left + filled != taken:  # bytes already came from the socket: start again
                raise TruncatedBodyError(f"reading the body of {where} failed: {err!r}") from err
            left -= filled
            _http_client.set_remaining(response, left)
            plain = _http_client_reader(stream, response, where)
            return filled + (plain.read_into(view[filled:size]) if filled < size else 0)
        left -= filled
        return filled

    def release() -> None:
        if plain is not None:
            plain.release()
        elif left == 0:
            _http_client.set_remaining(response, 0)
            response.read()  # nothing left to read: http.client marks the response finished
            stream.release_conn()

    return BodyReader(read_into, release)
