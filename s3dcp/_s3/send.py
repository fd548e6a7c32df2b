"""Request bodies handed to the socket a piece at a time, so a slow link is not taken for a dead one.

While urllib3 sends a request, the socket's timeout is the *connect*
timeout, and since Python 3.5 a socket timeout bounds a whole ``sendall``.
A part given as one buffer (16 MiB by default) is one ``sendall``: at
1.5 MB/s it takes 11 s, more than the default ``connect_timeout`` of 5 s, so
every attempt timed out and the save failed on a link that was only slow.

:class:`PiecewiseBody` wraps the part: it has a length (botocore sets
``Content-Length`` from it) and iterates over pieces of the part, which
urllib3 2.x (``body_to_chunks``) and http.client under urllib3 1.25/1.26
(its ``send`` falls back to iterating a body that is not bytes-like) send one
``sendall`` each. The timeout then bounds each piece, and the piece size
(:func:`piece_size`) is ``connect_timeout`` times :data:`SLOWEST_SEND`: a
send is given up when the connection moves less than that rate (64 KiB/s,
low because a save's many connections share one link) over a
``connect_timeout``, whatever ``connect_timeout`` is (within the piece
size's bounds: 64 KiB to 64 MiB).

Why pieces rather than setting the socket's timeout for the send to a
budget of bytes over a minimum rate: the socket is urllib3's, reached only
through private names while it sends, and urllib3 sets the timeout itself
just before sending. A body that iterates needs nothing private.

The part is swapped for its :class:`PiecewiseBody` on botocore's
``before-send`` event, after the request is signed and its checksums
computed from the plain buffer: signing (the payload's SHA-256 over plain
HTTP) and s3dcp's checksum hooks still see bytes. Each attempt builds a new
request, so a retry sends the part again from its first byte.

Each send also records, for its thread, how far it got
(:class:`SendProgress`): :meth:`S3Client.run <s3dcp._s3.client.S3Client.run>`
takes it after a failed attempt (:func:`watch_sends`), so an error can say
how far the body got and the rate the link stayed under (a piece that did
not go in ``connect_timeout``). No average rate: the first megabytes of a
send only fill kernel buffers, so an average says little of the link.
Taking it also releases the views of the part a failed send left behind,
so a part buffer can be resized or reused however long the failed
attempt's traceback is kept.

What the socket has accepted may still be in kernel buffers (a few MB per
connection): the last of a body can look sent while the link still carries
it. The wait for the answer after it is bounded by ``read_timeout``.

If the installed urllib3 / http.client do not send such a body piece by
piece (checked once per process, without the network, by
:func:`s3dcp._compat.botocore.sends_iterable_bodies`), bodies are sent as
they are, as before.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from s3dcp._compat import botocore as _botocore

__all__ = [
    "SLOWEST_SEND",
    "PiecewiseBody",
    "describe_rate",
    "SendProgress",
    "install_piecewise_sends",
    "piece_size",
    "watch_sends",
]

# bytes/s: a send moving less than this over a connect_timeout is given up. Low, because the
# connections of a save share the link: 32 of them (max_concurrency) on 20 Mbit/s get 78 KB/s each
SLOWEST_SEND = 64 * 1024
MIN_PIECE = 64 * 1024  # never smaller pieces, however short connect_timeout is
MAX_PIECE = 64 * 1024 * 1024  # nor larger ones, however long (an infinite one included)

_local = threading.local()


def piece_size(connect_timeout: float) -> int:
    """Bytes per ``sendall``: what :data:`SLOWEST_SEND` moves in ``connect_timeout``, within the bounds above."""
    return int(max(MIN_PIECE, min(MAX_PIECE, connect_timeout * SLOWEST_SEND)))


@dataclass(frozen=True)
class SendProgress:
    """How far one request body got: ``sent`` of its ``total`` bytes, handed over ``piece`` bytes at a time."""

    sent: int
    total: int
    piece: int

    def describe(self, timeout: float) -> str:
        """What a send that timed out after ``timeout`` seconds says of the link, for error messages."""
        return (
            f"{self.sent / 1e6:.1f} of {self.total / 1e6:.1f} MB had gone when a piece of {self.piece // 1024} KiB "
            f"did not go in {timeout:g} s: under {describe_rate(self.piece / timeout)}"
        )


def describe_rate(per_second: float) -> str:
    """``"328 KB/s"`` below a MB/s, else ``"1.50 MB/s"``."""
    if per_second < 1e6:
        return f"{per_second / 1e3:.0f} KB/s"
    return f"{per_second / 1e6:.2f} MB/s"


class _Pieces:
    """One pass over a body's pieces; the views it made are released when it ends or is released."""

    def __init__(self, data: Any, piece: int) -> None:
        self._view: memoryview | None = memoryview(data).cast("B")
        self._total = self._view.nbytes
        self._piece = piece
        self._current: memoryview | None = None
        self._at = 0  # bytes handed out before the current piece
        _local.sending = self

    def __iter__(self) -> _Pieces:
        return self

    def __next__(self) -> memoryview:
        view = self._view
        if self._current is not None:  # the caller is back for more: the last piece was sent
            self._at += self._current.nbytes
            self._current.release()
            self._current = None
        if view is None or self._at >= view.nbytes:
            self.release()
            raise StopIteration
        self._current = view[self._at : self._at + self._piece]
        return self._current

    def progress(self) -> SendProgress:
        return SendProgress(sent=self._at, total=self._total, piece=self._piece)

    def release(self) -> None:
        """Let go of the body's memory: a failed send's views would otherwise pin it until collected."""
        for view in (self._current, self._view):
            if view is not None:
                try:
                    view.release()
                except BufferError:  # something still reads it: the view goes when that lets go of it
                    pass
        self._current = self._view = None


