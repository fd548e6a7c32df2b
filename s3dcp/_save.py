"""Writing one rank's shard objects to S3, and the signals and background work a save needs.

:func:`write_shards` splits a rank's items into ``thread_count`` shard
objects balanced by size and streams each through an
:class:`~s3dcp._s3.upload.ObjectUpload` on one shared
:class:`~s3dcp._s3.upload.TransferPool`: at most ``max_concurrency`` parts
in flight (from ``initial_concurrency``, raised where throughput grows with it),
however many objects are being filled, so part buffers stay within
``max_concurrency + thread_count`` parts. A failure, Ctrl-C or SIGTERM stops the pool: no
queued part is sent, retries end, and every upload aborts.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch.distributed.checkpoint.planner import SavePlanner, WriteItem
from torch.distributed.checkpoint.storage import WriteResult

from s3dcp._compat.torch import StreamTransform, stream_transform_class
from s3dcp._config import validate_part_size
from s3dcp._errors import UnsafeCheckpointError
from s3dcp._format.layout import SHARD_SUFFIX
from s3dcp._format.metadata import check_relative_key
from s3dcp._format.shard import item_nbytes, split_items, write_items
from s3dcp._interrupts import leave_signals_to_main_thread, wait_futures
from s3dcp._prefix import PrefixStrategy, stems_for
from s3dcp._s3.client import S3Client
from s3dcp._s3.upload import ObjectUpload, PartBuffers, TransferPool, choose_part_size
from s3dcp._uri import S3Uri

__all__ = [
    "RankStem",
    "SIGTERM_EXIT_STATUS",
    "ShardOptions",
    "ShardsWritten",
    "check_extensions",
    "check_save_options",
    "checked_stems",
    "sigterm_raises",
    "write_shards",
]


def check_extensions(extensions: Sequence[StreamTransform] | None) -> tuple[StreamTransform, ...]:
    """The writer's stream transforms as a tuple; a ``TypeError`` saying what to pass otherwise."""
    if extensions is None:
        return ()
    if isinstance(extensions, (str, bytes)) or not isinstance(extensions, Sequence):
        raise TypeError(
            "extensions must be a list of DCP StreamTransformExtension instances, e.g. [ZStandard()] "
            f"from torch.distributed.checkpoint._extension, not {type(extensions).__name__}"
        )
    if not extensions:
        return ()
    extension_class = stream_transform_class()
    if extension_class is None:
        raise TypeError(
            "extensions need DCP stream transforms, which this torch does not provide "
            f"(torch {torch.__version__} has no torch.distributed.checkpoint._extension, or a changed one); "
            "save without them, or with a newer torch"
        )
    for extension in extensions:
        if not isinstance(extension, extension_class):
            raise TypeError(
                "each of extensions must be a DCP StreamTransformExtension instance, e.g. ZStandard() "
                f"from torch.distributed.checkpoint._extension, not {extension!r}"
            )
    return tuple(extensions)


def check_save_options(thread_count: int, part_size: int | None, overwrite: bool) -> None:
    """A ``ValueError`` or ``TypeError`` that says what to pass, for a writer's bad options."""
    if not isinstance(thread_count, int) or isinstance(thread_count, bool) or thread_count < 1:
        raise ValueError(f"thread_count must be an int >= 1, got {thread_count!r}")
    if part_size is not None:
        validate_part_size(part_size)
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {overwrite!r}")


def checked_stems(strategy: PrefixStrategy, world_size: int) -> list[str]:
    """Each rank's key stem from the prefix strategy, checked before anything is written."""
    name = type(strategy).__name__
    stems = stems_for(strategy, world_size)
    for rank, stem in enumerate(stems):
        try:
            check_relative_key(f"{stem}0{SHARD_SUFFIX}" if isinstance(stem, str) else stem, name)
        except UnsafeCheckpointError:
            raise ValueError(
                f"{name} gave rank {rank} the key stem {stem!r}, which is not a relative key inside "
                "the checkpoint (no leading '/', no empty, '.' or '..' segments, no control characters)"
            ) from None
    seen: dict[str, int] = {}
    for rank, stem in enumerate(stems):
        if stem in seen:
            raise ValueError(
                f"{name} gave ranks {seen[stem]} and {rank} the same key stem {stem!r}; "
                "their shard objects would overwrite each other"
            )
        seen[stem] = rank
    return stems


