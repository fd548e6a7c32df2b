"""Copying local-tier checkpoints to S3: each rank its own files, the coordinator commits.

Every rank uploads the shard files it wrote, then stores a small marker
object ``.s3dcp-uploads/{save_id}/rank_{r}`` (or ``rank_{r}.failed`` with
the reason) in the checkpoint's S3 prefix. The coordinator, after its own
files, waits until every rank has a marker, then stores ``.metadata`` (the
same bytes as the local copy's) and removes the markers. So the S3 copy is
committed only once every rank's files are durable there, whichever node
they came from, without collectives (which a background thread must not
issue while training uses the process group). A crash at any point leaves
the S3 copy uncommitted; ``s3dcp gc`` and ``prune`` clean it up like any
unfinished save.

Uploads run one at a time, in order, on a worker thread of this process
(the checkpointing process when ``dcp.async_save`` uses a process
executor). The coordinator waits for other ranks' markers at most
``timeout`` seconds per checkpoint (default :data:`DEFAULT_UPLOAD_TIMEOUT`,
10 minutes). The thread is a daemon, so it never keeps the interpreter
alive by itself: at exit, a handler waits for this process's queued
uploads for at most the longest ``timeout`` among them, in all (not per
checkpoint), then names in an ``ERROR`` log line the uploads it leaves
unfinished (their local copies are intact). So a rank that died delays the
coordinator's exit by at most ``timeout``, not indefinitely; call
:meth:`TierUploader.wait` (``TieredStorageWriter.wait_for_uploads``) to
wait longer.

A failed upload is tried again, up to ``attempts`` times in all, with the
pauses of the request retry policy (:class:`~s3dcp._s3.retry.RetryPolicy`:
full jitter, the client's backoff settings), then reported (log,
callback, :meth:`TierUploader.wait`), never dropped silently. The
coordinator's wait is a deadline poll; both it and the pauses use the
job's ``clock`` and ``sleep``, which tests replace.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import tenacity

from s3dcp._commit import commit_metadata, refuse_complete, uncommit
from s3dcp._errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CheckpointExistsError,
    CredentialsError,
    S3DCPError,
    UnsafeCheckpointError,
    UploadFailedError,
    WrongRegionError,
)
from s3dcp._format.layout import METADATA_NAME, UPLOAD_MARKERS
from s3dcp._interrupts import WAKE_INTERVAL, leave_signals_to_main_thread
from s3dcp._s3.client import S3Client
from s3dcp._s3.objects import delete_keys, list_pages, put_object
from s3dcp._s3.upload import PartBuffers, TransferPool, upload_file
from s3dcp._uri import S3Uri

__all__ = ["UploadStatus", "UploadJob", "TierUploader", "run_job", "uploader", "MARKERS", "DEFAULT_UPLOAD_TIMEOUT"]

log = logging.getLogger("s3dcp")

MARKERS = UPLOAD_MARKERS
# how long the coordinator waits for other ranks' markers: long enough for a rank whose requests
# are retrying (each gives up after S3ClientConfig.retry_deadline, 300 s by default, and the rank
# then leaves a .failed marker that ends the wait at once), short enough that a dead rank does
# not hold the coordinator's process for long
DEFAULT_UPLOAD_TIMEOUT = 600.0
# the coordinator's poll for markers: first pause, and the longest
_POLL_FIRST = 0.05
_POLL_MAX = 1.0
# errors that another attempt cannot fix
_FINAL = (
    AccessDeniedError,
    BucketNotFoundError,
    CheckpointExistsError,
    CredentialsError,
    WrongRegionError,
    UnsafeCheckpointError,
    FileNotFoundError,
    UploadFailedError,
)


@dataclass(frozen=True)
class UploadStatus:
    """Where one rank's upload of one checkpoint stands.

    Attributes:
        checkpoint: the checkpoint's name (``step_100``).
        uri: its ``s3://`` destination.
        rank: the rank whose files these are.
        state: ``"queued"``, ``"uploading"``, ``"uploaded"`` (this rank's
            files are in S3), ``"committed"`` (coordinator: ``.metadata``
            is stored, the S3 copy is complete) or ``"failed"``.
        files: shard files of this rank.
        size: their bytes.
        attempts: attempts made so far.
        seconds: time since the upload was queued.
        error: why it failed, when it did.
    """

    checkpoint: str
    uri: str
    rank: int
    state: str
    files: int
    size: int
    attempts: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class UploadJob:
    """One rank's part of copying one local checkpoint to S3.

    ``metadata`` is set on the coordinator's job: after its own files, it
    waits for every rank's marker and commits.

    Attributes:
        attempts: whole attempts at the job, first one included; the pauses
            between them follow the client's :class:`~s3dcp._s3.retry.RetryPolicy`.
        timeout: seconds the coordinator's job waits for other ranks'
            markers before giving up (the S3 copy then stays uncommitted);
            also this job's share of the wait at interpreter exit.
        clock, sleep: time source and pause of the marker wait and of the
            pauses between attempts (tests pass fakes).
    """

    client: S3Client
    checkpoint_dir: Path
    uri: S3Uri
    rank: int
    world_size: int
    save_id: str
    files: list[str]
    overwrite: bool
    metadata: bytes | None = None
    attempts: int = 3
    timeout: float = DEFAULT_UPLOAD_TIMEOUT
    on_status: Callable[[UploadStatus], object] | None = None
    on_done: Callable[[], object] | None = None  # run on the upload thread once the job has ended
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    queued_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.queued_at = self.clock()

    @property
    def name(self) -> str:
        return self.checkpoint_dir.name

    def marker(self, rank: int, failed: bool = False) -> str:
        return self.uri.key(f"{MARKERS}/{self.save_id}/rank_{rank}{'.failed' if failed else ''}")


def _upload_files(job: UploadJob) -> None:
    """This rank's files to S3, after making sure no complete checkpoint is overwritten by mistake."""
    client, uri = job.client, job.uri
    advice = f"the local copy {job.checkpoint_dir} was not uploaded. Save under a new name or pass overwrite=True"
    if refuse_complete(client, uri, overwrite=job.overwrite, advice=advice):
        uncommit(client, uri)
    config = client.settings.config
    pool = TransferPool(client.concurrency("upload"), PartBuffers(config.max_concurrency), name="s3dcp-tier")
    try:
        for relative in job.files:
            upload_file(client, pool, job.checkpoint_dir / relative, uri.bucket, uri.key(relative), config.part_size)
    finally:
        pool.shutdown()


