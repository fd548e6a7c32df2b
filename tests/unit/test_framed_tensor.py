"""Items framed as write_tensor frames them are viewed without parsing; anything else is left to the parser."""

from __future__ import annotations

import io

import pytest
import torch

from s3dcp._format.archive import framed_tensor


def archive(tensor: torch.Tensor) -> memoryview:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return memoryview(bytearray(buffer.getvalue()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8, torch.bool, torch.complex64], ids=str)
def test_a_plain_archive_is_viewed_in_place(dtype: torch.dtype) -> None:
    tensor = (torch.randn(9, 7, generator=torch.Generator().manual_seed(2)) * 50).to(dtype)
    data = archive(tensor)
    viewed = framed_tensor(data, (dtype, (9, 7)))
    assert viewed is not None and viewed.dtype == dtype and torch.equal(viewed, tensor)


@pytest.mark.parametrize(
    "stored, chunk",
    [
        (torch.randn(7, 9).t(), (torch.float32, (9, 7))),  # strided: other data.pkl
        (torch.randn(9, 7), (torch.float32, (7, 9))),  # another shape recorded
        (torch.randn(9, 7), (torch.float64, (9, 7))),  # another dtype recorded
        (torch.randn(63), (torch.float32, (63,))),  # unchanged, but see the damage below
    ],
    ids=["strided", "shape", "dtype", "damaged-framing"],
)
def test_anything_else_is_left_to_the_parser(stored: torch.Tensor, chunk: tuple[torch.dtype, tuple[int, ...]]) -> None:
    data = archive(stored)
    if chunk == (torch.float32, (63,)):
        data[10] ^= 0xFF  # inside the first record's header
    assert framed_tensor(data, chunk) is None


def test_no_metadata_no_shortcut() -> None:
    assert framed_tensor(archive(torch.ones(3)), None) is None


def test_only_whole_chunks_of_64_kib_or_more_laid_out_as_expected_are_resolved_ahead() -> None:
    from s3dcp._format.in_place import in_place_candidate
    from s3dcp._ranges import ByteRange

    big, small = torch.zeros(16 * 1024), torch.zeros(16 * 1024 - 1)  # 64 KiB, and 4 bytes short
    for tensor, expected in ((big, True), (small, False)):
        length = len(archive(tensor))
        chunk = (torch.float32, tuple(tensor.shape))
        assert in_place_candidate(ByteRange(100, 100 + length), chunk) is expected
        assert not in_place_candidate(ByteRange(100, 100 + length + 1), chunk)  # another layout