@dataclass(frozen=True)
class RankStem:
    """A rank's storage data in the global save plan: the key stem of its shard objects."""

    stem: str


@dataclass(frozen=True)
class ShardOptions:
    """How a rank writes its shards: objects per rank, part size, the part buffers it reuses, stream transforms."""

    thread_count: int
    part_size: int
    part_buffers: PartBuffers
    extensions: Sequence[StreamTransform] = ()


@dataclass(frozen=True)
class ShardsWritten:
    """What :func:`write_shards` stored: each item's result, how many objects and requests."""

    results: list[WriteResult]
    objects: int
    requests: int

    @property
    def size(self) -> int:
        """The bytes stored, all items together."""
        return sum(result.size_in_bytes for result in self.results)


def write_shards(
    client: S3Client,
    uri: S3Uri,
    stem: str,
    items: list[WriteItem],
    planner: SavePlanner,
    options: ShardOptions,
) -> ShardsWritten:
    """Upload one rank's items as ``thread_count`` shard objects ``{stem}{i}.distcp`` under ``uri``.

    An interrupt (or any failure) sends no queued part, ends retries,
    aborts every multipart upload and re-raises, so nothing is committed.
    In the main thread of a process that left SIGTERM at its default,
    SIGTERM raises ``SystemExit(143)`` instead of ending the process without
    that clean-up (see :func:`sigterm_raises`).
    """
    buckets = split_items(items, options.thread_count)
    # up to max_concurrency parts on the wire whatever the thread count (from initial_concurrency,
    # raised where it pays): each shard object's part being filled comes on top (the memory bound
    # the config states)
    pool = TransferPool(client.concurrency("upload"), options.part_buffers)

    def write_file(index: int) -> list[WriteResult]:
        relative = f"{stem}{index}{SHARD_SUFFIX}"
        members = buckets[index]
        expected = sum(item_nbytes(item) for item in members)
        # torch.save adds about a kilobyte of framing per tensor
        size = choose_part_size(expected + 4096 * len(members), options.part_size)
        with ObjectUpload(
            client,
            pool,
            uri.bucket,
            uri.key(relative),
            size,
            size_hint=expected + 4096 * len(members),
        ) as upload:
            written = write_items(upload, members, planner, relative, extensions=options.extensions)
        requests.append(upload.requests)  # list.append is atomic: no lock needed
        return written

    requests: list[int] = []

    results: list[WriteResult] = []
    try:
        with sigterm_raises():
            if len(buckets) <= 1:
                for index in range(len(buckets)):
                    results.extend(write_file(index))
            else:
                shards = ThreadPoolExecutor(
                    len(buckets), thread_name_prefix="s3dcp-shard", initializer=leave_signals_to_main_thread
                )
                try:
                    written = [shards.submit(write_file, index) for index in range(len(buckets))]
                    wait_futures(written, return_when=FIRST_EXCEPTION)
                    for shard in written:
                        error = shard.exception() if shard.done() else None
                        if error is not None:
                            raise error  # the first to fail; the others are stopped below
                    for shard in written:
                        results.extend(shard.result())
                except BaseException:
                    pool.stop()  # the other shards give up too, rather than upload on
                    raise
                finally:
                    shards.shutdown(wait=True, cancel_futures=True)
    except BaseException:
        # Ctrl-C, SIGTERM or a failure: queued parts are never sent, retries end, and each
        # upload aborts as its block exits, so the error reaches DCP within seconds
        pool.stop()
        raise
    finally:
        pool.shutdown()
    return ShardsWritten(results, len(buckets), sum(requests))


SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` in the main thread.

    By default SIGTERM ends a process at once, leaving its multipart uploads
    open (billed until someone aborts them). As an exception it unwinds the
    save like Ctrl-C does. Installed only in the main thread (the only one
    Python delivers signals to) and only over the default action, so a
    handler the application installed is never replaced; the previous
    handler is restored on the way out, and after the first SIGTERM, so a
    second one ends the process at once as usual.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def stop_saving(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(SIGTERM_EXIT_STATUS)

    signal.signal(signal.SIGTERM, stop_saving)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is stop_saving:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
