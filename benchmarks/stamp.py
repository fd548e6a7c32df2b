"""When and on what a benchmark ran: the first two fields of every results file."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone


def stamp() -> dict[str, str]:
    """``date`` (UTC, to the minute) and ``machine`` (architecture, cores, Python), for a report's JSON."""
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
