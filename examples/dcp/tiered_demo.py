"""Tiered checkpoints: save every step locally, every 3rd to S3 in the background, lose the node, resume.

    python examples/dcp/tiered_demo.py                       # local S3 server
    python examples/dcp/tiered_demo.py --uri s3://bucket/tiered-demo

1. Train 7 steps, checkpointing every step with ``TieredStorageWriter``
   (steps 1, 4 and 7 also go to S3, in the background; 3 kept locally).
2. Damage one local file and load: the damaged item comes from S3.
3. "Lose the node" (a fresh, empty local directory) and resume from the
   newest checkpoint in either tier: step 7, from S3.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from _s3_target import s3_target

from s3dcp import TieredStorageReader, TieredStorageWriter, latest_tiered_checkpoint

warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def make_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 16))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def blank_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model whose optimizer has its state tensors (one step taken), for DCP to load into."""
    model, optimizer = make_model()
    train_step(model, optimizer)
    return model, optimizer


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(32, 256)).pow(2).mean().backward()
    optimizer.step()


def state_of(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> dict:
    return {"model": model.state_dict(), "optim": optimizer.state_dict(), "step": step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", help="s3://bucket/prefix for the S3 tier (default: a local server)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  log: %(levelname)s %(message)s")

    with s3_target(args.uri) as base, tempfile.TemporaryDirectory(prefix="s3dcp-tiered-") as scratch:
        local, s3 = Path(scratch) / "node-a", f"{base}/tiered"
        model, optimizer = make_model()
        writer = TieredStorageWriter(
            local,
            s3,
            s3_every=3,
            keep_local=3,
            on_upload=lambda s: (
                s.state == "committed"
                and print(f"  S3 copy of {s.checkpoint} committed ({s.seconds:.2f} s after the save)")
            ),
        )
        for step in range(1, 8):
            train_step(model, optimizer)
            dcp.save(state_of(model, optimizer, step), checkpoint_id=f"step_{step}", storage_writer=writer)
            print(f"step {step}: local copy saved")
        writer.wait_for_uploads()
        print("local tier:", sorted(p.name for p in local.iterdir() if not p.name.startswith(".")))
        print("S3 tier:   ", sorted(s.checkpoint for s in writer.upload_statuses() if s.state == "committed"))
        expected = {k: v.clone() for k, v in model.state_dict().items()}

        print("damaging one byte of the local step_7 ...")
        shard = local / "step_7" / "__0_0.distcp"
        data = bytearray(shard.read_bytes())
        data[len(data) // 3] ^= 0xFF
        shard.write_bytes(bytes(data))
        fresh, fresh_optimizer = blank_model()
        restored = state_of(fresh, fresh_optimizer, 0)
        reader = TieredStorageReader(local, s3)
        dcp.load(restored, checkpoint_id="step_7", storage_reader=reader)
        fetched = {s.phase: s.items for s in reader.last_stats}
        print(
            f"loaded step_7: {fetched.get('load.local', 0)} items from the local copy, "
            f"{fetched.get('load.read', 0)} from S3"
        )
        assert all(torch.equal(restored["model"][k], v) for k, v in expected.items())

        new_node = Path(scratch) / "node-b"
        name = latest_tiered_checkpoint(new_node, s3)
        print(f"on a new node (empty local tier) the newest checkpoint is {name}")
        fresh, fresh_optimizer = blank_model()
        restored = state_of(fresh, fresh_optimizer, 0)
        reader = TieredStorageReader(new_node, s3)
        dcp.load(restored, checkpoint_id=name, storage_reader=reader)
        fresh.load_state_dict(restored["model"])
        fresh_optimizer.load_state_dict(restored["optim"])
        assert name == "step_7" and restored["step"] == 7 and reader.source == "s3"
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in expected.items())
        assert all(
            torch.equal(fresh_optimizer.state_dict()["state"][i]["exp_avg"], state["exp_avg"])
            for i, state in optimizer.state_dict()["state"].items()
        )
        print(f"resumed at step {restored['step']} from {reader.source}: model bit-exact")


if __name__ == "__main__":
    main()
