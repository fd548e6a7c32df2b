"""Tiered uploads across ranks: the coordinator commits only once every rank's files are in S3.

Each "rank" here is an upload job on its own :class:`TierUploader` (its own
thread, as in its own process) against the real S3 server, through the
fault proxy. Time is a fake clock that only the coordinator's injected
``sleep`` moves, so timeouts are reached without waiting for them, and
"the coordinator is waiting" is observed through that ``sleep``, not
guessed with real pauses.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3dcp import S3ClientConfig
from s3dcp._config import resolve_settings
from s3dcp._s3.client import S3Client
from s3dcp._tiered.upload import MARKERS, TierUploader, UploadJob, UploadStatus
from s3dcp._uri import parse_s3_uri
from tests.conftest import REGION, list_keys
from tests.helpers import FAST_RETRIES

pytestmark = pytest.mark.s3

RETRIES = S3ClientConfig(max_attempts=3, **FAST_RETRIES)
SAVE_ID = "save-1"
METADATA = b"the coordinator's .metadata"
WAIT = 60.0  # a bound on real waits for threads; never reached when the code works
REPO = Path(__file__).resolve().parents[2]


class FakeTime:
    """A clock that moves only when ``sleep`` is called; ``sleep`` can also block on an event."""

    def __init__(self, block_on: threading.Event | None = None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.sleeping = threading.Event()  # set once the job has paused at least once
        self.block_on = block_on

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.sleeping.set()
        if self.block_on is not None:
            assert self.block_on.wait(WAIT), "the event the fake sleep waits for never came"


def shard(rank: int) -> str:
    return f"__{rank}_0.distcp"


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A local checkpoint directory with one shard file per rank (two ranks)."""
    directory = tmp_path / "tier" / "step_1"
    directory.mkdir(parents=True)
    for rank in range(2):
        (directory / shard(rank)).write_bytes(bytes([rank]) * 5000)
    return directory


def job(
    bucket: str,
    checkpoint: Path,
    rank: int,
    *,
    files: bool = True,
    metadata: bytes | None = None,
    time: FakeTime | None = None,
    **options: Any,
) -> UploadJob:
    time = time or FakeTime()
    return UploadJob(
        client=S3Client(resolve_settings(REGION, RETRIES)),
        checkpoint_dir=checkpoint,
        uri=parse_s3_uri(f"s3://{bucket}/run/step_1"),
        rank=rank,
        world_size=2,
        save_id=SAVE_ID,
        files=[shard(rank)] if files else [],
        overwrite=False,
        metadata=metadata,
        clock=time.clock,
        sleep=time.sleep,
        **options,
    )


def coordinator(uploader: TierUploader, bucket: str, checkpoint: Path, time: FakeTime, **options: Any) -> None:
    """Rank 0: its own files, then the commit job that waits for every rank."""
    uploader.submit(job(bucket, checkpoint, 0, time=time))
    uploader.submit(job(bucket, checkpoint, 0, files=False, metadata=METADATA, time=time, **options))


def done_event(on: threading.Event) -> Callable[[UploadStatus], None]:
    def seen(status: UploadStatus) -> None:
        if status.state in ("uploaded", "failed"):
            on.set()

    return seen


def keys(s3: Any, bucket: str) -> set[str]:
    return {key.removeprefix("run/step_1/") for key in list_keys(s3, bucket, "run/step_1/")}


def final(uploader: TierUploader) -> list[tuple[int, str]]:
    return [(s.rank, s.state) for s in uploader.wait(WAIT)]


def test_commit_waits_for_a_rank_held_at_the_proxy(
    proxied_env: Any, proxy: Any, s3: Any, bucket: str, checkpoint: Path
) -> None:
    hold = proxy.add_rule("hold", method="PUT", key_pattern=rf"/run/step_1/{shard(1)}$", count=1)
    rank_1_done = threading.Event()
    # the coordinator's pause: tells the test it is waiting, and polls again only once rank 1 has finished
    time = FakeTime(block_on=rank_1_done)
    rank_0, rank_1 = TierUploader(), TierUploader()
    try:
        rank_1.submit(job(bucket, checkpoint, 1, on_status=done_event(rank_1_done)))
        assert hold.hit.wait(WAIT), "rank 1's upload never reached the proxy"
        waiting_or_ended = threading.Event()
        time.sleeping = waiting_or_ended
        coordinator(
            rank_0,
            bucket,
            checkpoint,
            time,
            on_status=lambda s: waiting_or_ended.set() if s.state in ("committed", "failed") else None,
        )
        assert waiting_or_ended.wait(WAIT)
        # the coordinator has its own files in S3, listed the markers, found rank 1's missing and paused
        assert keys(s3, bucket) == {shard(0), f"{MARKERS}/{SAVE_ID}/rank_0"}
        assert time.sleeps, "the coordinator ended without waiting for rank 1"
        assert rank_0.statuses()[-1].state == "uploaded" and len(rank_0.statuses()) == 1
    finally:
        hold.release()
    assert final(rank_1) == [(1, "uploaded")]
    assert final(rank_0) == [(0, "uploaded"), (0, "committed")]
    assert keys(s3, bucket) == {".metadata", shard(0), shard(1)}  # committed, markers removed
    assert s3.get_object(Bucket=bucket, Key="run/step_1/.metadata")["Body"].read() == METADATA


