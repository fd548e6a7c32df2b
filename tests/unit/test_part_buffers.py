"""Part buffers are reused, bounded, and never travel through pickle."""

from __future__ import annotations

import pickle

from s3dcp.upload import PartBuffers


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