def _ranks_text(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(rank) for rank in ranks)


def _failure_reason(job: UploadJob, key: str) -> str:
    """What a rank's ``.failed`` marker says (or why it could not be read)."""
    try:
        body = job.client.call("get_object", job.uri.bucket, key)["Body"]
        try:
            return bytes(body.read()).decode(errors="replace")
        finally:
            body.close()
    except Exception as error:
        return f"(its reason could not be read: {type(error).__name__}: {error})"


def _wait_for_ranks(job: UploadJob) -> None:
    """Poll until every rank's marker exists, or ``job.timeout`` has passed on ``job.clock``.

    Raises:
        UploadFailedError: a rank left a failure marker (at the first poll
            that sees it; names each such rank and its reason), or ranks
            were still missing at the deadline (names them).
    """
    client, uri = job.client, job.uri
    prefix = uri.key(f"{MARKERS}/{job.save_id}/")
    deadline = job.clock() + job.timeout
    pause = _POLL_FIRST
    while True:
        names = {
            entry["Key"][len(prefix) :]
            for page in list_pages(client, uri.bucket, prefix)
            for entry in page.get("Contents", [])
        }
        failed = [rank for rank in range(job.world_size) if f"rank_{rank}.failed" in names]
        if failed:
            reasons = "; ".join(
                f"rank {rank}: {_failure_reason(job, job.marker(rank, failed=True))}" for rank in failed
            )
            raise UploadFailedError(
                f"{_ranks_text(failed)} could not upload {'its' if len(failed) == 1 else 'their'} files of "
                f"{job.name} to {uri} ({reasons}); the S3 copy stays uncommitted",
                bucket=uri.bucket,
                key=job.marker(failed[0], failed=True),
            )
        missing = [rank for rank in range(job.world_size) if f"rank_{rank}" not in names]
        if not missing:
            return
        now = job.clock()
        if now >= deadline:
            raise UploadFailedError(
                f"{_ranks_text(missing)} ({len(missing)} of {job.world_size}) had not uploaded "
                f"{'its' if len(missing) == 1 else 'their'} files of {job.name} to {uri} after "
                f"upload_timeout={job.timeout:g} s (a rank died, or its uploads are stuck or far behind); "
                "the S3 copy stays uncommitted",
                bucket=uri.bucket,
            )
        job.sleep(min(pause, deadline - now))
        pause = min(_POLL_MAX, pause * 2)


