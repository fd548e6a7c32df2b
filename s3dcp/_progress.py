"""The progress line of long commands (``cp``, ``verify``): objects, bytes, percentage and rate.

It rewrites one line on a terminal and writes nothing when the stream is
not one (a pipe, a log file, a CI job), so scripts read only the result.
Bytes are counted as they flow, so one huge object does not freeze it;
those updates are drawn at most every ``interval`` seconds, an object done
is always drawn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "human_bytes"]


def human_bytes(size: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: sizes the way people read them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class Progress:
    """One self-rewriting line on ``stream`` while objects and bytes are done; silent off a terminal.

    Every method may be called from several threads at once.

    Args:
        verb: what is being done, in the past tense (``"copied"``).
        total_objects, total_bytes: how much there is in all, when known
            (or later, with :meth:`set_totals`); the line shows a percentage
            once the bytes are known.
        stream: where to draw, normally ``sys.stderr``.
        clock: seconds, for the rate and the redraw interval (tests pass a fake).
        interval: the least time between two redraws caused by bytes alone.
    """

    def __init__(
        self,
        verb: str,
        total_objects: int | None,
        total_bytes: int | None,
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.2,
    ) -> None:
        self.verb, self.total_objects, self.total_bytes, self.stream = verb, total_objects, total_bytes, stream
        self.objects = self.bytes = 0
        self._clock, self._interval = clock, interval
        self._started = clock()
        self._drawn_at: float | None = None
        self._width = 0
        self._lock = threading.Lock()
        self._live = stream.isatty()

    def set_totals(self, objects: int, nbytes: int) -> None:
        """How many objects and bytes there are in all, once the command knows."""
        with self._lock:
            self.total_objects, self.total_bytes = objects, nbytes

    def add_bytes(self, nbytes: int) -> None:
        """``nbytes`` more were moved (negative: a failed attempt's bytes taken back)."""
        with self._lock:
            self.bytes += nbytes
            now = self._clock()
            if self._drawn_at is None or now - self._drawn_at >= self._interval:
                self._draw(now)

    def object_done(self, _name: str, _size: int) -> None:
        """One more object is done (its bytes came through :meth:`add_bytes`)."""
        with self._lock:
            self.objects += 1
            self._draw(self._clock())

    def __call__(self, name: str, size: int) -> None:
        """One more object of ``size`` bytes is done, for callers that do not report bytes as they flow."""
        with self._lock:
            self.bytes += size
        self.object_done(name, size)

    def line(self, now: float) -> str:
        """The text of the progress line at time ``now``."""
        of_objects = f"/{self.total_objects}" if self.total_objects else ""
        text = f"{self.verb} {self.objects}{of_objects} objects, {human_bytes(self.bytes)}"
        if self.total_bytes:
            share = min(100, max(0, self.bytes * 100 // self.total_bytes))
            text += f" of {human_bytes(self.total_bytes)} ({share}%)"
        elapsed = now - self._started
        if elapsed > 0 and self.bytes > 0:
            text += f", {human_bytes(self.bytes / elapsed)}/s"
        return text

    def _draw(self, now: float) -> None:
        if not self._live:
            return
        text = self.line(now)
        self.stream.write("\r" + text.ljust(self._width))  # spaces wipe what a longer line left
        self.stream.flush()
        self._width = len(text)
        self._drawn_at = now

    def done(self) -> None:
        """Draw the final state and end the line (nothing if nothing was drawn)."""
        with self._lock:
            if self._live and self._drawn_at is not None:
                self._draw(self._clock())
                self.stream.write("\n")
                self.stream.flush()
