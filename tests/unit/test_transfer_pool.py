"""The transfer pool: bounded, and stoppable at once (queued work cancelled, waiting submitters freed)."""

from __future__ import annotations

import threading

import pytest

from s3dcp._s3.concurrency import AdaptiveLimit, Sent
from s3dcp._s3.retry import TransferStopped
from s3dcp._s3.upload import TransferPool


def test_stop_frees_a_blocked_submitter_and_refuses_more_work() -> None:
    pool = TransferPool(AdaptiveLimit.fixed(1))
    release = threading.Event()
    started = threading.Event()

    def busy() -> str:
        started.set()
        release.wait(60)
        return "done"

    running = pool.submit(busy)
    assert started.wait(60)
    refused: list[BaseException] = []

    def submit_over_the_limit() -> None:
        try:
            pool.submit(lambda: "never")
        except BaseException as error:
            refused.append(error)

    submitter = threading.Thread(target=submit_over_the_limit)
    submitter.start()  # waits for the busy slot (or, if it comes late, finds the pool stopped)
    signal = pool.stop_signal()
    pool.stop()
    submitter.join(60)
    assert not submitter.is_alive()
    assert len(refused) == 1 and isinstance(refused[0], TransferStopped)
    assert signal.is_set() and pool.stop_signal().is_set()
    with pytest.raises(TransferStopped):
        pool.submit(lambda: "refused")
    release.set()
    assert running.result(timeout=60) == "done"  # what was running finishes on its own


def test_a_pool_runs_everything_submitted_within_its_limit() -> None:
    pool = TransferPool(AdaptiveLimit.fixed(3))
    futures = [pool.submit(lambda n=n: n * n) for n in range(20)]
    results: list[list[int]] = []
    waiter = threading.Thread(target=lambda: results.append(pool.wait(futures)), daemon=True)
    waiter.start()
    waiter.join(60)  # a wait that never returns fails here instead of hanging the suite
    assert results == [[n * n for n in range(20)]]
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: 0)


def test_worker_threads_do_not_hold_the_process_at_exit() -> None:
    pool = TransferPool(AdaptiveLimit.fixed(1), name="s3dcp-daemon-check")
    release = threading.Event()
    pool.submit(lambda: release.wait(60))
    workers = [t for t in threading.enumerate() if t.name.startswith("s3dcp-daemon-check")]
    assert workers and all(t.daemon for t in workers)
    release.set()
    pool.shutdown()
    assert not any(t.is_alive() for t in workers)


def test_wait_returns_at_the_first_failure_or_at_stop_without_waiting_for_the_rest() -> None:
    pool = TransferPool(AdaptiveLimit.fixed(3))
    release = threading.Event()

    def fail() -> None:
        raise ValueError("part 2 refused")

    stuck = pool.submit(lambda: release.wait(60))
    with pytest.raises(ValueError, match="part 2 refused"):
        pool.wait([stuck, pool.submit(fail)])
    assert not stuck.done()
    stopper = threading.Timer(0, pool.stop)  # from another thread, as a failing shard would
    stopper.start()
    with pytest.raises(TransferStopped):
        pool.wait([stuck])
    stopper.join()
    release.set()
    assert stuck.result(timeout=60) is True
    assert TransferPool(AdaptiveLimit.fixed(2)).wait([]) == []


class RecordingLimit(AdaptiveLimit):
    def __init__(self, level: int) -> None:
        super().__init__(level, level)
        self.sizes: list[int] = []

    def finished(self, started: Sent, size: int) -> None:
        self.sizes.append(size)
        super().finished(started, size)


def test_the_limit_hears_of_every_request_with_its_bytes_and_of_failures_as_none() -> None:
    limit = RecordingLimit(1)  # one at a time: the order is the order submitted
    pool = TransferPool(limit)

    def fail() -> None:
        raise ValueError("refused")

    futures = [pool.submit(lambda: "a", 5), pool.submit(fail, 7), pool.submit(lambda: "b", 9)]
    for future in futures:
        future.exception(timeout=60)
    pool.shutdown()
    assert limit.sizes == [5, 0, 9]
