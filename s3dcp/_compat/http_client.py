"""The undocumented attributes of ``http.client.HTTPResponse`` that the body reader uses.

``fp`` is the buffered reader the headers were read through (it may hold
the first body bytes), ``length`` the body bytes still to come (``None``
when unknown) and ``chunked`` whether the body is chunked. The socket
reader of :mod:`s3dcp._s3.body` needs all three, and sets ``length`` to tell
``http.client`` how much of the body it has taken itself.
"""

from __future__ import annotations

import http.client
from typing import Any

from ._missing import report_missing

__all__ = ["buffered_reader", "known_length", "set_remaining"]


def buffered_reader(response: http.client.HTTPResponse) -> Any:
    """``response.fp`` if it can be peeked at and read into, else ``None``."""
    buffered = getattr(response, "fp", None)
    if hasattr(buffered, "peek") and hasattr(buffered, "readinto"):
        return buffered
    report_missing("http.client HTTPResponse.fp", "bodies are read with http.client's readinto")
    return None


def known_length(response: http.client.HTTPResponse) -> int | None:
    """The body bytes still to come when they are known and not chunked, else ``None``."""
    chunked = getattr(response, "chunked", None)
    length = getattr(response, "length", None)
    if not isinstance(chunked, bool) or not (length is None or isinstance(length, int)):
        report_missing("http.client HTTPResponse.chunked/.length", "bodies are read with http.client's readinto")
        return None
    return None if chunked else length


def set_remaining(response: http.client.HTTPResponse, remaining: int) -> None:
    """Tell ``http.client`` that ``remaining`` body bytes are left, after reading some past it."""
    response.length = remaining
