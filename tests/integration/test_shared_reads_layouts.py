"""Shared reads where replicas hold parts: HSDP replica groups, resharding, loads on subgroups.

As in ``test_shared_reads.py``: real gloo ranks, S3 traffic counted at the
proxy, every rank's tensors checked bit for bit.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from s3dcp import S3StorageReader, S3StorageWriter
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION
from tests.distributed import run_ranks
from tests.helpers import aws_env
from tests.sharing import (
    SHARE_BOUND,
    assert_same,
    blank,
    data_bytes_served,
    model_state,
    save_replicated,
    stored_data_bytes,
)

pytestmark = [pytest.mark.s3, pytest.mark.ranks]


# -- HSDP: two replica groups of sharded tensors ----------------------------------------
ROWS = 10  # over 2 or 3 shards: uneven


def full_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {
        "rows": torch.randn(ROWS, 4096, generator=generator),
        "cols": torch.randn(64, 900, generator=generator).to(torch.float16),
        "everywhere": torch.randn(256, 256, generator=generator),
    }


def hsdp_placements() -> dict[str, Any]:
    return {"rows": [Replicate(), Shard(0)], "cols": [Replicate(), Shard(1)], "everywhere": [Replicate(), Replicate()]}


def hsdp_state(fill: float | None) -> dict[str, Any]:
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    return {
        name: distribute_tensor(full if fill is None else torch.full_like(full, fill), mesh, hsdp_placements()[name])
        for name, full in full_tensors().items()
    }


def save_hsdp(rank: int, world_size: int, uri: str) -> None:
    dcp.save(hsdp_state(fill=None), storage_writer=S3StorageWriter(REGION, uri))


def load_hsdp_and_check(rank: int, world_size: int, uri: str) -> None:
    state = hsdp_state(fill=-1.0)
    dcp.load(state, storage_reader=S3StorageReader(REGION, uri))
    for name, full in full_tensors().items():
        loaded = state[name]
        assert isinstance(loaded, DTensor) and torch.equal(loaded.full_tensor(), full), f"rank {rank}: {name}"


def test_hsdp_replica_groups_share_their_shards(proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/hsdp"
    run_ranks(4, save_hsdp, uri, env=aws_env())
    stored = stored_data_bytes(s3, bucket, "hsdp")
    proxy.clear()
    run_ranks(4, load_hsdp_and_check, uri, env=aws_env())
    assert stored <= data_bytes_served(proxy, "hsdp") <= SHARE_BOUND * stored


# -- resharding: saved on 4 ranks, loaded on 2 and 3 ------------------------------------
def sharded_state(world_size: int, fill: float | None) -> dict[str, Any]:
    mesh = init_device_mesh("cpu", (world_size,))
    placements = {"rows": [Shard(0)], "cols": [Shard(1)], "everywhere": [Replicate()]}
    state: dict[str, Any] = {
        name: distribute_tensor(full if fill is None else torch.full_like(full, fill), mesh, placements[name])
        for name, full in full_tensors().items()
    }
    state["step"] = 0 if fill is not None else 100
    return state


def save_sharded(rank: int, world_size: int, uri: str) -> None:
    dcp.save(sharded_state(world_size, fill=None), storage_writer=S3StorageWriter(REGION, uri))


def load_resharded_and_check(rank: int, world_size: int, uri: str) -> None:
    state = sharded_state(world_size, fill=-1.0)
    dcp.load(state, storage_reader=S3StorageReader(REGION, uri))
    for name, full in full_tensors().items():
        assert torch.equal(state[name].full_tensor(), full), f"rank {rank} of {world_size}: {name}"
    assert state["step"] == 100


@pytest.mark.parametrize("load_world", [2, 3])
def test_a_checkpoint_saved_on_4_ranks_reshards_to_fewer_with_stored_items_shared(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str, load_world: int
) -> None:
    """Loaded on 3 ranks, stored row shards straddle the new boundaries: two ranks need each such item."""
    uri = f"s3://{bucket}/reshard"
    run_ranks(4, save_sharded, uri, env=aws_env())
    stored = stored_data_bytes(s3, bucket, "reshard")
    proxy.clear()
    run_ranks(load_world, load_resharded_and_check, uri, env=aws_env())
    assert stored <= data_bytes_served(proxy, "reshard") <= SHARE_BOUND * stored


# -- process groups ----------------------------------------------------------------
def load_in_pairs(rank: int, world_size: int, uri: str, tell_reader: bool) -> None:
    """Ranks {0, 1} and {2, 3} each load on their own group."""
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    group = groups[rank // 2]
    expected = model_state()
    state = blank(expected)
    reader = S3StorageReader(REGION, uri, process_group=group if tell_reader else None)
    dcp.load(state, storage_reader=reader, process_group=group)
    assert_same(state, expected, rank)


@pytest.mark.parametrize(("tell_reader", "times"), [(True, 2), (False, 4)])
def test_loads_on_subgroups_share_within_each_group_given_the_group(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str, tell_reader: bool, times: int
) -> None:
    """Given the group, each pair reads the checkpoint once; without it, sharing is off (and the load still right)."""
    uri, stored = save_replicated(s3, proxy, bucket, "pairs")
    run_ranks(4, load_in_pairs, uri, tell_reader, env=aws_env())
    served = data_bytes_served(proxy, "pairs")
    assert times * stored <= served <= SHARE_BOUND * times * stored, (served, stored)
