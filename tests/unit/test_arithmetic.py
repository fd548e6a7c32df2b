"""Pure arithmetic: part sizing, range coalescing, splitting items into files."""

from __future__ import annotations

import io

import pytest
import torch
from torch.distributed.checkpoint.planner import WriteItemType
from torch.distributed.checkpoint.planner_helpers import (
    _create_write_item_for_bytesio,
    _create_write_item_for_tensor,
)

from s3dcp._config import GIB, MIB
from s3dcp._format.shard import item_nbytes, split_items
from s3dcp._ranges import ByteRange, coalesce, split
from s3dcp._s3.upload import choose_part_size, multipart_etag


def test_part_size_keeps_preferred_when_it_fits() -> None:
    assert choose_part_size(0, 8 * MIB) == 8 * MIB
    assert choose_part_size(10_000 * 8 * MIB, 8 * MIB) == 8 * MIB


def test_part_size_grows_to_stay_within_10000_parts() -> None:
    size = choose_part_size(10_000 * 8 * MIB + 1, 8 * MIB)
    assert size == 9 * MIB
    assert choose_part_size(1024 * GIB, 8 * MIB) * 10_000 >= 1024 * GIB


def test_part_size_limits() -> None:
    with pytest.raises(ValueError):
        choose_part_size(6 * 1024 * GIB, 8 * MIB)
    with pytest.raises(ValueError):
        choose_part_size(1, 1 * MIB)
    with pytest.raises(ValueError):
        choose_part_size(-1, 8 * MIB)


def test_multipart_etag_is_md5_of_part_md5s() -> None:
    import hashlib

    parts_data = [b"a" * 10, b"b" * 3]
    parts = [{"PartNumber": i + 1, "ETag": f'"{hashlib.md5(d).hexdigest()}"'} for i, d in enumerate(parts_data)]
    joined = b"".join(hashlib.md5(d).digest() for d in parts_data)
    assert multipart_etag(parts) == f"{hashlib.md5(joined).hexdigest()}-2"


def test_multipart_etag_declines_etags_that_are_not_md5s() -> None:
    assert multipart_etag([{"ETag": '"not-hex"'}]) is None
    assert multipart_etag([{"ETag": '"abcd"'}]) is None  # hex, but not 16 bytes


def R(a: int, b: int) -> ByteRange:
    return ByteRange(a, b)


def test_coalesce_merges_close_ranges_only() -> None:
    fetches = coalesce([R(0, 10), R(12, 20), R(100, 110)], max_gap=5, max_span=1000)
    assert [(f.span.start, f.span.end, f.members) for f in fetches] == [(0, 20, (0, 1)), (100, 110, (2,))]


def test_coalesce_sorts_and_keeps_member_indices() -> None:
    fetches = coalesce([R(50, 60), R(0, 10), R(10, 20)], max_gap=0, max_span=1000)
    assert [(f.span.start, f.span.end, f.members) for f in fetches] == [(0, 20, (1, 2)), (50, 60, (0,))]


def test_coalesce_respects_max_span_and_overlaps() -> None:
    fetches = coalesce([R(0, 40), R(40, 80), R(80, 120)], max_gap=10, max_span=100)
    assert [f.span for f in fetches] == [R(0, 80), R(80, 120)]
    big = coalesce([R(0, 500)], max_gap=10, max_span=100)
    assert big[0].span == R(0, 500)
    overlap = coalesce([R(0, 30), R(10, 20)], max_gap=0, max_span=100)
    assert overlap[0].span == R(0, 30) and overlap[0].members == (0, 1)


def test_coalesce_skips_empty_ranges() -> None:
    assert coalesce([R(5, 5)], max_gap=0, max_span=10) == []
    with pytest.raises(ValueError):
        ByteRange(5, 4)


def test_split_cuts_a_span_into_near_equal_pieces_within_the_limit() -> None:
    data = bytearray(10)
    pieces = split(R(100, 110), [memoryview(data)], max_size=4)
    assert [p.span for p in pieces] == [R(100, 103), R(103, 106), R(106, 110)]  # 3, 3, 4: no piece over 4
    assert all(sum(v.nbytes for v in p.into) == p.span.length for p in pieces)
    assert [p.span for p in split(R(0, 8), [memoryview(bytearray(8))], max_size=8)] == [R(0, 8)]
    assert [p.span for p in split(R(0, 9), [memoryview(bytearray(9))], max_size=8)] == [R(0, 4), R(4, 9)]
    assert split(R(7, 7), [memoryview(bytearray(0))], max_size=4) == []


def test_split_gives_each_piece_the_views_covering_it_across_view_boundaries() -> None:
    """Bytes written through the pieces' views land where one read into the whole list would put them."""
    first, second, third = bytearray(5), bytearray(0), bytearray(7)
    views = [memoryview(first), memoryview(second), memoryview(third)]
    pieces = split(R(20, 32), views, max_size=4)
    assert [p.span for p in pieces] == [R(20, 24), R(24, 28), R(28, 32)]
    assert [[v.nbytes for v in p.into] for p in pieces] == [[4], [1, 3], [4]]  # the empty view is dropped
    source = bytes(range(20, 32))
    for piece in pieces:
        at = piece.span.start - 20
        for view in piece.into:
            view[:] = source[at : at + view.nbytes]
            at += view.nbytes
    assert bytes(first) + bytes(third) == source
    with pytest.raises(ValueError):
        split(R(0, 10), [memoryview(bytearray(9))], max_size=4)
    with pytest.raises(ValueError):
        split(R(0, 10), [memoryview(bytearray(10))], max_size=0)


def _item(name: str, numel: int, dtype: torch.dtype = torch.float32):  # type: ignore[no-untyped-def]
    return _create_write_item_for_tensor(name, torch.empty(numel, dtype=dtype))


def test_item_nbytes() -> None:
    assert item_nbytes(_item("a", 10, torch.bfloat16)) == 20


def test_split_items_balances_by_size_and_keeps_empty_bins() -> None:
    items = [_item(f"t{i}", n) for i, n in enumerate([100, 90, 40, 30, 20, 10])]
    bins = split_items(items, 2)
    sizes = [sum(item_nbytes(i) for i in b) for b in bins]
    assert sorted(sizes) == [560, 600]  # greedy, largest first: 100+30+20 vs 90+40+10
    # one file per bin, empty or not, as FileSystemWriter writes them
    assert [len(b) for b in split_items(items[:1], 4)] == [1, 0, 0, 0]
    assert split_items([], 3) == [[], [], []]
    assert split_items([], 1) == [[]]
    assert split_items(items, 1) == [items]
    with pytest.raises(ValueError):
        split_items(items, 0)
    assert all(i.type != WriteItemType.BYTE_IO for b in bins for i in b)


def test_split_items_puts_byte_items_first_in_every_file() -> None:
    """FileSystemWriter writes a file's byte items before its tensors, with one file too."""
    tensors = [_item("t0", 10), _item("t1", 30)]
    plain = _create_write_item_for_bytesio("step", io.BytesIO(b"7"))
    assert split_items([tensors[0], plain, tensors[1]], 1) == [[plain, tensors[0], tensors[1]]]
    assert split_items([tensors[0], plain, tensors[1]], 2) == [[plain, tensors[1]], [tensors[0]]]
