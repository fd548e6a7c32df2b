"""Ranged reads into the caller's buffers, fetched exactly.

:func:`read_range_into` fetches one range (planned by :func:`s3dcp._ranges.coalesce`)
into preallocated buffers; when a body breaks off, the next attempt asks
only for the bytes still missing. :class:`DownloadBuffers` bounds the bytes
of buffers alive at once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from s3dcp._config import MIB
from s3dcp._errors import S3RequestError
from s3dcp._ranges import ByteRange
from s3dcp._s3.body import open_body
from s3dcp._s3.client import S3Client
from s3dcp._s3.retry import TruncatedBodyError

__all__ = ["SHORT_OBJECT_CODE", "DownloadBuffers", "read_range_into"]

# The S3 code of a range the object does not hold (S3 answers 416 with it): also what
# read_range_into reports when a store serves fewer bytes than asked because the object ends
SHORT_OBJECT_CODE = "InvalidRange"
# A body that breaks off loses the chunk being read; the retry asks for the rest.
_READ_CHUNK = MIB
_BUFFER_UNIT = MIB


def allocate(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes, not zero-filled (it is about to be overwritten)."""
    array: Any = torch.empty(size, dtype=torch.uint8).numpy()
    return memoryview(array).cast("B")


class DownloadBuffers:
    """Download buffers reused from one fetch to the next, at most ``limit`` bytes kept.

    Fresh memory is page-faulted (and zeroed by the kernel) on first touch;
    reusing buffers across the fetches of a load saves that. Sizes are
    rounded up to whole MiB, and a kept buffer serves a fetch only if it is
    at most a quarter larger than needed, so little memory sits unused.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free: list[memoryview] = []
        self._lock = threading.Lock()

    @staticmethod
    def capacity_for(size: int) -> int:
        """The bytes a buffer for ``size`` really takes."""
        return max(_BUFFER_UNIT, -(-size // _BUFFER_UNIT) * _BUFFER_UNIT)

    def take(self, size: int) -> memoryview:
        """A buffer of exactly ``size`` bytes (a view on a kept or a new one)."""
        wanted = self.capacity_for(size)
        with self._lock:
            fitting = [b for b in self._free if wanted <= b.nbytes <= wanted + wanted // 4]
            if fitting:
                best = min(fitting, key=lambda b: b.nbytes)
                self._free.remove(best)
                return best[:size]
        return allocate(wanted)[:size]

    def give_back(self, view: memoryview) -> None:
        """Keep the buffer behind ``view`` (from :meth:`take`) unless ``limit`` is reached."""
        whole = memoryview(view.obj).cast("B")
        with self._lock:
            if self._kept_bytes() + whole.nbytes <= self.limit:
                self._free.append(whole)

    @property
    def kept_bytes(self) -> int:
        with self._lock:
            return self._kept_bytes()

    def _kept_bytes(self) -> int:
        return sum(buffer.nbytes for buffer in self._free)


def read_range_into(
    client: S3Client,
    bucket: str,
    key: str,
    span: ByteRange,
    targets: Sequence[memoryview],
    *,
    stop: threading.Event | None = None,
) -> None:
    """Fetch ``span`` of ``s3://bucket/key`` into ``targets``, filled one after another.

    Their lengths add up to the span's. One GET (more only if a body breaks off:
    each retry asks for the bytes still missing). Once ``stop`` is set, no
    attempt is made again (:class:`~s3dcp._s3.retry.TransferStopped`).
    """
    if sum(target.nbytes for target in targets) != span.length:
        raise ValueError("targets must hold exactly the span's bytes")
    if span.length == 0:
        return
    pieces = [(target, target.nbytes) for target in targets if target.nbytes]
    filled = 0  # bytes of the span received so far
    piece, piece_filled = 0, 0  # the target being filled, and how far

    def attempt() -> None:
        nonlocal filled, piece, piece_filled
        first = span.start + filled
        response = client.raw.get_object(Bucket=bucket, Key=key, Range=f"bytes={first}-{span.end - 1}")
        body: Any = response["Body"]
        _check_served_range(response, bucket, key, first, span.end)
        try:
            reader = open_body(body, f"s3://{bucket}/{key}")
            while filled < span.length:
                target, size = pieces[piece]
                count = reader.read_into(target[piece_filled : piece_filled + min(_READ_CHUNK, size - piece_filled)])
                if not count:
                    raise TruncatedBodyError(f"body of s3://{bucket}/{key} ended {span.length - filled} bytes early")
                filled += count
                piece_filled += count
                if piece_filled == size:
                    piece, piece_filled = piece + 1, 0
            reader.release()
        finally:
            body.close()

    client.run(attempt, "get_object", bucket, key, stop=stop)


def _check_served_range(response: dict[str, Any], bucket: str, key: str, first: int, end: int) -> None:
    """Refuse a response that is not the range asked for (some stores ignore Range).

    An object that ends before ``end`` is reported with :data:`SHORT_OBJECT_CODE`, as S3
    itself does when the whole range lies past the end (416): stores serve what there is of
    a range that starts inside the object and ends past it, and say the object's size.
    """
    served = response.get("ContentRange")
    expected = f"bytes {first}-{end - 1}/"
    if served is not None and str(served).startswith(expected):
        return
    if served is None and first == 0 and response.get("ContentLength") == end:
        return  # whole object returned, and the whole object is what we asked for
    response["Body"].close()
    size = _object_size(served, response.get("ContentLength"))
    if size is not None and size < end:
        raise S3RequestError(
            f"s3://{bucket}/{key} holds {size} bytes; bytes {first}-{end - 1} were asked for",
            bucket=bucket,
            key=key,
            code=SHORT_OBJECT_CODE,
        )
    raise S3RequestError(
        f"s3://{bucket}/{key}: asked for bytes {first}-{end - 1} but the store answered "
        f"{served or 'with no Content-Range'}; it may not support ranged GETs",
        bucket=bucket,
        key=key,
    )


def _object_size(served: object, length: object) -> int | None:
    """The object's size from ``Content-Range: bytes a-b/SIZE``, or from the length of a whole-object answer."""
    if served is None:
        return length if isinstance(length, int) else None
    total = str(served).rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None
