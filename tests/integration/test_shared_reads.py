"""Shared reads on real gloo groups through a counting proxy: each stored byte leaves S3 about once.

Each test saves a checkpoint, loads it on several spawned ranks whose S3
requests all pass through the proxy, and checks two things: every rank's
tensors are bit-exact, and the bytes S3 served for the checkpoint's data
objects are about the stored size (or, with sharing off, once per rank).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from s3dcp import AccessDeniedError, S3StorageReader, S3StorageWriter
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION, list_keys
from tests.distributed import run_ranks
from tests.helpers import HAS_STREAM_TRANSFORMS, aws_env, needs_stream_transforms, s3dcp_error

if HAS_STREAM_TRANSFORMS:
    from torch.distributed.checkpoint._extension import ZStandard

pytestmark = [pytest.mark.s3, pytest.mark.ranks]

SHARE_BOUND = 1.25  # S3 may serve each stored byte at most this many times over with sharing on


def model_state() -> dict[str, Any]:
    """A replicated state dict of about 1.2 MiB, the same on every rank: tensors of several dtypes and a value."""
    generator = torch.Generator().manual_seed(11)
    state: dict[str, Any] = {f"layer{n}.weight": torch.randn(128, 256, generator=generator) for n in range(8)}
    state["embedding"] = torch.randn(1000, 64, generator=generator).to(torch.bfloat16)
    state["counts"] = torch.arange(5000, dtype=torch.int64)
    state["extra"] = {"step": 1234, "note": "replicated"}
    return state


def blank(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict shaped like ``state`` whose values all differ from it."""
    out: dict[str, Any] = {name: torch.full_like(value, 7) for name, value in state.items() if torch.is_tensor(value)}
    out["extra"] = {"step": 0, "note": ""}
    return out


def assert_same(loaded: dict[str, Any], expected: dict[str, Any], rank: int) -> None:
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        if torch.is_tensor(value):
            assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), f"rank {rank}: {name}"
        else:
            assert loaded[name] == value, f"rank {rank}: {name}"


def data_bytes_served(proxy: FaultProxy, prefix: str) -> int:
    """Bytes the store sent for GETs of the checkpoint's data objects (not its ``.metadata``)."""
    return sum(r.response_bytes for r in proxy.requests("GET", rf"/{prefix}/.*\.distcp$") if r.status in (200, 206))


def stored_data_bytes(s3: Any, bucket: str, prefix: str) -> int:
    return sum(size for key, size in list_keys(s3, bucket, prefix + "/").items() if key.endswith(".distcp"))


# -- fully replicated (DDP) -------------------------------------------------------
def load_replicated(rank: int, world_size: int, uri: str, share_reads: bool) -> None:
    expected = model_state()
    state = blank(expected)
    dcp.load(state, storage_reader=S3StorageReader(REGION, uri, share_reads=share_reads))
    assert_same(state, expected, rank)


@pytest.mark.parametrize(("share_reads", "times"), [(True, 1), (False, 4)])
def test_four_replicas_read_each_stored_byte_once_and_load_bit_exact(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str, share_reads: bool, times: int
) -> None:
    uri = f"s3://{bucket}/replicated"
    dcp.save(model_state(), storage_writer=S3StorageWriter(REGION, uri), no_dist=True)
    stored = stored_data_bytes(s3, bucket, "replicated")
    proxy.clear()
    run_ranks(4, load_replicated, uri, share_reads, env=aws_env())
    served = data_bytes_served(proxy, "replicated")
    if share_reads:
        assert stored <= served <= SHARE_BOUND * stored, (served, stored)
    else:
        assert served >= times * stored, (served, stored)


def load_counting_copies(rank: int, world_size: int, uri: str) -> None:
    """Load with sharing; record which items each rank copied out of a buffer rather than received in place."""
    import s3dcp._sharing as sharing

    copied: list[str] = []

    def counting(original: Any) -> Any:
        def wrapper(item: ReadItem, *args: Any, **kwargs: Any) -> Any:
            copied.append(item.dest_index.fqn)
            return original(item, *args, **kwargs)

        return wrapper

    sharing.deliver_item = counting(sharing.deliver_item)  # type: ignore[assignment]
    sharing.parse_item = counting(sharing.parse_item)  # type: ignore[assignment]
    expected = model_state()
    state = blank(expected)
    dcp.load(state, storage_reader=S3StorageReader(REGION, uri))
    assert_same(state, expected, rank)
    everyone: list[Any] = [None] * world_size
    dist.all_gather_object(everyone, copied)
    times = {name: sum(name in ranks for ranks in everyone) for name in ["embedding", "counts", "extra.step"]}
    times.update({f"layer{n}.weight": sum(f"layer{n}.weight" in ranks for ranks in everyone) for n in range(8)})
    # tensors of 64 KiB or more: copied by their reader only, received straight into their memory elsewhere
    assert all(times[name] == 1 for name in times if name.startswith("layer") or name == "embedding"), times
    # a small tensor and plain values: copied out of the received bytes on every rank
    assert times["counts"] == world_size and times["extra.step"] == world_size, times


