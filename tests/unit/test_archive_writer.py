"""Direct tensor archives are byte for byte what torch.save writes, or not written at all."""

from __future__ import annotations

import io
import zlib
from typing import Any

import pytest
import torch

from s3dcp._format.archive import tensor_view
from s3dcp._format.archive_writer import write_tensor
from s3dcp._format.framing import framing_for

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.complex128,
]
SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 4), (1000,), (64, 65), (200_003,)]


def saved(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


def written(tensor: torch.Tensor) -> bytes | None:
    buffer = io.BytesIO()
    return buffer.getvalue() if write_tensor(buffer, tensor) else None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bytes_equal_torch_save_for_every_dtype_and_shape(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    for shape in SHAPES:
        tensor = (torch.randn(shape, generator=g, dtype=torch.float64) * 100).to(dtype)
        ours = written(tensor)
        assert ours is not None, (dtype, shape)
        assert ours == saved(tensor), (dtype, shape)
        view = tensor_view(memoryview(bytearray(ours)))
        assert view is not None and torch.equal(view, tensor)


def test_tensors_of_one_shape_share_a_layout_but_not_values() -> None:
    g = torch.Generator().manual_seed(5)
    for shape in [(4, 4), (70_000,)]:  # below and above the size written in one piece
        first, second = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        assert written(first) == saved(first)
        assert written(second) == saved(second)
        assert written(second) != written(first)


def test_a_stream_with_write_with_crc_computes_the_data_crc() -> None:
    class CrcSink(io.BytesIO):
        crc_calls = 0

        def write_with_crc(self, data: object) -> int:
            self.crc_calls += 1
            self.write(data)  # type: ignore[arg-type]
            return zlib.crc32(data)  # type: ignore[arg-type]

    sink = CrcSink()
    tensor = torch.randn(70_000, generator=torch.Generator().manual_seed(6))
    assert write_tensor(sink, tensor)
    assert sink.crc_calls == 1
    assert sink.getvalue() == saved(tensor)


def test_writes_through_a_stream_that_only_has_write() -> None:
    class Sink:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        def write(self, data: object) -> int:
            self.parts.append(bytes(data))  # type: ignore[call-overload]
            return len(self.parts[-1])

    sink = Sink()
    tensor = torch.arange(1000, dtype=torch.float32)
    assert write_tensor(sink, tensor)
    assert b"".join(sink.parts) == saved(tensor)


@pytest.mark.parametrize(
    "tensor",
    [
        torch.zeros(0),
        torch.ones(3, requires_grad=True),
        torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
        torch.arange(10.0)[2:],  # starts inside its storage
        torch.arange(10.0)[:5],  # storage larger than the tensor
        torch.nn.Parameter(torch.ones(2)),
        torch.ones(3, dtype=torch.float8_e4m3fn) if hasattr(torch, "float8_e4m3fn") else torch.zeros(0),
    ],
    ids=["empty", "requires_grad", "transposed", "offset", "short_view", "parameter", "float8"],
)
def test_unusual_tensors_are_left_to_torch_save(tensor: torch.Tensor) -> None:
    buffer = io.BytesIO()
    assert not write_tensor(buffer, tensor)
    assert buffer.getvalue() == b""


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.bool, torch.int64], ids=str)
def test_framing_for_a_shape_brackets_the_tensor_bytes_torch_save_writes(dtype: torch.dtype) -> None:
    tensor = (torch.randn(33, 17, generator=torch.Generator().manual_seed(8)) * 100).to(dtype)
    archive = saved(tensor)
    framing = framing_for(dtype, (33, 17))
    assert framing is not None
    head, rest = archive[: len(framing.head)], archive[len(framing.head) :]
    data, tail = rest[: tensor.nbytes], rest[tensor.nbytes :]
    assert data == tensor.view(torch.uint8).numpy().tobytes()
    assert framing.matches(head, tail)
    values = _value_bytes(framing)  # CRC-32s and serialization id: the tensor's own, not checked
    for at in (0, 5, len(tail) // 2, min(values), max(values), len(tail) - 1):
        changed = bytearray(tail)
        changed[at] ^= 0xFF
        assert framing.matches(head, bytes(changed)) == (at in values), at
    assert not framing.matches(head[:-1] + b"\x00", tail)
    assert framing_for(dtype, (17, 33)) is not None and not framing_for(dtype, (17, 33)).matches(head, tail)  # type: ignore[union-attr]


def _value_bytes(framing: Any) -> set[int]:
    spots = {at + i for at in (*framing.data_crc_at, *framing.id_crc_at) for i in range(4)}
    return spots | set(range(framing.id_at, framing.id_at + 40))


def test_no_framing_for_shapes_write_tensor_leaves_to_torch_save() -> None:
    assert framing_for(torch.float32, (0,)) is None
    if hasattr(torch, "float8_e4m3fn"):
        assert framing_for(torch.float8_e4m3fn, (4,)) is None