def _commit(job: UploadJob) -> None:
    if job.metadata is None:
        raise ValueError(f"the commit of {job.uri} needs the .metadata bytes: only the coordinator's job carries them")
    _wait_for_ranks(job)
    commit_metadata(job.client, job.uri.bucket, job.uri.key(METADATA_NAME), job.metadata, exclusive=not job.overwrite)


def _remove_markers(job: UploadJob) -> None:
    """After the commit: the markers are bookkeeping only, so failing to delete them is a warning."""
    try:
        delete_keys(job.client, job.uri.bucket, [job.marker(rank) for rank in range(job.world_size)])
    except S3DCPError as error:
        log.warning(
            "s3dcp committed %s but could not remove its upload markers under %s/%s/%s: %s",
            job.uri,
            job.uri,
            MARKERS,
            job.save_id,
            error,
        )


def _retrying(job: UploadJob) -> tenacity.Retrying:
    """Whole attempts at ``job``: the request policy's jittered pauses, ``job.attempts`` in all."""

    def retrying(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "s3dcp upload of %s (rank %d) to %s failed (attempt %d of %d, retrying in %.1f s): %s",
            job.name,
            job.rank,
            job.uri,
            state.attempt_number,
            job.attempts,
            pause,
            error,
        )

    return job.client.policy.retrying(job.sleep, on_retry=retrying).copy(
        stop=tenacity.stop_after_attempt(job.attempts),
        retry=tenacity.retry_if_exception(lambda error: not isinstance(error, _FINAL)),
    )


def run_job(job: UploadJob) -> UploadStatus:
    """Run ``job`` with retries; return its final status. Never raises for an S3 failure."""
    size = sum(_size_of(job.checkpoint_dir / relative) for relative in job.files)
    status = UploadStatus(job.name, str(job.uri), job.rank, "uploading", len(job.files), size)
    uploaded = False
    try:
        for attempt in _retrying(job):
            with attempt:
                status = replace(status, attempts=attempt.retry_state.attempt_number)
                _publish(job, status)
                if not uploaded:
                    _upload_files(job)
                    put_object(job.client, job.uri.bucket, job.marker(job.rank), b"uploaded")
                    uploaded = True
                if job.metadata is not None:
                    _commit(job)
    except Exception as error:  # reported here, never dropped
        status = replace(
            status, state="failed", error=f"{type(error).__name__}: {error}", seconds=job.clock() - job.queued_at
        )
        if not uploaded:
            _leave_failure_marker(job, status.error or "")
        log.error(
            "s3dcp upload failed: checkpoint=%s rank=%d uri=%s attempts=%d error=%s; the local copy %s is intact",
            job.name,
            job.rank,
            job.uri,
            status.attempts,
            status.error,
            job.checkpoint_dir,
        )
        _publish(job, status)
        return status
    if job.metadata is not None:
        _remove_markers(job)
    status = replace(
        status, state="committed" if job.metadata is not None else "uploaded", seconds=job.clock() - job.queued_at
    )
    _publish(job, status)
    return status


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0  # the upload itself will report the missing file


def _leave_failure_marker(job: UploadJob, reason: str) -> None:
    """Tell the coordinator not to wait for this rank (best effort: S3 may be what failed)."""
    try:
        put_object(job.client, job.uri.bucket, job.marker(job.rank, failed=True), reason.encode()[:4096])
    except Exception as error:
        log.debug("could not store the failure marker of %s rank %d: %s", job.name, job.rank, error)


def _publish(job: UploadJob, status: UploadStatus) -> None:
    if status.state in ("committed", "uploaded"):
        log.info(
            "s3dcp upload checkpoint=%s rank=%d state=%s files=%d bytes=%d seconds=%.3f uri=%s",
            status.checkpoint,
            status.rank,
            status.state,
            status.files,
            status.size,
            status.seconds,
            status.uri,
        )
    if job.on_status is not None:
        try:
            job.on_status(status)
        except Exception:
            log.exception("s3dcp: the on_upload callback raised")


