"""Reading torch.save archives as views: same tensors as torch.load, never code."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from s3dcp._format.archive import load_tensor, tensor_view


def saved(value: object) -> memoryview:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return memoryview(bytearray(buffer.getvalue()))


base = torch.randn(6, 10)
CASES = {
    "float32": torch.randn(7, 3),
    "bfloat16": torch.randn(5, 4).to(torch.bfloat16),
    "float16": torch.randn(9).to(torch.float16),
    "float64": torch.randn(2, 2, 2, dtype=torch.float64),
    "int64": torch.arange(-5, 5),
    "int32": torch.arange(10, dtype=torch.int32),
    "int16": torch.arange(10, dtype=torch.int16),
    "int8": torch.arange(-8, 8, dtype=torch.int8),
    "uint8": torch.arange(0, 250, dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "complex64": torch.randn(4, dtype=torch.complex64),
    "scalar": torch.tensor(2.5),
    "empty": torch.empty(0, 3),
    "transposed_full_storage": base.t(),
    "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_view_equals_torch_load(name: str) -> None:
    data = saved(CASES[name])
    view = tensor_view(data)
    assert view is not None
    expected = torch.load(io.BytesIO(bytes(data)), weights_only=True)
    assert view.dtype == expected.dtype and view.shape == expected.shape and view.stride() == expected.stride()
    assert torch.equal(view, expected)


def test_view_shares_memory_with_the_buffer() -> None:
    data = saved(torch.zeros(16))
    view = tensor_view(data)
    assert view is not None
    offset = bytes(data).rfind(bytes(64))  # the storage record: 64 zero bytes
    data[offset] = 0x3F  # ... and flip a byte inside it
    assert view.count_nonzero().item() == 1


def test_unaligned_buffers_work() -> None:
    """Items sit at arbitrary offsets inside a shard object."""
    payload = bytes(saved(torch.arange(100, dtype=torch.float64)))
    shifted = memoryview(bytearray(b"x" * 3 + payload))[3:]
    view = tensor_view(shifted)
    assert view is not None and torch.equal(view, torch.arange(100, dtype=torch.float64))


@pytest.mark.parametrize("value", [{"a": torch.ones(2)}, [torch.ones(1), torch.ones(1)], 5, torch.ones(3).to_sparse()])
def test_other_archives_are_declined(value: object) -> None:
    assert tensor_view(saved(value)) is None


def test_garbage_is_declined_not_raised() -> None:
    data = bytearray(saved(torch.ones(8)))
    for cut in (0, 10, len(data) // 2, len(data) - 5):
        assert tensor_view(memoryview(data[:cut])) is None
    assert tensor_view(memoryview(bytearray(os.urandom(300)))) is None


class Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/s3dcp-archive-pwned",))


def test_code_in_the_archive_never_runs() -> None:
    marker = "/tmp/s3dcp-archive-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    buffer = io.BytesIO()
    torch.save(Exploit(), buffer, pickle_protocol=2)
    assert tensor_view(memoryview(bytearray(buffer.getvalue()))) is None
    with pytest.raises(pickle.UnpicklingError):
        load_tensor(memoryview(bytearray(buffer.getvalue())))  # the fallback is weights_only
    assert not os.path.exists(marker)


def test_load_tensor_falls_back_for_unusual_archives() -> None:
    sparse_free = torch.randn(3, 3)
    assert torch.equal(load_tensor(saved(sparse_free)), sparse_free)