def test_a_failed_rank_stops_the_commit_and_is_named_with_its_reason(
    proxied_env: Any, proxy: Any, s3: Any, bucket: str, checkpoint: Path
) -> None:
    proxy.add_rule("access_denied", method="PUT", key_pattern=rf"/run/step_1/{shard(1)}$")
    rank_1_done = threading.Event()
    time = FakeTime(block_on=rank_1_done)
    rank_0, rank_1 = TierUploader(), TierUploader()
    seen: list[UploadStatus] = []
    coordinator(rank_0, bucket, checkpoint, time, on_status=seen.append)
    rank_1.submit(job(bucket, checkpoint, 1, on_status=done_event(rank_1_done)))

    [failed] = rank_1.wait(WAIT)
    assert (failed.state, failed.attempts) == ("failed", 1)  # access denied: no second attempt
    assert "AccessDenied" in (failed.error or "")
    statuses = rank_0.wait(WAIT)
    assert [(s.rank, s.state) for s in statuses] == [(0, "uploaded"), (0, "failed")]
    error = statuses[-1].error or ""
    assert error.startswith("UploadFailedError: rank 1 could not upload its files of step_1"), error
    assert "AccessDenied" in error  # rank 1's own reason, read from its marker
    assert seen[-1] == statuses[-1]
    # no commit was even tried; the markers stay, so prune/gc see an unfinished save
    assert not proxy.requests("PUT", r"/\.metadata$")
    assert keys(s3, bucket) == {shard(0), f"{MARKERS}/{SAVE_ID}/rank_0", f"{MARKERS}/{SAVE_ID}/rank_1.failed"}


