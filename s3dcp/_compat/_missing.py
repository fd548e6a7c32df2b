"""The one DEBUG line a compat lookup writes when a private name is gone or changed."""

from __future__ import annotations

import logging
import threading

__all__ = ["report_missing"]

log = logging.getLogger("s3dcp")

_lock = threading.Lock()
_reported: set[str] = set()  # append-only: what has been said once need not be said again


def report_missing(name: str, consequence: str) -> None:
    """Log, once per process, that ``name`` is not what s3dcp expects and what s3dcp does instead."""
    with _lock:
        if name in _reported:
            return
        _reported.add(name)
    log.debug("%s is missing or changed in this environment: %s", name, consequence)
