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
executor). The thread is not a daemon: a script that ends while uploads
are queued waits for them before the interpreter exits. A failed upload
is retried ``attempts`` times with growing pauses, then reported (log,
callback, :meth:`TierUploader.wait`), never dropped silently.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from s3dcp._format.layout import METADATA_NAME
from s3dcp._s3.client import S3Client
from s3dcp._commit import commit_metadata
from s3dcp._s3.upload import upload_file
from s3dcp._s3.objects import object_exists
from s3dcp._errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CheckpointExistsError,
    CredentialsError,
    UnsafeCheckpointError,
    UploadFailedError,
    WrongRegionError,
)
from s3dcp._s3.upload import PartBuffers, TransferPool
from s3dcp._s3.objects import put_object
from s3dcp._uri import S3Uri

__all__ = ["UploadStatus", "UploadJob", "TierUploader", "run_job", "uploader", "MARKERS"]

log = logging.getLogger("s3dcp")

MARKERS = ".s3dcp-uploads"
# errors that another attempt cannot fix
_FINAL = (AccessDeniedError, BucketNotFoundError, CheckpointExistsError, CredentialsError, WrongRegionError,
          UnsafeCheckpointError, FileNotFoundError, UploadFailedError)


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
    timeout: float = 3600.0
    on_status: Callable[[UploadStatus], object] | None = None
    on_done: Callable[[], object] | None = None  # run on the upload thread once the job has ended
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.checkpoint_dir.name

    def marker(self, rank: int, failed: bool = False) -> str:
        return self.uri.key(f"{MARKERS}/{self.save_id}/rank_{rank}{'.failed' if failed else ''}")


def _upload_files(job: UploadJob) -> None:
    """This rank's files to S3, after making sure no complete checkpoint is overwritten by mistake."""
    client, uri = job.client, job.uri
    metadata_key = uri.key(METADATA_NAME)
    if object_exists(client, uri.bucket, metadata_key):
        if not job.overwrite:
            raise CheckpointExistsError(
                f"{uri} already holds a complete checkpoint; the local copy {job.checkpoint_dir} was not "
                "uploaded. Save under a new name or pass overwrite=True",
                bucket=uri.bucket,
                key=metadata_key,
            )
        # uncommit first: no crash may leave the old .metadata over a mix of old and new files
        client.call("delete_object", uri.bucket, metadata_key)
    config = client.settings.config
    pool = TransferPool(config.max_concurrency, PartBuffers(config.max_concurrency), name="s3dcp-tier")
    try:
        for relative in job.files:
            upload_file(client, pool, job.checkpoint_dir / relative, uri.bucket, uri.key(relative), config.part_size)
    finally:
        pool.shutdown()


def _wait_for_ranks(job: UploadJob) -> None:
    """Block until every rank's marker exists; fail at once on a rank's failure marker."""
    client, uri = job.client, job.uri
    prefix = uri.key(f"{MARKERS}/{job.save_id}/")
    deadline = time.monotonic() + job.timeout
    pause = 0.05
    while True:
        names: dict[str, str] = {}
        token = None
        while True:
            params = {"Prefix": prefix} | ({"ContinuationToken": token} if token else {})
            page = client.call("list_objects_v2", uri.bucket, **params)
            names.update({entry["Key"][len(prefix):]: entry["Key"] for entry in page.get("Contents", [])})
            token = page.get("NextContinuationToken")
            if not token:
                break
        failed = sorted(name for name in names if name.endswith(".failed"))
        if failed:
            reason = client.call("get_object", uri.bucket, names[failed[0]])["Body"].read().decode(errors="replace")
            raise UploadFailedError(f"{failed[0].removesuffix('.failed')} could not upload its files: {reason}",
                                    bucket=uri.bucket, key=names[failed[0]])
        done = sum(1 for rank in range(job.world_size) if f"rank_{rank}" in names)
        if done == job.world_size:
            return
        if time.monotonic() > deadline:
            raise UploadFailedError(
                f"{job.world_size - done} of {job.world_size} ranks had not uploaded their files of "
                f"{job.name} after {job.timeout:.0f} s (a rank died, or its uploads are stuck); "
                "the S3 copy stays uncommitted",
                bucket=uri.bucket,
            )
        time.sleep(pause)
        pause = min(1.0, pause * 2)


