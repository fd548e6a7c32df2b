"""Stream bytes into one S3 object: one PUT when small, multipart when large.

:class:`ObjectUpload` is a write-only file object, so ``torch.save`` can
serialize straight into S3 without the whole shard in memory. Bytes are cut
into parts as they arrive; each full part is sent on the shared
:class:`TransferPool` while serialization goes on, with a bounded number of
parts in flight. A multipart upload always ends in complete or abort: the
abort is armed the moment the upload id exists.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_for
from pathlib import Path
from typing import Any, TypeVar

import botocore.exceptions

from s3dcp import _crc32 as crc32
from s3dcp._config import MAX_OBJECT_SIZE, MAX_PART_SIZE, MAX_PARTS, MIB, MIN_PART_SIZE
from s3dcp._errors import S3DCPError, S3RequestError
from s3dcp._interrupts import leave_signals_to_main_thread, wait_futures, wait_until
from s3dcp._s3.client import S3Client
from s3dcp._s3.concurrency import AdaptiveLimit
from s3dcp._s3.objects import put_object
from s3dcp._s3.retry import TransferStopped, error_code

__all__ = [
    "KEPT_BETWEEN_SAVES",
    "PartBuffers",
    "TransferPool",
    "ObjectUpload",
    "abort_multipart",
    "choose_part_size",
    "complete_multipart",
    "multipart_etag",
    "multipart_upload",
    "upload_file",
]

_MIN_BUFFER = 64 * 1024
# Bytes copied and checksummed at a time: small enough to stay in cache between the two.
_CRC_PIECE = MIB
# Checksums an UploadPart answer may carry, to be repeated in CompleteMultipartUpload.
_PART_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256")

T = TypeVar("T")

log = logging.getLogger("s3dcp")

# How long an abort waits for parts already on the wire before it aborts the upload anyway.
ABORT_GRACE = 5.0


def multipart_etag(parts: list[dict[str, Any]]) -> str | None:
    """The ETag S3 gives an object completed from ``parts`` (MD5 of the part MD5s).

    ``None`` when a part ETag is not a plain MD5 (e.g. SSE-KMS), so it cannot be predicted.
    """
    try:
        digests = b"".join(bytes.fromhex(str(part["ETag"]).strip('"')) for part in parts)
    except ValueError:
        return None
    if len(digests) != 16 * len(parts):
        return None
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"


def choose_part_size(expected_size: int, preferred: int) -> int:
    """Part size for an object of about ``expected_size`` bytes.

    Uses ``preferred`` unless the object would then need more than S3's
    10,000 parts; then the smallest whole-MiB size that fits, so the upload
    never fails at part 10,001.
    """
    if expected_size < 0:
        raise ValueError("expected_size must be >= 0")
    if expected_size > MAX_OBJECT_SIZE:
        raise ValueError(f"an object of {expected_size} bytes exceeds S3's 5 TiB limit")
    if not MIN_PART_SIZE <= preferred <= MAX_PART_SIZE:
        raise ValueError("preferred part size must be within S3's 5 MiB..5 GiB")
    needed = math.ceil(expected_size / MAX_PARTS)
    if needed <= preferred:
        return preferred
    mib = MIB
    size = math.ceil(needed / mib) * mib
    return min(size, MAX_PART_SIZE)


# Part buffers a writer keeps from one save to the next, at most.
KEPT_BETWEEN_SAVES = 8


class PartBuffers:
    """Part-sized buffers kept for reuse, at most ``limit`` of them.

    A fresh 16 MiB ``bytearray`` is zero-filled and page-faulted in before a
    byte of it is used; reusing buffers, across the parts of one save and
    across saves, saves about 0.2 CPU seconds per GiB. Within a save few
    buffers wait here at a time (the next part takes one as soon as it is
    back), so ``limit`` is mostly what stays held between saves. Pickles empty.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes: a kept one if there is one, else a new one."""
        with self._lock:
            for index, buffer in enumerate(self._free):
                if len(buffer) == size:
                    return self._free.pop(index)
        return bytearray(size)

    def give_back(self, buffer: bytearray) -> None:
        """Keep ``buffer`` for a later part, unless ``limit`` are kept already."""
        with self._lock:
            if len(self._free) < self.limit:
                self._free.append(buffer)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            return sum(len(buffer) for buffer in self._free)

    def __getstate__(self) -> dict[str, int]:
        return {"limit": self.limit}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["limit"])  # type: ignore[misc]


class TransferPool:
    """Threads that send requests, with at most ``concurrency.current`` requests queued or running.

    ``submit`` blocks while the limit is reached, which is what bounds the
    memory held by parts waiting to be sent. The limit starts low and grows
    while throughput grows with it (:class:`~s3dcp._s3.concurrency.AdaptiveLimit`),
    never past ``concurrency.maximum``.

    :meth:`stop` gives a transfer up at once: queued requests are cancelled
    and never sent, retries of running ones end (see :meth:`stop_signal`),
    and ``submit`` raises :class:`~s3dcp._s3.retry.TransferStopped`. The threads
    are daemon threads, not joined once the pool is stopped, so a request
    stuck in the network cannot hold the process at exit after an interrupt;
    nothing is lost by that, since every upload ends in complete or abort
    before its caller returns.
    """

    def __init__(self, concurrency: AdaptiveLimit, buffers: PartBuffers | None = None, name: str = "s3dcp-io") -> None:
        self.concurrency = concurrency
        self.limit = concurrency.maximum
        self.buffers = buffers if buffers is not None else PartBuffers(self.limit)
        self._name = name
        self._changed = threading.Condition(threading.RLock())
        self._queue: collections.deque[tuple[Future[Any], Callable[[], Any], int]] = collections.deque()
        self._pending = 0  # queued or running
        self._threads = 0
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._closed = False
        self._stopped = threading.Event()
        self._stopped_future: Future[None] = Future()  # fails when the pool stops, for wait()
        self._signals: weakref.WeakSet[threading.Event] = weakref.WeakSet()

    def take_buffer(self, size: int) -> bytearray:
        return self.buffers.take(size)

    def give_back_buffer(self, buffer: bytearray) -> None:
        self.buffers.give_back(buffer)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def stop_signal(self) -> threading.Event:
        """An event that is set when this pool stops (its holder may also set it itself).

        Requests pass it to :meth:`S3Client.call_stoppable`, so their
        retries end when the pool stops.
        """
        signal = threading.Event()
        with self._changed:
            if self._stopped.is_set():
                signal.set()
            else:
                self._signals.add(signal)
        return signal

    def submit(self, func: Callable[[], T], size: int = 0) -> Future[T]:
        """Queue ``func``, a request that moves ``size`` bytes (which the adaptive limit counts)."""
        future: Future[T] = Future()
        with self._changed:
            wait_until(self._changed, lambda: self._pending < self.concurrency.current or self._stopped.is_set())
            if self._stopped.is_set():
                raise TransferStopped("the transfer was stopped; no more requests are sent")
            if self._closed:
                raise RuntimeError("submit to a transfer pool that was shut down")
            self._pending += 1
            self._queue.append((future, func, size))
            if self._idle == 0 and self._threads < self.limit:
                self._threads += 1
                thread = threading.Thread(target=self._work, name=f"{self._name}_{self._threads}", daemon=True)
                self._workers.append(thread)
                thread.start()
            self._changed.notify_all()
        future.add_done_callback(self._finished)
        return future

    def wait(self, futures: list[Future[T]]) -> list[T]:
        """The results of ``futures``, in order, once all are done.

        Raises the error of the first one that fails as soon as it fails,
        and :class:`~s3dcp._s3.retry.TransferStopped` as soon as the pool
        stops, rather than waiting for requests still on the wire.
        """
        pending: set[Future[Any]] = set(futures)
        while pending:
            done, pending = wait_futures(pending | {self._stopped_future}, return_when=FIRST_COMPLETED)
            for future in done:
                if future is not self._stopped_future and not future.cancelled() and future.exception() is not None:
                    return [future.result()]  # raises its error
            if self._stopped_future in done or any(future.cancelled() for future in done):
                raise TransferStopped("the transfer was stopped before all its requests were done")
            pending.discard(self._stopped_future)
        return [future.result() for future in futures]

    def _finished(self, _: Future[Any]) -> None:
        with self._changed:
            self._pending -= 1
            self._changed.notify_all()

    def _work(self) -> None:
        leave_signals_to_main_thread()
        while True:
            with self._changed:
                self._idle += 1
                while not self._queue and not self._closed:
                    self._changed.wait()
                self._idle -= 1
                if not self._queue:
                    self._threads -= 1
                    return
                future, func, size = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            started = self.concurrency.started()
            try:
                result = func()
            except BaseException as error:  # handed to the future's owner
                self.concurrency.finished(started, 0)
                future.set_exception(error)
            else:
                self.concurrency.finished(started, size)
                future.set_result(result)

    def stop(self) -> None:
        """Give the transfer up: cancel what is queued, end retries, refuse new requests."""
        with self._changed:
            first = not self._stopped.is_set()
            self._stopped.set()
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            signals = list(self._signals)
            self._changed.notify_all()
        for signal in signals:
            signal.set()
        for future, _, _ in queued:
            future.cancel()
        if first:
            self._stopped_future.set_exception(TransferStopped("the transfer was stopped"))

    def shutdown(self) -> None:
        """No more requests; wait for the threads to end, unless the pool was stopped.

        After :meth:`stop` a thread may be stuck in a request that nobody
        needs any more; it is not waited for.
        """
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            workers = [] if self._stopped.is_set() else list(self._workers)
        for thread in workers:
            thread.join()


def complete_multipart(client: S3Client, bucket: str, key: str, upload_id: str, parts: list[dict[str, Any]]) -> str:
    """CompleteMultipartUpload, safe to retry; return the ETag.

    If an attempt completed the upload but its answer was lost, the retry
    finds no such upload. That is success only when the object now stored
    has the ETag these exact parts give; anything else is raised.
    """
    sent = 0

    def attempt() -> str:
        nonlocal sent
        sent += 1
        try:
            response = client.raw.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except botocore.exceptions.ClientError as err:
            if sent > 1 and error_code(err)[0] == "NoSuchUpload":
                landed = _stored_etag(client, bucket, key)
                if landed is not None and landed == multipart_etag(parts):
                    return landed
            raise
        return str(response.get("ETag", ""))

    return client.run(attempt, "complete_multipart_upload", bucket, key)


def _stored_etag(client: S3Client, bucket: str, key: str) -> str | None:
    try:
        head = client.raw.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError:
        return None
    return str(head.get("ETag", "")).strip('"')


def abort_multipart(client: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """AbortMultipartUpload; an upload already gone counts as aborted."""
    try:
        client.call("abort_multipart_upload", bucket, key, UploadId=upload_id)
    except S3RequestError as error:
        if error.code != "NoSuchUpload":
            raise


@contextlib.contextmanager
def multipart_upload(client: S3Client, bucket: str, key: str, **params: Any) -> Iterator[str]:
    """A multipart upload's id, for parts the caller sends itself (e.g. ``UploadPartCopy``).

    Complete it inside the block with :func:`complete_multipart`. If the block
    raises, the upload is aborted; an abort that fails too is attached to the
    original error as a note, never raised in its place.
    """
    upload_id = str(client.call("create_multipart_upload", bucket, key, **params)["UploadId"])
    try:
        yield upload_id
    except BaseException as error:
        try:
            abort_multipart(client, bucket, key, upload_id)
        except S3DCPError as abort_error:
            error.add_note(f"also failed to abort the upload: {abort_error}")
        raise


class ObjectUpload:
    """A write-only binary stream that becomes the S3 object ``key`` on :meth:`commit`.

    Use it as a context manager: leaving the block normally commits, leaving
    it by an exception aborts (no parts are left behind). ``tell()`` is the
    number of bytes written so far, which is the offset of the next byte in
    the finished object.

    When the pool stops (the save is interrupted), parts not yet sent are
    never sent, retries end, and leaving the block aborts the upload.
    """

    def __init__(
        self,
        client: S3Client,
        pool: TransferPool,
        bucket: str,
        key: str,
        part_size: int,
        put_params: dict[str, Any] | None = None,
        size_hint: int = 0,
    ) -> None:
        self._client = client
        self._pool = pool
        self.bucket = bucket
        self.key = key
        self.part_size = part_size
        self._params = dict(put_params or {})
        first_capacity = min(part_size, max(_MIN_BUFFER, size_hint))
        self._buffer = pool.take_buffer(first_capacity) if first_capacity == part_size else bytearray(first_capacity)
        self._filled = 0
        self._written = 0
        self._upload_id: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._closed = False
        self._stop = pool.stop_signal()  # set by abort() or when the pool stops
        self.etag: str | None = None
        # S3's CRC32 upload checksum of the part being filled, computed as bytes are copied in
        self._crc_parts = client.settings.config.upload_checksum == "crc32"
        self._part_crc = 0

    # -- the file-object protocol torch.save needs --------------------------------
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        """Nothing to do: parts are sent when full, the rest on commit."""

    def write(self, data: Any) -> int:
        self._copy_in(memoryview(data).cast("B"), want_crc=False)
        return memoryview(data).nbytes

    def write_with_crc(
        self, data: Any, also: Callable[[memoryview], Any] | None = None, unchanging: bool = False
    ) -> int:
        """Write ``data`` and return its CRC-32, from the same pass that copies it.

        ``also`` (e.g. a digest's ``update``) sees each copied piece while it is
        still in cache, so a caller's digest costs no extra pass over memory.
        ``unchanging`` is the caller's promise that ``data`` keeps its bytes
        until :meth:`commit` returns: whole parts are then sent straight from
        it, not copied into part buffers (the memory stays referenced until
        its parts are sent).
        """
        return self._copy_in(memoryview(data).cast("B"), want_crc=True, also=also, unchanging=unchanging)

    def _copy_in(
        self,
        view: memoryview,
        want_crc: bool,
        also: Callable[[memoryview], Any] | None = None,
        unchanging: bool = False,
    ) -> int:
        if self._closed:
            raise ValueError(f"write to a finished upload of s3://{self.bucket}/{self.key}")
        size = view.nbytes
        start = 0
        data_crc = 0
        while start < size:
            if self._filled == len(self._buffer):
                if len(self._buffer) < self.part_size:
                    self._grow(size - start)
                else:
                    self._send_part()
            if unchanging and self._filled == 0 and size - start >= self.part_size:
                part = view[start : start + self.part_size]
                part_crc = self._send_view(part, also)
                data_crc = crc32.combine(data_crc, part_crc, self.part_size)
                start += self.part_size
                continue
            take = min(len(self._buffer) - self._filled, size - start, _CRC_PIECE)
            # through a memoryview: bytearray slice assignment is several times slower
            with memoryview(self._buffer) as target:
                piece = target[self._filled : self._filled + take]
                piece[:] = view[start : start + take]
                if want_crc:
                    piece_crc = crc32.compute(piece)  # just copied, still in cache
                    if also is not None:
                        also(piece)
                    data_crc = crc32.combine(data_crc, piece_crc, take)
                    if self._crc_parts:
                        self._part_crc = crc32.combine(self._part_crc, piece_crc, take)
                elif self._crc_parts:
                    self._part_crc = crc32.compute(piece, self._part_crc)
                piece.release()
            self._filled += take
            start += take
        self._written += size
        return data_crc

    def _grow(self, wanted: int) -> None:
        """Enlarge a buffer that started small (small objects stay cheap)."""
        capacity = min(self.part_size, max(2 * len(self._buffer), self._filled + wanted))
        if capacity == self.part_size:
            larger = self._pool.take_buffer(capacity)
        else:
            larger = bytearray(capacity)
        with memoryview(larger) as target, memoryview(self._buffer) as source:
            target[: self._filled] = source[: self._filled]
        self._buffer = larger

    def _take_part_checksum(self) -> dict[str, str]:
        """The CRC32 of the bytes filled so far, as the request parameter; starts a new one."""
        if not self._crc_parts:
            return {}
        crc, self._part_crc = self._part_crc, 0
        return {"ChecksumCRC32": base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")}

    def _take_buffer(self, next_capacity: int) -> bytearray:
        """Hand the filled bytes over for sending; start a buffer of ``next_capacity``."""
        body = self._buffer
        if self._filled < len(body):
            del body[self._filled :]
        self._buffer = self._pool.take_buffer(next_capacity) if next_capacity else bytearray()
        self._filled = 0
        return body

    @property
    def requests(self) -> int:
        """Requests this upload needs (not counting retries): one PUT, or create + parts + complete."""
        return len(self._parts) + 2 if self._parts else 1

    # -- finishing ---------------------------------------------------------------
    def commit(self) -> str:
        """Make the object visible; return its ETag."""
        if self._closed:
            raise ValueError("upload already finished")
        self._closed = True
        if self._upload_id is None:
            checksum = self._take_part_checksum()
            body = self._take_buffer(0)
            self.etag = put_object(
                self._client, self.bucket, self.key, body, stop=self._stop, **self._params, **checksum
            )
            return self.etag
        if self._filled or not self._parts:
            self._send_part()
        parts = self._pool.wait(self._parts)
        self.etag = complete_multipart(self._client, self.bucket, self.key, self._upload_id, parts)
        self._upload_id = None
        return self.etag

    def abort(self) -> None:
        """Drop everything written; abort the multipart upload if one was started.

        Parts not yet sent are cancelled and retries of the others end. Parts
        already on the wire get ``ABORT_GRACE`` seconds to finish, since S3
        may keep a part that lands after the abort; one that takes longer
        (a stalled connection) is not waited for: the upload is aborted
        anyway, and that part then fails with NoSuchUpload.
        """
        self._closed = True
        self._stop.set()
        self._buffer, self._filled = bytearray(), 0
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        for future in self._parts:
            future.cancel()
        running = [future for future in self._parts if not future.done()]
        if running:
            _, stalled = wait_for(running, timeout=ABORT_GRACE)
            if stalled:
                log.debug(
                    "aborting the upload of s3://%s/%s with %d parts still in flight",
                    self.bucket,
                    self.key,
                    len(stalled),
                )
        abort_multipart(self._client, self.bucket, self.key, upload_id)

    def __enter__(self) -> ObjectUpload:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self.commit()
            except BaseException as error:
                self._abort_quietly_after(error)
                raise
        else:
            self._abort_quietly_after(exc)

    def _abort_quietly_after(self, original: BaseException | None) -> None:
        """Abort after a failure; an abort failure is attached, not lost."""
        try:
            self.abort()
        except S3DCPError as abort_error:
            if original is not None:
                original.add_note(f"also failed to abort the upload: {abort_error}")
            else:
                raise

    def _raise_if_a_part_failed(self) -> None:
        for future in self._parts:
            if future.done() and not future.cancelled():
                error = future.exception()
                if error is not None:
                    raise error

    def _send_part(self) -> None:
        """Send the bytes filled so far as the next part."""
        number = self._next_part_number()
        checksum = self._take_part_checksum()
        body = self._take_buffer(0 if self._closed else self.part_size)
        self._submit_part(number, body, checksum, recycle=len(body) == self.part_size)

    def _next_part_number(self) -> int:
        """Start the multipart upload if need be; the number the next part gets."""
        self._raise_if_a_part_failed()
        if self._upload_id is None:
            response = self._client.call_stoppable(
                self._stop, "create_multipart_upload", self.bucket, self.key, **self._params
            )
            self._upload_id = str(response["UploadId"])
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise S3DCPError(
                f"s3://{self.bucket}/{self.key} needs more than {MAX_PARTS} parts of "
                f"{self.part_size} bytes; raise part_size",
                bucket=self.bucket,
                key=self.key,
            )
        return number

    def _send_view(self, part: memoryview, also: Callable[[memoryview], Any] | None) -> int:
        """Send ``part`` (a whole part of the caller's memory) as is; return its CRC-32.

        The CRC-32 and ``also`` go over it in cache-sized pieces, as on the copying path.
        """
        crc = 0
        for at in range(0, part.nbytes, _CRC_PIECE):
            piece = part[at : at + _CRC_PIECE]
            crc = crc32.combine(crc, crc32.compute(piece), piece.nbytes)
            if also is not None:
                also(piece)
        number = self._next_part_number()
        checksum = {}
        if self._crc_parts:
            checksum = {"ChecksumCRC32": base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")}
        self._submit_part(number, part, checksum, recycle=False)
        return crc

    def _submit_part(self, number: int, body: Any, checksum: dict[str, str], recycle: bool) -> None:
        """Queue part ``number``; ``recycle`` gives its buffer back for reuse once sent."""
        upload_id = self._upload_id
        client, bucket, key, pool, stop = self._client, self.bucket, self.key, self._pool, self._stop

        def send() -> dict[str, Any]:
            response = client.call_stoppable(
                stop, "upload_part", bucket, key, UploadId=upload_id, PartNumber=number, Body=body, **checksum
            )
            if recycle:
                pool.give_back_buffer(body)
            part = {"PartNumber": number, "ETag": response["ETag"]}
            part.update((name, response[name]) for name in _PART_CHECKSUMS if response.get(name))
            return part

        self._parts.append(pool.submit(send, memoryview(body).nbytes))


_FILE_CHUNK = 8 * MIB  # bytes read from a local file at a time


def upload_file(
    client: S3Client,
    pool: TransferPool,
    path: Path,
    bucket: str,
    key: str,
    part_size: int,
    on_bytes: Callable[[int], Any] | None = None,
) -> None:
    """Stream the local file ``path`` to ``s3://bucket/key`` (multipart above one part)."""
    size = path.stat().st_size
    with (
        path.open("rb") as source,
        ObjectUpload(client, pool, bucket, key, choose_part_size(size, part_size), size_hint=size) as upload,
    ):
        while chunk := source.read(_FILE_CHUNK):
            upload.write(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
