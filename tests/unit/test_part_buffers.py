"""Part buffers are reused, bounded, and never travel through pickle."""

from __future__ import annotations

import pickle

from s3dcp._s3.upload import PartBuffers


def test_buffers_are_reused_by_size_and_bounded() -> None:
    buffers = PartBuffers(limit=2)
    first = buffers.take(10)
    buffers.give_back(first)
    assert buffers.take(10) is first
    assert buffers.take(10) is not first  # none kept any more: a new one
    for _ in range(3):
        buffers.give_back(bytearray(10))
    assert buffers.kept_bytes == 20  # the third was dropped
    assert len(buffers.take(7)) == 7  # no buffer of that size kept


def test_pickling_keeps_the_limit_and_drops_the_buffers() -> None:
    buffers = PartBuffers(limit=3)
    buffers.give_back(bytearray(1024))
    copy = pickle.loads(pickle.dumps(buffers))
    assert copy.limit == 3 and copy.kept_bytes == 0
    copy.give_back(bytearray(1))
    assert copy.kept_bytes == 1


def test_download_buffers_are_reused_when_close_in_size_and_bounded() -> None:
    from s3dcp._s3.download import DownloadBuffers

    mib = 1024 * 1024
    buffers = DownloadBuffers(limit=4 * mib)
    first = buffers.take(3 * mib + 5)
    assert first.nbytes == 3 * mib + 5 and DownloadBuffers.capacity_for(3 * mib + 5) == 4 * mib
    first[:3] = b"abc"
    buffers.give_back(first)
    again = buffers.take(4 * mib - 1)  # same 4 MiB buffer
    assert again.obj is first.obj and bytes(again[:3]) == b"abc"
    buffers.give_back(again)
    assert buffers.take(mib).obj is not first.obj  # a 4 MiB buffer is too big for 1 MiB
    assert buffers.kept_bytes == 4 * mib
    buffers.give_back(buffers.take(2 * mib))  # 4 + 2 MiB would pass the limit: dropped
    assert buffers.kept_bytes == 4 * mib
