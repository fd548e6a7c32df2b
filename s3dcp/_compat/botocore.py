"""What s3dcp relies on below botocore's public API.

* ``StreamingBody._raw_stream``: the urllib3 response below a GetObject
  body, which :mod:`s3dcp._s3.body` reads without botocore's copy.
* One request ``context`` dict shared by an API call's
  ``before-parameter-build`` and ``before-call`` events, which lets a
  ``memoryview`` body pass the parameter validator (see
  :func:`admit_memoryview_bodies`). Each client checks once, when it is
  created, that a view given to it reaches the request intact; if not, its
  views are copied into ``bytes``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from botocore.response import StreamingBody

from ._missing import report_missing

__all__ = ["raw_stream", "admit_memoryview_bodies", "sends_iterable_bodies"]

log = logging.getLogger("s3dcp")

_ABSENT = object()
_PARKED_BODY = "s3dcp_memoryview_body"
_PROBE = b"s3dcp: does a memoryview body arrive intact?"


def raw_stream(body: Any) -> Any:
    """The urllib3 response below a ``StreamingBody``, or ``None`` (read through ``body.read``)."""
    stream = getattr(body, "_raw_stream", _ABSENT)
    if stream is _ABSENT:
        if isinstance(body, StreamingBody):
            report_missing("botocore StreamingBody._raw_stream", "bodies are read through botocore and copied")
        return None
    return stream


class _MemoryviewBodies:
    """The handlers that carry a ``memoryview`` ``Body`` past botocore's validator, for one client.

    The validator takes bytes, bytearray or a file object, though everything
    after it (signing, checksums, urllib3) sends a memoryview as it is; a
    file object would be sent in 16 KiB reads. The view is set aside in the
    request context before validation and put back just before the request
    is built. ``admitted`` turns false if the check finds the view does not
    arrive: then each view is copied into ``bytes`` instead.
    """

    def __init__(self) -> None:
        self.admitted = True

    def park(self, params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
        body = params.get("Body")
        if isinstance(body, memoryview):
            if self.admitted:
                context[_PARKED_BODY] = body
                params["Body"] = b""
            else:
                params["Body"] = body.tobytes()

    def restore(self, params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
        body = context.pop(_PARKED_BODY, None)
        if body is not None:
            params["body"] = body


class _Probed(Exception):
    """Raised by the probe's handler to stop its request before it is signed or sent."""

    def __init__(self, body: Any) -> None:
        super().__init__("probe request stopped")
        self.body = body


def admit_memoryview_bodies(client: Any, operations: Iterable[str]) -> None:
    """Let ``Body`` be a ``memoryview`` in ``operations``; checked once, here, by a request never sent.

    Registered after the checksum handlers, which see the view. The check
    runs a ``PutObject`` through the client's whole pipeline and stops it when
    the request is created, before signing: no credentials are used and
    nothing goes over the network.
    """
    handlers = _MemoryviewBodies()
    for operation in operations:
        client.meta.events.register(f"before-parameter-build.s3.{operation}", handlers.park)
        client.meta.events.register(f"before-call.s3.{operation}", handlers.restore)
    arrived = _probe_body(client)
    if arrived != _PROBE:
        handlers.admitted = False
        report_missing(
            "botocore's request context shared between before-parameter-build and before-call",
            f"a memoryview body arrived as {_describe(arrived)}; this client copies parts into bytes",
        )


def _probe_body(client: Any) -> Any:
    """The body a ``PutObject`` of ``memoryview(_PROBE)`` carries when its request is created."""

    def stop(request: Any, **kwargs: Any) -> None:
        raise _Probed(request.body)

    event = "request-created.s3.PutObject"
    client.meta.events.register_first(event, stop, unique_id="s3dcp-memoryview-probe")
    try:
        client.put_object(Bucket="s3dcp-probe", Key="probe", Body=memoryview(_PROBE))
    except _Probed as probed:
        body = probed.body
        if hasattr(body, "getvalue"):  # botocore's own wrapping of a bytes body
            body = body.getvalue()
        return bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else body
    except Exception as err:  # the pipeline itself refused the view: copy instead
        return err
    finally:
        client.meta.events.unregister(event, unique_id="s3dcp-memoryview-probe")
    return None


def _describe(arrived: Any) -> str:
    if isinstance(arrived, bytes):
        return f"{len(arrived)} bytes that differ from those given"
    if isinstance(arrived, BaseException):
        return f"an error ({arrived!r})"
    return f"a {type(arrived).__name__}"


class _Recorder:
    """A stand-in for a connected socket that records each ``sendall``; refuses what a socket refuses."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: Any, flags: int = 0) -> None:
        with memoryview(data) as view:  # a TypeError for a body that is not bytes-like, as from a socket
            self.sent.append(view.tobytes())

    def settimeout(self, timeout: float | None) -> None:
        pass

    def close(self) -> None:
        pass


class _ProbeBody:
    """An iterable body with a length, as :class:`s3dcp._s3.send.PiecewiseBody` is."""

    def __len__(self) -> int:
        return len(_PROBE)

    def __iter__(self) -> Iterator[memoryview]:
        return iter([memoryview(_PROBE)[:8], memoryview(_PROBE)[8:]])


@functools.cache
def sends_iterable_bodies() -> bool:
    """Whether this process's botocore connection sends an iterable body one ``sendall`` per piece.

    Checked once, by a request ``PUT`` through botocore's own connection
    class onto a recording stand-in for its socket: nothing goes over the
    network. This is the path urllib3 (1.26 and 2.x) and http.client take
    for a body that is not bytes-like and has a ``Content-Length``.
    """
    try:
        from botocore.awsrequest import AWSHTTPConnection

        connection = AWSHTTPConnection("127.0.0.1", 9)
        recorder = _Recorder()
        connection.sock = recorder
        length = str(len(_PROBE))
        connection.request("PUT", "/probe", body=_ProbeBody(), headers={"Content-Length": length})
        head, _, first = recorder.sent[0].partition(b"\r\n\r\n")
        pieces = [first, *recorder.sent[1:]] if first else recorder.sent[1:]
        works = pieces == [_PROBE[:8], _PROBE[8:]] and b"content-length: " + length.encode() in head.lower()
    except Exception as err:  # any surprise in the HTTP stack: send bodies as they are
        report_missing("sending an iterable request body piece by piece", f"parts go in one sendall ({err!r})")
        return False
    if not works:
        report_missing("sending an iterable request body piece by piece", "parts go in one sendall")
    return works
