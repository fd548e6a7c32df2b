"""CRC-32 of a concatenation from its pieces equals zlib's CRC-32 of the whole."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable

import pytest

from s3dcp._crc32 import combine, combine_python, compute

COMBINERS = pytest.mark.parametrize("combiner", [combine, combine_python], ids=["in-use", "python"])


@COMBINERS
@pytest.mark.parametrize(
    "len_a, len_b", [(0, 0), (0, 5), (5, 0), (1, 1), (100, 1000), (3, 12345), (1 << 20, 1 << 20), (7, 5 << 20)]
)
def test_combine_matches_zlib(combiner: Callable[[int, int, int], int], len_a: int, len_b: int) -> None:
    a, b = os.urandom(len_a), os.urandom(len_b)
    assert combiner(zlib.crc32(a), zlib.crc32(b), len_b) == zlib.crc32(a + b)


@COMBINERS
def test_combining_many_pieces_in_order(combiner: Callable[[int, int, int], int]) -> None:
    pieces = [os.urandom(n) for n in (10, 1 << 16, 3, 1 << 20, 77)]
    crc = 0
    for piece in pieces:
        crc = combiner(crc, zlib.crc32(piece), len(piece))
    assert crc == zlib.crc32(b"".join(pieces))


@pytest.mark.parametrize("length", [0, 1, 15, 16, 63, 64, 4097, (1 << 20) + 3])
def test_compute_matches_zlib_on_every_kind_of_buffer(length: int) -> None:
    data = os.urandom(length + 5)
    view = memoryview(data)[5:]  # unaligned start, as parts of tensors are
    assert compute(view) == zlib.crc32(view)
    assert compute(bytearray(view)) == zlib.crc32(view)
    assert compute(view, 0x1234ABCD) == zlib.crc32(view, 0x1234ABCD)


def test_compute_uses_isal_when_installed() -> None:
    """isal is a dependency: the faster CRC-32 must be the one in use, not the fallback."""
    from isal.isal_zlib import crc32 as isal_crc32

    assert compute is isal_crc32


def test_combine_uses_isal_when_installed() -> None:
    from isal.isal_zlib import crc32_combine

    assert combine is crc32_combine


def test_without_isal_both_fall_back_to_python_and_zlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where isal has no wheel: the module still imports, and its answers are zlib's."""
    import importlib
    import sys

    import s3dcp._crc32 as module

    monkeypatch.setitem(sys.modules, "isal.isal_zlib", None)  # import of it fails
    try:
        fallback = importlib.reload(module)
        assert fallback.compute is zlib.crc32 and fallback.combine is fallback.combine_python
        a, b = os.urandom(1000), os.urandom(3000)
        assert fallback.combine(fallback.compute(a), fallback.compute(b), len(b)) == zlib.crc32(a + b)
    finally:
        monkeypatch.undo()
        importlib.reload(module)
