"""Prefix strategies on four real ranks: the exact keys in the bucket, and bit-exact loads.

The expected keys below are written out by hand (not computed with the
strategy code under test).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import (
    BinaryPrefixStrategy,
    HexPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3PrefixStrategyBase,
    S3StorageReader,
    S3StorageWriter,
)
from tests.conftest import REGION, list_keys
from tests.distributed import run_ranks
from tests.helpers import assert_same, aws_env, blank_like

pytestmark = pytest.mark.s3

WORLD_SIZE = 4
SHARED_NUMEL = 16384  # 64 KiB of float32 that every rank holds, written once


class ZeroPaddedRanks(S3PrefixStrategyBase):
    """A user's own strategy: implements only ``generate_prefix``."""

    def generate_prefix(self, rank: int) -> str:
        return f"custom/r{rank:03d}_"


def strategies() -> dict[str, Any]:
    return {
        "default": None,
        "round-robin": RoundRobinPrefixStrategy(["shard1", "shard2"], epoch_num=5),
        "binary": BinaryPrefixStrategy(min_prefix_length=3),
        "hex": HexPrefixStrategy(min_prefix_length=2, epoch_num=1),
        "hex-wrapped": HexPrefixStrategy(min_prefix_length=1, prefix_count=2),
        "custom": ZeroPaddedRanks(),
    }


EXPECTED_SHARDS = {
    "default": ["__0_0", "__1_0", "__2_0", "__3_0"],
    "round-robin": ["shard1/epoch_5/__0_0", "shard2/epoch_5/__1_0", "shard1/epoch_5/__2_0", "shard2/epoch_5/__3_0"],
    "binary": ["000/__0_0", "100/__1_0", "010/__2_0", "110/__3_0"],
    "hex": ["00/epoch_1/__0_0", "10/epoch_1/__1_0", "20/epoch_1/__2_0", "30/epoch_1/__3_0"],
    "hex-wrapped": ["0/__0_0", "1/__1_0", "0/__2_0", "1/__3_0"],
    "custom": ["custom/r000_0", "custom/r001_0", "custom/r002_0", "custom/r003_0"],
}


def rank_state(rank: int) -> dict[str, Any]:
    """What ``rank`` holds: its own tensors, and one tensor every rank holds alike."""
    generator = torch.Generator().manual_seed(rank)
    return {
        f"rank{rank}.weight": torch.randn(16, 16, generator=generator),
        f"rank{rank}.step": torch.tensor(rank * 10),
        "shared": torch.arange(SHARED_NUMEL, dtype=torch.float32),
    }


def full_state() -> dict[str, Any]:
    state: dict[str, Any] = {}
    for rank in range(WORLD_SIZE):
        state.update(rank_state(rank))
    return state


def save_with_every_strategy(rank: int, world_size: int, bucket: str) -> None:
    state = rank_state(rank)
    for name, strategy in strategies().items():
        writer = S3StorageWriter(REGION, f"s3://{bucket}/{name}", prefix_strategy=strategy)
        dcp.save(state, storage_writer=writer)


@pytest.mark.ranks
def test_every_strategy_writes_the_documented_keys_and_loads_back(s3_env: Any, s3: Any, bucket: str) -> None:
    env = aws_env()
    run_ranks(WORLD_SIZE, save_with_every_strategy, bucket, env=env)

    expected_state = full_state()
    for name, shards in EXPECTED_SHARDS.items():
        keys = list_keys(s3, bucket, f"{name}/")
        assert sorted(keys) == sorted([f"{name}/.metadata"] + [f"{name}/{shard}.distcp" for shard in shards]), name
        # the tensor every rank holds is written by one rank only
        shard_bytes = sum(size for key, size in keys.items() if key.endswith(".distcp"))
        assert 4 * SHARED_NUMEL <= shard_bytes < 2 * 4 * SHARED_NUMEL, name

        loaded = blank_like(expected_state)
        dcp.load(loaded, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/{name}"))
        assert_same(expected_state, loaded, name)