def _commit(job: UploadJob) -> None:
    assert job.metadata is not None
    _wait_for_ranks(job)
    commit_metadata(job.client, job.uri.bucket, job.uri.key(METADATA_NAME), job.metadata,
                    exclusive=not job.overwrite)
    keys = [job.marker(rank) for rank in range(job.world_size)]
    for start in range(0, len(keys), 1000):
        job.client.call("delete_objects", job.uri.bucket,
                        Delete={"Objects": [{"Key": key} for key in keys[start:start + 1000]], "Quiet": True})


def run_job(job: UploadJob, sleep: Callable[[float], None] = time.sleep) -> UploadStatus:
    """Run ``job`` with retries; return its final status. Never raises for an S3 failure."""
    size = sum(_size_of(job.checkpoint_dir / relative) for relative in job.files)
    status = UploadStatus(job.name, str(job.uri), job.rank, "uploading", len(job.files), size)
    uploaded = False
    for attempt in range(1, job.attempts + 1):
        status = replace(status, attempts=attempt)
        _publish(job, status)
        try:
            if not uploaded:
                _upload_files(job)
                put_object(job.client, job.uri.bucket, job.marker(job.rank), b"uploaded")
                uploaded = True
            if job.metadata is not None:
                _commit(job)
            status = replace(status, state="committed" if job.metadata is not None else "uploaded",
                             seconds=time.monotonic() - job.queued_at)
            _publish(job, status)
            return status
        except Exception as error:  # reported below, never dropped
            final = isinstance(error, _FINAL) or attempt == job.attempts
            log.warning("s3dcp upload of %s (rank %d) to %s failed (attempt %d of %d%s): %s", job.name,
                        job.rank, job.uri, attempt, job.attempts, "" if final else ", retrying", error)
            if final:
                status = replace(status, state="failed", error=f"{type(error).__name__}: {error}",
                                 seconds=time.monotonic() - job.queued_at)
                if not uploaded:
                    _leave_failure_marker(job, status.error or "")
                log.error("s3dcp upload failed: checkpoint=%s rank=%d uri=%s error=%s; the local copy %s "
                          "is intact", job.name, job.rank, job.uri, status.error, job.checkpoint_dir)
                _publish(job, status)
                return status
            sleep(min(60.0, 2.0 ** (attempt - 1)))
    raise AssertionError("unreachable")


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
        log.info("s3dcp upload checkpoint=%s rank=%d state=%s files=%d bytes=%d seconds=%.3f uri=%s",
                 status.checkpoint, status.rank, status.state, status.files, status.size, status.seconds,
                 status.uri)
    if job.on_status is not None:
        try:
            job.on_status(status)
        except Exception:
            log.exception("s3dcp: the on_upload callback raised")


class TierUploader:
    """This process's queue of upload jobs and the thread that runs them in order."""

    def __init__(self) -> None:
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
                # not a daemon: the interpreter waits for queued uploads before it exits
                self._worker = threading.Thread(target=self._run, name="s3dcp-tier-upload", daemon=False)
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

    def wait(self, timeout: float | None = None, root: Path | None = None) -> list[UploadStatus]:
        """Block until no upload (under ``root``, if given) is queued or running; return all statuses.

        Raises:
            TimeoutError: uploads are still running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while any(root is None or job.checkpoint_dir.parent == root for job in self._pending.values()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"background uploads still running after {timeout} s")
                self._lock.wait(remaining)
            return list(self._statuses)

    def _run(self) -> None:
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
        return UploadStatus(job.name, str(job.uri), job.rank, "failed", len(job.files), 0,
                            error=f"{type(error).__name__}: {error}")
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
