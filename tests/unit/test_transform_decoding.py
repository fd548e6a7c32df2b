"""Decoding stream-transformed bytes into buffers sized ahead, and straight into a destination."""

from __future__ import annotations

import io
import os

import pytest

from tests.helpers import HAS_STREAM_TRANSFORMS, needs_stream_transforms

if HAS_STREAM_TRANSFORMS:
    from torch.distributed.checkpoint._extension import ZStandard

from s3dcp._format import transforms

pytestmark = needs_stream_transforms


def _compressed(data: bytes) -> memoryview:
    """``data`` as ``ZStandard().transform_to`` stores it (one zstd frame)."""
    kept = io.BytesIO()
    kept.close = lambda: None  # type: ignore[method-assign]  # the compressor closes what it writes to
    stream = ZStandard().transform_to(kept)
    stream.write(data)
    stream.close()
    return memoryview(kept.getvalue())


@pytest.mark.parametrize("hint", [0, 10, 300_000, 10_000_000])
def test_decode_gives_the_bytes_whatever_the_size_hint(hint: int) -> None:
    data = os.urandom(100_000) + bytes(200_000)
    decoded = transforms.decode(_compressed(data), [ZStandard()], hint)
    assert bytes(decoded) == data and not decoded.readonly


def test_decode_into_fills_the_target_and_returns_the_tail() -> None:
    head, body, tail = b"HEAD", os.urandom(5000), b"TAIL--"
    stored = _compressed(head + body + tail)
    target = bytearray(len(body))
    assert transforms.decode_into(stored, [ZStandard()], head, memoryview(target), len(tail)) == tail
    assert target == body


@pytest.mark.parametrize(
    ("decoded", "why"),
    [
        (b"HEAx" + bytes(5000) + b"TAIL--", "other head"),
        (b"HEAD" + bytes(100), "ends early"),
        (b"HEAD" + bytes(5000) + b"TAIL--more", "ends late"),
    ],
)
def test_decode_into_refuses_other_layouts(decoded: bytes, why: str) -> None:
    target = memoryview(bytearray(5000))
    assert transforms.decode_into(_compressed(decoded), [ZStandard()], b"HEAD", target, 6) is None, why
