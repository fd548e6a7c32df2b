"""How many requests a transfer keeps in flight: it starts with a few and tries more while that pays.

A distant store such as S3 answers each request after 10-30 ms and one
connection carries roughly 80-100 MB/s, so filling a fast link takes dozens
of requests at once. A store on the same machine is usually bound by CPU
instead (its own or the client's), and there more requests at once only add
thread switching and part buffers. Rather than guess, a transfer starts at
``initial_concurrency`` requests in flight and measures a round at that
level: as many requests as the level, sent at it. It then tries
:data:`GROWTH` times as many (up to ``max_concurrency``), keeps the new
level if its round moved at least :data:`GAIN` times the bytes per second,
and otherwise goes back to the level before and stays there. Once the store
throttles a request (503 SlowDown) the level halves and stops growing.

A job saves to the same store again and again, so the level a measurement
settled on is kept for the process (:data:`SETTLED`, per endpoint and
direction) and the next transfer of that kind starts there, settled, rather
than paying for the round at the lower level again. A level that throttling
chose is not kept: S3 adds capacity to a busy prefix within minutes.

A round's bytes per second is estimated by Little's law: the requests in
flight (averaged over each one's life) times the median request's bytes per
second. Time when the transfer had nothing to send does not count against a
level, nor does the odd request that also opened a connection, and a level
the transfer never filled shows no gain.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["GAIN", "GROWTH", "SETTLED", "AdaptiveLimit", "Sent"]

log = logging.getLogger("s3dcp")

GROWTH = 4
"""The factor the level grows by (16 to the default maximum of 32 in one step; 8, 32, 128 from 8). Each step costs a round, about one request's time
(1.7 s for a 16 MiB part at 10 MB/s per connection), so a few large steps reach the level a
distant store needs early in a save, where doubling would take a round per step."""

GAIN = 1.3
"""A higher level is kept only if its round moves this many times the bytes per second of the round before.

Four times the requests on a link bound per connection move up to four
times the bytes; on a store bound by CPU they move about as much, give or
take the noise of a round (measured: 0.8-1.3 times against moto on the same
two cores).
"""


SETTLED: dict[tuple[str, str], int] = {}
"""The level each (endpoint, direction) settled at by measuring, in this process.

Written whole and read whole (single dict operations), so threads need no lock; a
forked child keeps its parent's levels, which describe the same store.
"""


class Sent(NamedTuple):
    """When a request was sent, the transfer's request-seconds in flight until then, and in which round."""

    at: float
    area: float
    round: int


class AdaptiveLimit:
    """The number of requests one transfer may have in flight (:attr:`current`), adjusted as it goes.

    Args:
        maximum: the most ever allowed (``max_concurrency``).
        initial: the level to start at (``initial_concurrency``); at or above
            ``maximum`` the level is fixed at ``maximum``.
        throttled: a count of requests the store has throttled so far (the
            client's), read at each round's end.
        clock: seconds, monotonic; tests pass a fake.
        settled: start at ``initial`` and stay there (a level an earlier
            transfer settled at); throttling still halves it.
        remember: called with the level once a measurement settles it, unless
            the higher level was never really filled (the transfer ran out of
            work, which says nothing of the store).
    """

    def __init__(
        self,
        maximum: int,
        initial: int,
        throttled: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
        settled: bool = False,
        remember: Callable[[int], None] = lambda level: None,
    ) -> None:
        self.maximum = maximum
        self.current = min(initial, maximum)
        self.rounds: list[tuple[int, float]] = []  # (level, bytes per second) of each round measured
        self._settled = settled or self.current >= maximum
        self._remember = remember
        self._throttled = throttled
        self._clock = clock
        self._lock = threading.Lock()
        self._rates: list[float] = []  # bytes per second of each request of this round
        self._crowds: list[float] = []  # the mean requests in flight over each one's life, itself included
        self._in_flight = 0
        self._area = 0.0  # requests in flight integrated over time
        self._last = clock()
        self._throttles_before = throttled()
        self._previous_rate = 0.0
        self._previous_level = self.current

    @classmethod
    def fixed(cls, level: int) -> AdaptiveLimit:
        """A limit that stays at ``level``."""
        return cls(level, level)

    def started(self) -> Sent:
        """A request is being sent; pass what this returns to :meth:`finished`, whatever the outcome."""
        with self._lock:
            now = self._advance()
            self._in_flight += 1
            return Sent(now, self._area, len(self.rounds))

    def finished(self, started: Sent, size: int) -> None:
        """A request moved ``size`` bytes (0: it failed); at a round's end, the level may change.

        A round is as many requests as the level. Its throughput is taken, by
        Little's law, as the requests in flight (averaged over each one's
        life) times the median request's bytes per second. That leaves out time when the transfer had nothing to send
        and the odd request that also opened a connection, and a level the
        transfer did not fill does not count as a gain.
        """
        with self._lock:
            now = self._advance()
            seconds = now - started.at
            crowd = (self._area - started.area) / seconds if seconds > 0 else float(self._in_flight)
            self._in_flight -= 1
            if size <= 0 or started.round != len(self.rounds):
                return  # failed, or sent at another level
            self._rates.append(size / max(seconds, 1e-6))
            self._crowds.append(crowd)
            if len(self._rates) < self.current:
                return
            before, measured = self.current, len(self.rounds)
            throttles = self._throttled()
            if throttles > self._throttles_before:
                self.current = max(1, self.current // 2)
                self._settled = True
                self.rounds.append((before, 0.0))
            elif not self._settled:
                crowd = statistics.fmean(self._crowds)
                rate = crowd * statistics.median(self._rates)
                self.rounds.append((self.current, rate))
                if rate >= GAIN * self._previous_rate:  # this level pays
                    if self.current >= self.maximum:
                        self._settled = True
                        self._remember(self.current)
                    else:
                        self._previous_rate, self._previous_level = rate, self.current
                        self.current = min(GROWTH * self.current, self.maximum)
                else:
                    self.current = self._previous_level  # the level before moved as much, with fewer requests
                    self._settled = True
                    if crowd >= GAIN * self.current:  # the higher level was really tried
                        self._remember(self.current)
            self._throttles_before = throttles
            self._rates, self._crowds = [], []
        if len(self.rounds) != measured:
            log.debug("requests in flight %d -> %d (rounds: %s)", before, self.current, self._describe())

    def _advance(self) -> float:
        """Bring the integral of requests in flight up to now (under the lock); now."""
        now = self._clock()
        self._area += self._in_flight * (now - self._last)
        self._last = now
        return now

    def _describe(self) -> str:
        return ", ".join(f"{level} at {rate / 1e6:.0f} MB/s" for level, rate in self.rounds) or "none"

    @property
    def settled(self) -> bool:
        """True once the level no longer grows."""
        return self._settled
