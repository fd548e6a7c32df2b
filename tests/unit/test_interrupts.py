"""The caller's waits end on a signal another thread took; s3dcp's threads leave SIGINT and SIGTERM to the main one."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor
from typing import Any

import pytest

from s3dcp import _interrupts
from s3dcp._interrupts import leave_signals_to_main_thread, result_of, wait_futures, wait_until


class Stopped(Exception):
    pass


@pytest.fixture
def stop_on_sigusr2() -> Iterator[None]:
    def stop(signum: int, frame: Any) -> None:
        raise Stopped

    previous = signal.signal(signal.SIGUSR2, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR2, previous)


def main_waits_in_s3dcp() -> bool:
    """Whether the main thread is asleep in a ``wait`` called from one of ``s3dcp._interrupts``'s waits."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    if frame is None or frame.f_code.co_name != "wait":
        return False
    while frame is not None:
        if frame.f_code.co_filename == _interrupts.__file__:
            return True
        frame = frame.f_back
    return False


def signal_from_this_thread_once_main_waits(main_left: threading.Event, release: Callable[[], None]) -> None:
    """Send SIGUSR2 to this thread (not the main one) once the main thread is asleep in a wait.

    If the main thread is still waiting 10 s later, ``release`` ends its wait,
    so a wait that does not wake fails the test instead of hanging it.
    """
    while not main_waits_in_s3dcp():
        main_left.wait(0.01)  # polls where the main thread is; nothing is released by it
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)
    if not main_left.wait(10):
        release()


@pytest.mark.usefixtures("stop_on_sigusr2")
@pytest.mark.parametrize("waiter", ["wait_futures", "result_of", "wait_until"])
def test_a_signal_another_thread_takes_ends_a_wait_in_the_main_thread(waiter: str) -> None:
    assert threading.current_thread() is threading.main_thread()
    never: Future[None] = Future()
    changed = threading.Condition()
    released = threading.Event()

    def release() -> None:
        never.set_result(None)
        with changed:
            released.set()
            changed.notify_all()

    main_left = threading.Event()
    sender = threading.Thread(target=signal_from_this_thread_once_main_waits, args=(main_left, release))
    sender.start()
    try:
        with pytest.raises(Stopped):
            if waiter == "wait_futures":
                wait_futures([never])
            elif waiter == "result_of":
                result_of(never)
            else:
                with changed:
                    wait_until(changed, released.is_set)
    finally:
        main_left.set()
        sender.join(60)
    assert not released.is_set(), "the wait ended only when it was released, not on the signal"


def test_wait_futures_returns_as_concurrent_futures_wait_does() -> None:
    ok: Future[int] = Future()
    ok.set_result(1)
    failed: Future[int] = Future()
    failed.set_exception(ValueError("x"))
    never: Future[int] = Future()
    assert wait_futures([ok, never], FIRST_COMPLETED) == ({ok}, {never})
    assert wait_futures([ok, failed, never], FIRST_EXCEPTION) == ({ok, failed}, {never})
    assert wait_futures([ok, failed]) == ({ok, failed}, set())
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(lambda: ok.result() + 1)
        assert result_of(later) == 2


def blocked_signals() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def test_s3dcp_threads_block_sigint_and_sigterm_and_the_main_thread_does_not() -> None:
    before = blocked_signals()
    leave_signals_to_main_thread()
    assert blocked_signals() == before  # the main thread is left as it was
    seen: list[set[int]] = []

    def worker() -> None:
        leave_signals_to_main_thread()
        seen.append(blocked_signals())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(60)
    assert seen and {signal.SIGINT, signal.SIGTERM} <= seen[0]
