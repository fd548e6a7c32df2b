"""Waits that Ctrl-C and SIGTERM can end, wherever the kernel delivers them.

Python runs signal handlers in the main thread only, but the kernel gives a
signal sent to the process to any one of its threads that does not block it.
If a transfer thread gets it, a main thread asleep in an untimed wait (a
``Condition``, ``concurrent.futures.wait``, ``Future.result``) is not woken:
the handler runs only once that wait ends by itself, which with requests
stalled on the network can be minutes. So:

* the caller's thread waits in slices of ``WAKE_INTERVAL`` and goes back to
  the interpreter in between, where a pending handler runs (and raises);
* the threads s3dcp starts block SIGINT and SIGTERM
  (:func:`leave_signals_to_main_thread`), so the kernel hands those to a
  thread that can act on them, and a main thread blocked in a socket read
  is interrupted at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future, wait
from typing import Any, TypeVar

__all__ = ["WAKE_INTERVAL", "leave_signals_to_main_thread", "result_of", "wait_futures", "wait_until"]

T = TypeVar("T")

# how long a pending Ctrl-C or SIGTERM can wait for the main thread, at most; each wake-up
# costs a few microseconds
WAKE_INTERVAL = 0.2

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def wait_futures(
    futures: Iterable[Future[Any]], return_when: str = ALL_COMPLETED
) -> tuple[set[Future[Any]], set[Future[Any]]]:
    """:func:`concurrent.futures.wait` without a timeout, waking every ``WAKE_INTERVAL``."""
    pending = set(futures)
    while True:
        done, pending_now = wait(pending, timeout=WAKE_INTERVAL, return_when=return_when)
        if not pending_now:
            return done, pending_now
        if return_when == FIRST_COMPLETED and done:
            return done, pending_now
        if return_when == FIRST_EXCEPTION and any(not f.cancelled() and f.exception() is not None for f in done):
            return done, pending_now


def result_of(future: Future[T]) -> T:
    """``future.result()``, waking every ``WAKE_INTERVAL``."""
    wait_futures([future])
    return future.result()


def wait_until(condition: threading.Condition, predicate: Callable[[], bool]) -> None:
    """``condition.wait_for(predicate)`` (``condition`` held), waking every ``WAKE_INTERVAL``."""
    while not predicate():
        condition.wait(WAKE_INTERVAL)


def leave_signals_to_main_thread() -> None:
    """Block SIGINT and SIGTERM in the calling thread (not the main one); a thread's first call.

    Only the main thread runs Python's handlers, so nothing is lost; where
    ``pthread_sigmask`` does not exist (Windows) this does nothing.
    """
    if threading.current_thread() is threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