class TierUploader:
    """This process's queue of upload jobs and the (daemon) thread that runs them in order.

    Args:
        clock: time source of :meth:`wait`'s and :meth:`finish_at_exit`'s deadlines.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._queue: queue.Queue[UploadJob] = queue.Queue()
        self._lock = threading.Condition()
        self._pending: dict[int, UploadJob] = {}
        self._statuses: list[UploadStatus] = []
        self._worker: threading.Thread | None = None

    def submit(self, job: UploadJob) -> None:
        """Queue ``job``; it runs after every job queued before it."""
        with self._lock:
            self._pending[id(job)] = job
            self._queue.put(job)
            if self._worker is None or not self._worker.is_alive():
                # a daemon: a dead rank must not keep this process alive; finish_at_exit waits, bounded
                self._worker = threading.Thread(target=self._run, name="s3dcp-tier-upload", daemon=True)
                self._worker.start()
        _publish(job, UploadStatus(job.name, str(job.uri), job.rank, "queued", len(job.files), 0))

    def run_now(self, job: UploadJob) -> UploadStatus:
        """Run ``job`` in the calling thread (synchronous uploads), recording its status."""
        status = _execute(job)
        with self._lock:
            self._statuses.append(status)
        return status

    def statuses(self) -> list[UploadStatus]:
        """Final statuses of the uploads run by this process, oldest first."""
        with self._lock:
            return list(self._statuses)

    def pending(self) -> list[UploadJob]:
        """The jobs queued or running, oldest first."""
        with self._lock:
            return list(self._pending.values())

    def wait(self, timeout: float | None = None, root: Path | None = None) -> list[UploadStatus]:
        """Block until no upload (under ``root``, if given) is queued or running; return all statuses.

        A failed upload does not raise here: it is a status with
        ``state == "failed"`` (``TieredStorageWriter.wait_for_uploads``
        raises for those). ``timeout=0`` only checks.

        Raises:
            TimeoutError: uploads are still queued or running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else self._clock() + timeout
        with self._lock:
            while any(root is None or job.checkpoint_dir.parent == root for job in self._pending.values()):
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"background uploads still running after {timeout} s")
                self._lock.wait(WAKE_INTERVAL if remaining is None else remaining)  # Ctrl-C gets through
            return list(self._statuses)

    def finish_at_exit(self) -> None:
        """Wait for the queued uploads, at most the longest ``timeout`` among them; log what is left.

        Registered with :mod:`atexit`: the upload thread is a daemon, so
        this is what lets a script that ends with uploads queued finish
        them, and what bounds how long a dead rank holds the exit.
        """
        jobs = self.pending()
        if not jobs:
            return
        limit = max(job.timeout for job in jobs)
        log.info("s3dcp: waiting up to %.0f s for %d queued upload(s) before exiting", limit, len(jobs))
        try:
            self.wait(limit)
        except TimeoutError:
            left = self.pending()
            log.error(
                "s3dcp: exiting with %d upload(s) unfinished after %.0f s: %s; their local copies are "
                "intact (copy them with `s3dcp cp`, or call wait_for_uploads() before exiting)",
                len(left),
                limit,
                ", ".join(f"{job.name} (rank {job.rank})" for job in left),
            )

    def _run(self) -> None:
        leave_signals_to_main_thread()
        while True:
            with self._lock:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    self._worker = None
                    return
            status = _execute(job)
            with self._lock:
                self._statuses.append(status)
                del self._pending[id(job)]
                self._lock.notify_all()


def _execute(job: UploadJob) -> UploadStatus:
    """``run_job``, then the job's clean-up; an unexpected error becomes a failed status, not a lost job."""
    try:
        return run_job(job)
    except Exception as error:
        log.exception("s3dcp upload of %s (rank %d) failed unexpectedly", job.name, job.rank)
        return UploadStatus(
            job.name, str(job.uri), job.rank, "failed", len(job.files), 0, error=f"{type(error).__name__}: {error}"
        )
    finally:
        if job.on_done is not None:
            try:
                job.on_done()
            except Exception:
                log.exception("s3dcp: cleaning up after the upload of %s failed", job.name)


_UPLOADER: tuple[int, TierUploader] | None = None
_UPLOADER_LOCK = threading.Lock()


def uploader() -> TierUploader:
    """This process's uploader (a forked child gets a fresh one, not its parent's queue)."""
    global _UPLOADER
    with _UPLOADER_LOCK:
        if _UPLOADER is None or _UPLOADER[0] != os.getpid():
            _UPLOADER = (os.getpid(), TierUploader())
        return _UPLOADER[1]


@atexit.register
def _finish_at_exit() -> None:
    current = _UPLOADER
    if current is not None and current[0] == os.getpid():
        current[1].finish_at_exit()