def test_a_rank_that_never_uploads_times_the_commit_out(
    proxied_env: Any, proxy: Any, s3: Any, bucket: str, checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    time = FakeTime()  # sleeping only moves the clock: 30 s pass at once
    rank_0 = TierUploader()
    with caplog.at_level(logging.ERROR, logger="s3dcp"):
        coordinator(rank_0, bucket, checkpoint, time, timeout=30.0)
        statuses = rank_0.wait(WAIT)

    assert [(s.rank, s.state) for s in statuses] == [(0, "uploaded"), (0, "failed")]
    error = statuses[-1].error or ""
    assert error.startswith("UploadFailedError: rank 1 (1 of 2) had not uploaded its files of step_1"), error
    assert "upload_timeout=30 s" in error and "stays uncommitted" in error
    assert statuses[-1].attempts == 1  # a timeout is final, not retried
    # polled with growing pauses up to the deadline and not past it
    assert time.sleeps[:3] == [0.05, 0.1, 0.2] and max(time.sleeps) == 1.0
    assert sum(time.sleeps) == pytest.approx(30.0)
    assert ".metadata" not in keys(s3, bucket)
    assert not proxy.requests("PUT", r"/\.metadata$")
    assert any("rank 1 (1 of 2)" in r.getMessage() for r in caplog.records)


def test_a_rank_that_uploads_before_the_deadline_is_committed(
    proxied_env: Any, s3: Any, bucket: str, checkpoint: Path
) -> None:
    """The deadline poll keeps polling: rank 1's marker, stored while the coordinator waits, ends the wait."""
    rank_1 = TierUploader()
    uploaded = threading.Event()

    class RankOneDuringTheWait(FakeTime):
        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            if len(self.sleeps) == 3:  # rank 1 uploads while the coordinator pauses
                rank_1.submit(job(bucket, checkpoint, 1, on_status=done_event(uploaded)))
                assert uploaded.wait(WAIT)

    time = RankOneDuringTheWait()
    rank_0 = TierUploader()
    coordinator(rank_0, bucket, checkpoint, time, timeout=30.0)
    assert final(rank_0) == [(0, "uploaded"), (0, "committed")]
    assert len(time.sleeps) == 3 and sum(time.sleeps) < 30.0
    assert keys(s3, bucket) == {".metadata", shard(0), shard(1)}


def test_whole_attempts_pause_as_the_request_retry_policy_says(
    proxied_env: Any, proxy: Any, s3: Any, bucket: str, checkpoint: Path
) -> None:
    """More resets than one request's retries allow: the job tries again after a jittered, injected pause."""
    proxy.add_rule("reset", method="PUT", key_pattern=rf"/run/step_1/{shard(1)}$", count=RETRIES.max_attempts)
    time = FakeTime()
    rank_1 = TierUploader()
    rank_1.submit(job(bucket, checkpoint, 1, time=time))
    [status] = rank_1.wait(WAIT)
    assert (status.state, status.attempts) == ("uploaded", 2)
    # one pause, drawn from [0, first backoff bound] (full jitter), through the job's sleep
    assert len(time.sleeps) == 1 and 0.0 <= time.sleeps[0] <= RETRIES.retry_initial_backoff
    assert shard(1) in keys(s3, bucket)


def test_uploader_wait_returns_raises_and_bounds_the_exit(
    proxied_env: Any, proxy: Any, s3: Any, bucket: str, checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hold = proxy.add_rule("hold", method="PUT", key_pattern=rf"/run/step_1/{shard(1)}$", count=1)
    ticks = iter(range(0, 10_000, 100))  # every reading of the clock is 100 s after the last
    rank_1 = TierUploader(clock=lambda: float(next(ticks)))
    try:
        rank_1.submit(job(bucket, checkpoint, 1, timeout=30.0))
        assert hold.hit.wait(WAIT)
        worker = rank_1._worker
        assert worker is not None and worker.daemon  # never keeps the interpreter alive on its own
        with pytest.raises(TimeoutError, match="still running after 0 s"):
            rank_1.wait(0)
        with pytest.raises(TimeoutError, match="still running after 5 s"):
            rank_1.wait(5)  # the injected clock passes the deadline at once
        assert rank_1.wait(0, root=checkpoint.parent / "elsewhere") == []  # only uploads under root count
        # at exit: waits at most the job's timeout, then names what it leaves unfinished, and returns
        with caplog.at_level(logging.ERROR, logger="s3dcp"):
            rank_1.finish_at_exit()
        assert any("1 upload(s) unfinished after 30 s: step_1 (rank 1)" in r.getMessage() for r in caplog.records)
        assert rank_1.statuses() == []
    finally:
        hold.release()
    statuses = rank_1.wait(None, root=checkpoint.parent)
    assert [(s.rank, s.state) for s in statuses] == [(1, "uploaded")]
    rank_1.finish_at_exit()  # nothing queued: returns at once


def test_markers_that_cannot_be_removed_leave_the_commit_standing(
    proxied_env: Any, proxy: Any, s3: Any, bucket: str, checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After .metadata is stored, a refused marker clean-up is a warning, not a failed (and retried) commit."""
    refuse = proxy.add_rule("access_denied", method="POST", query_contains="delete")
    rank_1 = TierUploader()
    rank_1.submit(job(bucket, checkpoint, 1))
    assert final(rank_1) == [(1, "uploaded")]
    rank_0 = TierUploader()
    with caplog.at_level(logging.WARNING, logger="s3dcp"):
        coordinator(rank_0, bucket, checkpoint, FakeTime())
        statuses = rank_0.wait(WAIT)
    assert [(s.state, s.attempts) for s in statuses] == [("uploaded", 1), ("committed", 1)]
    assert refuse.hits == 1 and len(proxy.requests("PUT", r"/\.metadata$")) == 1
    assert keys(s3, bucket) == {
        ".metadata",
        shard(0),
        shard(1),
        f"{MARKERS}/{SAVE_ID}/rank_0",
        f"{MARKERS}/{SAVE_ID}/rank_1",
    }
    assert any("could not remove its upload markers" in r.getMessage() for r in caplog.records)


_SCRIPT_THAT_ENDS = textwrap.dedent("""
    import logging, sys, torch, torch.distributed.checkpoint as dcp
    from s3dcp import TieredStorageWriter
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    local, root, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    writer = TieredStorageWriter(local, root, region="us-east-1", upload_timeout=timeout)
    dcp.save({"w": torch.arange(4096, dtype=torch.float32)}, checkpoint_id="step_1", storage_writer=writer)
    print("saved", flush=True)  # and ends, without wait_for_uploads
""")


def run_script_that_ends(local: Path, root: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT_THAT_ENDS, str(local), root, str(timeout)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def test_a_script_that_ends_finishes_its_queued_upload(proxied_env: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    done = run_script_that_ends(tmp_path / "tier", f"s3://{bucket}/run", 600)
    assert done.returncode == 0 and done.stdout.split() == ["saved"], done.stderr
    assert {"run/step_1/.metadata", "run/step_1/__0_0.distcp"} == set(list_keys(s3, bucket, "run/"))
    assert "waiting up to 600 s for 2 queued upload(s) before exiting" in done.stderr


def test_a_stuck_upload_holds_the_exit_at_most_upload_timeout(
    proxied_env: Any, proxy: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """The upload never ends (held at the proxy): the process still exits once upload_timeout has passed."""
    hold = proxy.add_rule("hold", method="PUT", key_pattern=r"/run/step_1/__0_0\.distcp$")
    try:
        done = run_script_that_ends(tmp_path / "tier", f"s3://{bucket}/run", 1)
        assert hold.hit.is_set()
    finally:
        hold.release()
    assert done.returncode == 0 and done.stdout.split() == ["saved"], done.stderr
    assert (
        "ERROR s3dcp: exiting with 2 upload(s) unfinished after 1 s: step_1 (rank 0), step_1 (rank 0)" in done.stderr
    ), done.stderr
    assert "run/step_1/.metadata" not in list_keys(s3, bucket, "run/")