class PiecewiseBody:
    """A request body that is sent ``piece`` bytes per ``sendall``; see the module docstring.

    Holds the buffer itself, not a view of it: views exist only while a pass
    over it is under way.
    """

    def __init__(self, data: bytes | bytearray | memoryview, piece: int) -> None:
        if piece < 1:
            raise ValueError(f"piece must be at least 1 byte, got {piece}")
        with memoryview(data) as view:
            self._total = view.nbytes
        self._data = data
        self.piece = piece

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[memoryview]:
        return _Pieces(self._data, self.piece)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Back to the start only, which every pass starts from anyway.

        botocore rewinds a body before it sends a request again (after an S3
        region redirect, say). No ``read`` and no ``tell``: with those,
        urllib3 and http.client would take this for a file.
        """
        if offset != 0 or whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a PiecewiseBody can only be rewound to its start")
        return 0

    def __repr__(self) -> str:
        return f"PiecewiseBody({self._total} bytes, {self.piece} per send)"


@contextmanager
def watch_sends(seen: list[SendProgress | None]) -> Iterator[None]:
    """Around one attempt: on failure, append how far its last body got (``None``: it sent none).

    Always releases what that send left behind.
    """
    _local.sending = None
    try:
        yield
    except BaseException:
        sending: _Pieces | None = getattr(_local, "sending", None)
        seen.append(None if sending is None else sending.progress())
        raise
    finally:
        left: _Pieces | None = getattr(_local, "sending", None)
        _local.sending = None
        if left is not None:
            left.release()


class _Sends:
    """The ``before-send`` handler of one client: parts above one piece become :class:`PiecewiseBody`."""

    def __init__(self, piece: int) -> None:
        self.piece = piece

    def wrap(self, request: Any, **kwargs: Any) -> None:
        body = getattr(request, "body", None)
        if not isinstance(body, (bytes, bytearray, memoryview)):
            return  # a file object (sent in urllib3's blocks already), or nothing
        wrapped = PiecewiseBody(body, self.piece)
        if len(wrapped) > self.piece:  # one piece or less: one sendall either way
            request.body = wrapped


def install_piecewise_sends(client: Any, operations: tuple[str, ...], connect_timeout: float) -> None:
    """Send the bodies of ``operations`` piece by piece, if this environment's HTTP stack can."""
    if not _botocore.sends_iterable_bodies():
        return
    sends = _Sends(piece_size(connect_timeout))
    for operation in operations:
        client.meta.events.register(f"before-send.s3.{operation}", sends.wrap)
