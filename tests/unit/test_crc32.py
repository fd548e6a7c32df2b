"""CRC-32 of a concatenation from its pieces equals zlib's CRC-32 of the whole."""

from __future__ import annotations

import os
import zlib

import pytest

from s3dcp.crc32 import combine


@pytest.mark.parametrize(
    "len_a, len_b", [(0, 0), (0, 5), (5, 0), (1, 1), (100, 1000), (3, 12345), (1 << 20, 1 << 20), (7, 5 << 20)]
)
def test_combine_matches_zlib(len_a: int, len_b: int) -> None:
    a, b = os.urandom(len_a), os.urandom(len_b)
    assert combine(zlib.crc32(a), zlib.crc32(b), len_b) == zlib.crc32(a + b)


def test_combining_many_pieces_in_order() -> None:
    pieces = [os.urandom(n) for n in (10, 1 << 16, 3, 1 << 20, 77)]
    crc = 0
    for piece in pieces:
        crc = combine(crc, zlib.crc32(piece), len(piece))
    assert crc == zlib.crc32(b"".join(pieces))
