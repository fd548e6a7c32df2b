"""Tiered checkpoints on several real ranks sharing one node's local directory (gloo, spawned)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from s3dcp import S3StorageReader, TieredStorageReader, TieredStorageWriter
from tests.conftest import REGION, list_keys
from tests.distributed import run_ranks
from tests.helpers import async_save_options, aws_env, needs_process_async_save

pytestmark = [pytest.mark.s3, pytest.mark.ranks]


def checkpoint_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def rank_state(rank: int, step: int) -> dict[str, Any]:
    """Each rank's own tensors (as in data-parallel optimizer sharding) plus a shared value."""
    return {f"shard{rank}": torch.full((1000,), float(rank * 100 + step)), "step": step}


def save_three_ways(rank: int, world_size: int, local: str, root: str, step_3: str) -> None:
    background = TieredStorageWriter(local, root, region=REGION, keep_local=2)
    dcp.save(rank_state(rank, 1), checkpoint_id="step_1", storage_writer=background)
    future = dcp.async_save(
        rank_state(rank, 2), checkpoint_id="step_2", storage_writer=background, **async_save_options("thread")
    )
    future.result(timeout=180)
    # background=False: the upload happens inside the save, before it reports done
    in_process = TieredStorageWriter(local, root, region=REGION, background=False, keep_local=2)
    if step_3 == "process_async_save":
        # the process executor already runs off the training loop: upload there
        future = dcp.async_save(
            rank_state(rank, 3), checkpoint_id="step_3", storage_writer=in_process, **async_save_options("process")
        )
        future.result(timeout=180)
    else:
        dcp.save(rank_state(rank, 3), checkpoint_id="step_3", storage_writer=in_process)
    statuses = background.wait_for_uploads(timeout=180)
    states = sorted((s.checkpoint, s.state) for s in statuses)
    # every upload to this root that this process ran: step_3 too when it was saved here, not in a child
    here = ["step_1", "step_2"] + (["step_3"] if step_3 == "save" else [])
    expected = sorted([(name, "uploaded") for name in here] + [(name, "committed") for name in here if rank == 0])
    assert states == expected, (rank, states)
    dist.barrier()


def load_and_check(rank: int, world_size: int, local: str, root: str, saved_world: int) -> None:
    for step in (2, 3):
        want = {f"shard{r}": torch.full((1000,), float(r * 100 + step)) for r in range(saved_world)}
        from_s3 = {name: torch.zeros(1000) for name in want} | {"step": 0}
        dcp.load(from_s3, storage_reader=S3StorageReader(REGION, f"{root}/step_{step}"))
        tiered = {name: torch.zeros(1000) for name in want} | {"step": 0}
        reader = TieredStorageReader(local, root, region=REGION)
        dcp.load(tiered, checkpoint_id=f"step_{step}", storage_reader=reader)
        assert reader.source == "local" and [s.phase for s in reader.last_stats] == ["load.local"]
        for name, tensor in want.items():
            assert torch.equal(from_s3[name], tensor) and torch.equal(tiered[name], tensor), (step, name)
        assert from_s3["step"] == tiered["step"] == step


@pytest.mark.parametrize("step_3", ["save", pytest.param("process_async_save", marks=needs_process_async_save)])
def test_ranks_share_a_local_directory_and_commit_once_in_s3(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, step_3: str
) -> None:
    root = f"s3://{bucket}/run"
    tmp_path = tmp_path / "tier"
    run_ranks(3, save_three_ways, str(tmp_path), root, step_3, env=aws_env())

    keys = sorted(list_keys(s3, bucket, "run/"))
    assert keys == [
        f"run/step_{step}/{name}"
        for step in (1, 2, 3)
        for name in (".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp")
    ]
    # keep_local=2: step_1 went once its upload had ended; every rank's files of it are gone
    assert checkpoint_dirs(tmp_path) == ["step_2", "step_3"]
    assert sorted(p.name for p in (tmp_path / "step_3").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "__2_0.distcp",
    ]
    run_ranks(2, load_and_check, str(tmp_path), root, 3, env=aws_env())
