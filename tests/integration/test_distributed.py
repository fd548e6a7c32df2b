"""Real multi-rank saves and loads: gloo process groups of spawned processes, moto over HTTP.

Each test starts ``world_size`` processes (``tests/distributed.py``); the
checks run inside the ranks, and a failed check on any rank fails the test
with that rank's traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from s3dcp import BucketNotFoundError, S3StorageReader, S3StorageWriter
from tests.conftest import REGION, list_keys
from tests.distributed import run_ranks
from tests.helpers import (
    async_save_options,
    aws_env,
    needs_async_save_copy,
    needs_fsdp2_on_cpu,
    needs_process_async_save,
    s3dcp_error,
)

pytestmark = [pytest.mark.s3, pytest.mark.ranks]

ROWS, COLS = 10, 6  # 10 rows over 3 or 4 ranks: uneven shards


# -- DTensor resharding -----------------------------------------------------------
def full_tensors() -> dict[str, torch.Tensor]:
    """The global values every layout is cut from (the same on every rank)."""
    generator = torch.Generator().manual_seed(7)
    return {
        "rows": torch.randn(ROWS, COLS, generator=generator),
        "cols": torch.randn(ROWS, COLS, generator=generator).to(torch.bfloat16),
        "replicated": torch.randn(64, 64, generator=generator),
    }


def placements() -> dict[str, Any]:
    return {"rows": [Shard(0)], "cols": [Shard(1)], "replicated": [Replicate()]}


def distributed_state(world_size: int, fill: float | None) -> dict[str, Any]:
    mesh = init_device_mesh("cpu", (world_size,))
    state: dict[str, Any] = {}
    for name, full in full_tensors().items():
        source = full if fill is None else torch.full_like(full, fill)
        state[name] = distribute_tensor(source, mesh, placements()[name])
    state["step"] = 100
    return state


def save_dtensors(rank: int, world_size: int, uri: str) -> None:
    dcp.save(distributed_state(world_size, fill=None), storage_writer=S3StorageWriter(REGION, uri, thread_count=2))


def load_dtensors_and_check(rank: int, world_size: int, uri: str) -> None:
    state = distributed_state(world_size, fill=-1.0)
    state["step"] = 0
    dcp.load(state, storage_reader=S3StorageReader(REGION, uri))
    for name, full in full_tensors().items():
        loaded = state[name]
        assert isinstance(loaded, DTensor) and loaded.placements == tuple(placements()[name]), name
        assert torch.equal(loaded.full_tensor(), full), f"rank {rank}: {name} differs after resharding"
    assert state["step"] == 100


@pytest.mark.parametrize(("save_world", "load_world"), [(4, 2), (2, 3)])
def test_dtensor_checkpoint_reshards_to_another_world_size(
    s3_env: Any, s3: Any, bucket: str, save_world: int, load_world: int
) -> None:
    uri = f"s3://{bucket}/dtensor"
    run_ranks(save_world, save_dtensors, uri, env=aws_env())
    keys = list_keys(s3, bucket, "dtensor/")
    assert "dtensor/.metadata" in keys
    # the replicated tensor (16 KiB) is stored once, not once per rank
    replicated_bytes = 64 * 64 * 4
    shard_bytes = sum(size for key, size in keys.items() if key.endswith(".distcp"))
    assert replicated_bytes < shard_bytes < 2 * replicated_bytes
    run_ranks(load_world, load_dtensors_and_check, uri, env=aws_env())


# -- FSDP2 model and optimizer ----------------------------------------------------
def build_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5))


def sharded_training_state(world_size: int, steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world_size,))
    model = build_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(11)
    for _ in range(steps):
        loss = model(torch.randn(8, 12, generator=generator)).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True)  # every rank gets the full values
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    return {"model": model_state, "optim": optim_state}


def save_fsdp(rank: int, world_size: int, uri: str, reference: str) -> None:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optimizer = sharded_training_state(world_size, steps=3)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, storage_writer=S3StorageWriter(REGION, uri))
    full = full_state_dicts(model, optimizer)
    if rank == 0:
        torch.save(full, reference)


def load_fsdp_and_check(rank: int, world_size: int, uri: str, reference: str) -> None:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, optimizer = sharded_training_state(world_size, steps=0)
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, storage_reader=S3StorageReader(REGION, uri))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    expected = torch.load(reference, weights_only=True)
    actual = full_state_dicts(model, optimizer)
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), f"rank {rank}: model.{name}"
    for param_name, param_state in expected["optim"]["state"].items():
        for key, value in param_state.items():
            got = actual["optim"]["state"][param_name][key]
            assert torch.equal(torch.as_tensor(got), torch.as_tensor(value)), f"rank {rank}: optim {param_name}.{key}"


@needs_fsdp2_on_cpu
def test_fsdp2_model_and_optimizer_reshard_from_4_to_2_ranks(s3_env: Any, bucket: str, tmp_path: Path) -> None:
    uri, reference = f"s3://{bucket}/fsdp", str(tmp_path / "reference.pt")
    run_ranks(4, save_fsdp, uri, reference, env=aws_env())
    run_ranks(2, load_fsdp_and_check, uri, reference, env=aws_env())


# -- async_save in both executors ---------------------------------------------------
def async_save_and_check(rank: int, world_size: int, uri: str, executor: str, training: bool) -> None:
    state = distributed_state(world_size, fill=None)
    future = dcp.async_save(
        state,
        storage_writer=S3StorageWriter(REGION, uri),
        **async_save_options(executor),
    )
    if training:  # training goes on while the upload runs: the checkpoint must hold the values at the call
        for name in full_tensors():
            state[name].to_local().add_(1000)
    future.result(timeout=180)
    dist.barrier()
    load_dtensors_and_check(rank, world_size, uri)


@pytest.mark.parametrize(
    ("executor", "training"),
    [
        pytest.param("thread", False, id="thread-idle"),
        pytest.param("thread", True, id="thread", marks=needs_async_save_copy),
        pytest.param("process", True, id="process", marks=needs_process_async_save),
    ],
)
def test_async_save_produces_a_loadable_checkpoint(
    s3_env: Any, s3: Any, bucket: str, executor: str, training: bool
) -> None:
    uri = f"s3://{bucket}/async-{executor}"
    run_ranks(2, async_save_and_check, uri, executor, training, env=aws_env())
    assert f"async-{executor}/.metadata" in list_keys(s3, bucket, f"async-{executor}/")


def async_save_to_missing_bucket(rank: int, world_size: int, uri: str, executor: str) -> None:
    state = {"w": torch.ones(4) * rank}
    future = dcp.async_save(
        state,
        storage_writer=S3StorageWriter(REGION, uri),
        **async_save_options(executor),
    )
    try:
        future.result(timeout=180)
    except BaseException as err:  # DCP's CheckpointException is a BaseException
        error = s3dcp_error(err)
        assert isinstance(error, BucketNotFoundError) and error.bucket == "does-not-exist-bucket", error
    else:
        raise AssertionError("async_save to a missing bucket reported success")


@pytest.mark.parametrize("executor", ["thread", pytest.param("process", marks=needs_process_async_save)])
def test_async_save_future_surfaces_upload_failures(s3_env: Any, executor: str) -> None:
    run_ranks(2, async_save_to_missing_bucket, "s3://does-not-exist-bucket/ckpt", executor, env=aws_env())


# -- who does what ----------------------------------------------------------------------
def save_small(rank: int, world_size: int, uri: str) -> None:
    dcp.save({f"rank{rank}": torch.full((256,), float(rank))}, storage_writer=S3StorageWriter(REGION, uri))


def test_only_the_coordinator_touches_metadata(proxied_env: Any, proxy: Any, s3: Any, bucket: str) -> None:
    run_ranks(3, save_small, f"s3://{bucket}/once", env=aws_env())
    metadata_requests = [(r.method, r.status) for r in proxy.requests(path_pattern=r"/once/\.metadata$")]
    # one existence check and one create-only PUT, from rank 0 only
    assert sorted(metadata_requests) == [("GET", 404), ("PUT", 200)]
    shard_puts = proxy.requests("PUT", r"/once/__\d+_0\.distcp$")
    assert sorted(r.path.rsplit("/", 1)[1] for r in shard_puts) == ["__0_0.distcp", "__1_0.distcp", "__2_0.distcp"]


def test_ranks_upload_their_shards_without_waiting_for_rank_0(proxied_env: Any, proxy: Any, bucket: str) -> None:
    """Rank 0's shard upload is held at the proxy; ranks 1 and 2 must still finish theirs."""
    import threading
    import time

    hold = proxy.add_rule("hold", method="PUT", key_pattern=r"/parallel/__0_0\.distcp$", count=1)
    failure: list[BaseException] = []

    def save_on_three_ranks() -> None:
        try:
            run_ranks(3, save_small, f"s3://{bucket}/parallel", env=aws_env())
        except BaseException as err:  # re-raised in the test thread below
            failure.append(err)

    ranks = threading.Thread(target=save_on_three_ranks)
    ranks.start()
    try:
        assert hold.hit.wait(180), "rank 0 never reached its shard upload"
        others = {"__1_0.distcp", "__2_0.distcp"}
        deadline = time.monotonic() + 120
        done: set[str] = set()
        while done != others and time.monotonic() < deadline and ranks.is_alive():
            done = {
                r.path.rsplit("/", 1)[1]
                for r in proxy.requests("PUT", r"/parallel/__[12]_0\.distcp$")
                if r.status == 200
            }
            hold.released.wait(0.05)  # poll the proxy's records; nothing is released here
        assert done == others, f"with rank 0 held, only {sorted(done)} of the other ranks' shards were stored"
    finally:
        hold.release()
        ranks.join(300)
    assert not failure, failure
    assert [r.status for r in proxy.requests("PUT", r"/parallel/\.metadata$")] == [200]
