"""``SSLSocket._sslobj.read``: one C call that decrypts a TLS record into a buffer.

``SSLSocket.recv_into`` reaches it through two Python frames per 16 KiB
record; calling it directly saves about a quarter of a TLS load's CPU (see
:mod:`s3dcp._s3.body`). If it is missing, or once a call fails in a way that
says its signature changed, :func:`record_reader` returns ``None`` for the
rest of the process and bodies are read through ``http.client``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from ._missing import report_missing

__all__ = ["record_reader", "retire_record_reader"]

_NAME = "ssl SSLSocket._sslobj.read"


class _Switch:
    """Whether the direct reads are still used in this process (tests monkeypatch ``on``)."""

    on = True


SWITCH = _Switch()


def record_reader(sock: ssl.SSLSocket) -> Callable[[int, memoryview], int] | None:
    """``sock._sslobj.read`` (``read(count, buffer) -> count``), or ``None`` to use the public path."""
    if not SWITCH.on:
        return None
    read = getattr(_tls_object(sock), "read", None)
    if not callable(read):
        report_missing(_NAME, "TLS bodies are read with http.client's readinto")
        return None
    return read  # type: ignore[no-any-return]


def retire_record_reader(error: BaseException) -> None:
    """Stop using the direct reads in this process after ``error`` (an AttributeError or TypeError)."""
    SWITCH.on = False
    report_missing(_NAME, f"a call failed ({error!r}); TLS bodies are read with http.client's readinto")


def _tls_object(sock: ssl.SSLSocket) -> Any:
    return getattr(sock, "_sslobj", None)
