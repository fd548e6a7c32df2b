"""Shared items reach every rank that needs them over a real gloo group, or every rank raises the same error."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import MetadataIndex

from s3dcp._sharing import Share, SharedReadError, exchange
from tests.distributed import run_ranks

pytestmark = pytest.mark.ranks

SIZES = {"a": 5000, "b": 0, "c": 1234}  # "a" goes in pieces of 1000 bytes


def stored_bytes(name: str) -> bytes:
    """The stored bytes of item ``name``, the same on every rank."""
    size, out = SIZES[name], b""
    while len(out) < size:
        out += hashlib.sha256(f"{name}{len(out)}".encode()).digest()
    return out[:size]


def schedule(world_size: int) -> list[Share]:
    """Each item read by one rank; "a" and "b" needed by all, "c" by ranks 1 and 2 only."""
    everyone = tuple(range(world_size))
    return [
        Share(MetadataIndex("a", torch.Size([0])), SIZES["a"], 1, tuple(r for r in everyone if r != 1)),
        Share(MetadataIndex("b", torch.Size([0])), SIZES["b"], 0, tuple(r for r in everyone if r != 0)),
        Share(MetadataIndex("c", torch.Size([0])), SIZES["c"], 2, (1,)),
    ]


def exchange_on_a_rank(rank: int, world_size: int) -> None:
    shares = schedule(world_size)
    read = {s.stored: memoryview(stored_bytes(s.stored.fqn)) for s in shares if s.reader == rank}
    received = exchange(shares, read, None, piece_size=1000)
    expected = {s.stored.fqn for s in shares if rank in s.receivers}
    assert {index.fqn for index in received} == expected
    for index, data in received.items():
        assert bytes(data) == stored_bytes(index.fqn)


def test_each_rank_receives_exactly_the_shared_items_it_needs_bit_exact() -> None:
    run_ranks(4, exchange_on_a_rank)


def failing_read_on_a_rank(rank: int, world_size: int) -> None:
    shares = schedule(world_size)
    if rank == 1:
        with pytest.raises(PermissionError, match="AccessDenied on __1_0.distcp"):  # its own error
            exchange(shares, {}, PermissionError("AccessDenied on __1_0.distcp"), piece_size=1000)
        return
    read = {s.stored: memoryview(stored_bytes(s.stored.fqn)) for s in shares if s.reader == rank}
    with pytest.raises(SharedReadError, match="rank 1 failed .*PermissionError: AccessDenied on __1_0.distcp"):
        exchange(shares, read, None, piece_size=1000)


def test_a_rank_whose_read_failed_makes_every_rank_raise_instead_of_waiting() -> None:
    run_ranks(3, failing_read_on_a_rank)


def exchange_over_nccl(rank: int, world_size: int) -> None:
    torch.cuda.set_device(rank)
    group = dist.new_group(backend="nccl")
    shares = schedule(world_size)
    read = {s.stored: memoryview(stored_bytes(s.stored.fqn)) for s in shares if s.reader == rank}
    received = exchange(shares, read, None, group=group, piece_size=1000)
    for index, data in received.items():
        assert bytes(data) == stored_bytes(index.fqn)


@pytest.mark.skipif(torch.cuda.device_count() < 3, reason="needs 3 CUDA devices (NCCL moves device memory only)")
def test_shared_items_go_through_the_gpu_on_nccl() -> None:
    run_ranks(3, exchange_over_nccl)