def test_received_tensors_go_straight_into_their_memory(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """As an in-place read from S3 would: no buffer and no copy on the ranks that receive a large tensor."""
    uri = f"s3://{bucket}/direct"
    dcp.save(model_state(), storage_writer=S3StorageWriter(REGION, uri), no_dist=True)
    run_ranks(3, load_counting_copies, uri, env=aws_env())


@needs_stream_transforms
def test_compressed_items_are_shared_decoded_and_land_bit_exact(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """Items saved through ZStandard: the reader checks and decodes them once, the others get the tensors."""
    uri = f"s3://{bucket}/zstd"
    dcp.save(model_state(), storage_writer=S3StorageWriter(REGION, uri, extensions=[ZStandard()]), no_dist=True)
    stored = stored_data_bytes(s3, bucket, "zstd")
    proxy.clear()
    run_ranks(3, load_replicated, uri, True, env=aws_env())
    assert stored <= data_bytes_served(proxy, "zstd") <= SHARE_BOUND * stored


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


# -- a custom planner --------------------------------------------------------------
class CountingPlanner(DefaultLoadPlanner):
    """A planner that counts what it is handed: each item must reach it exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.committed: list[str] = []
        self.loaded: list[str] = []

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        self.committed.append(read_item.dest_index.fqn)
        super().commit_tensor(read_item, tensor)

    def load_bytes(self, read_item: ReadItem, value: Any) -> None:
        self.loaded.append(read_item.dest_index.fqn)
        super().load_bytes(read_item, value)


def load_with_planner(rank: int, world_size: int, uri: str) -> None:
    expected = model_state()
    state = blank(expected)
    planner = CountingPlanner()
    dcp.load(state, storage_reader=S3StorageReader(REGION, uri), planner=planner)
    assert_same(state, expected, rank)
    tensors = sorted(name for name, value in expected.items() if torch.is_tensor(value))
    assert sorted(planner.committed) == tensors
    assert sorted(planner.loaded) == ["extra.note", "extra.step"]  # DCP flattens the nested dict


def test_a_custom_planner_gets_every_item_once(proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/planner"
    dcp.save(model_state(), storage_writer=S3StorageWriter(REGION, uri), no_dist=True)
    stored = stored_data_bytes(s3, bucket, "planner")
    proxy.clear()
    run_ranks(3, load_with_planner, uri, env=aws_env())
    assert stored <= data_bytes_served(proxy, "planner") <= SHARE_BOUND * stored


# -- a failing shared read -----------------------------------------------------------
def load_expecting_failure(rank: int, world_size: int, uri: str) -> None:
    state = blank(model_state())
    with pytest.raises(BaseException) as raised:  # DCP's CheckpointException is a BaseException
        dcp.load(state, storage_reader=S3StorageReader(REGION, uri))
    assert isinstance(s3dcp_error(raised.value), AccessDeniedError)  # the cause, whichever rank met it
    own = s3dcp_error(raised.value.failures[rank][0])  # DCP gathers every rank's error, by rank
    kinds: list[Any] = [None] * world_size
    dist.all_gather_object(kinds, (type(own).__name__, str(own)))
    denied = [other for other, (kind, _) in enumerate(kinds) if kind == "AccessDeniedError"]
    assert len(denied) == 1, kinds  # the one rank whose GET was refused
    for other, (kind, message) in enumerate(kinds):
        if other != denied[0]:
            assert kind == "SharedReadError" and f"rank {denied[0]} failed" in message, kinds
            assert "AccessDenied" in message and "share_reads=False" in message, message


def test_a_failed_shared_read_fails_every_rank_with_a_clear_error_instead_of_hanging(
    proxied_env: Any, proxy: FaultProxy, bucket: str
) -> None:
    """The first GET of the data object is refused (403): its rank raises that; the others, who needed
    its items, raise SharedReadError naming it, rather than wait in the exchange until the group times out."""
    uri = f"s3://{bucket}/failing"
    dcp.save(model_state(), storage_writer=S3StorageWriter(REGION, uri), no_dist=True)
    proxy.add_rule("access_denied", method="GET", key_pattern=r"/failing/__0_0\.distcp$", count=1)
    run_ranks(3, load_expecting_failure, uri, env=aws_env())


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
    uri = f"s3://{bucket}/pairs"
    dcp.save(model_state(), storage_writer=S3StorageWriter(REGION, uri), no_dist=True)
    stored = stored_data_bytes(s3, bucket, "pairs")
    proxy.clear()
    run_ranks(4, load_in_pairs, uri, tell_reader, env=aws_env())
    served = data_bytes_served(proxy, "pairs")
    assert times * stored <= served <= SHARE_BOUND * times * stored, (served, stored)


def load_without_collectives(rank: int, world_size: int, uri: str) -> None:
    expected = model_state()
    state = blank(expected)
    if rank == 0:  # only one rank loads: anything collective would wait for the others forever
        dcp.load(state, storage_reader=S3StorageReader(REGION, uri), no_dist=True)
        assert_same(state, expected, rank)


def test_a_load_without_collectives_reads_alone(proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/alone"
    dcp.save(model_state(), storage_writer=S3StorageWriter(REGION, uri), no_dist=True)
    stored = stored_data_bytes(s3, bucket, "alone")
    proxy.clear()
    run_ranks(2, load_without_collectives, uri, env=aws_env())
    assert data_bytes_served(proxy, "alone") == stored
