"""The private parts of urllib3's ``HTTPResponse`` that the body reader uses.

urllib3 keeps the ``http.client.HTTPResponse`` it wraps in ``_fp`` and its
pooled connection, whose socket is ``.sock``, in ``connection``. Reading
from those directly skips urllib3's copy of every chunk (see
:mod:`s3dcp._s3.body`).
"""

from __future__ import annotations

import http.client
from typing import Any

import urllib3

from ._missing import report_missing

__all__ = ["http_client_response", "connection_socket"]

_ABSENT = object()


def http_client_response(stream: Any) -> http.client.HTTPResponse | None:
    """The ``http.client`` response below a urllib3 response, or ``None`` to read through urllib3."""
    if not isinstance(stream, urllib3.HTTPResponse):
        return None
    response = getattr(stream, "_fp", None)
    if isinstance(response, http.client.HTTPResponse) and hasattr(stream, "release_conn"):
        return response
    report_missing("urllib3 HTTPResponse._fp", "bodies are read through urllib3 and copied")
    return None


def connection_socket(stream: Any) -> Any:
    """The socket of the connection a urllib3 response is read from, or ``None``."""
    sock = getattr(getattr(stream, "connection", None), "sock", _ABSENT)
    if sock is _ABSENT:
        report_missing("urllib3 HTTPResponse.connection.sock", "bodies are read with http.client's readinto")
        return None
    return sock
