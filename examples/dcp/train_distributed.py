"""Train a small FSDP2 model on several CPU ranks, checkpoint to S3 asynchronously, resume anywhere.

    torchrun --nproc-per-node=4 examples/dcp/train_distributed.py --uri s3://bucket/run-1 --steps 20
    torchrun --nproc-per-node=2 examples/dcp/train_distributed.py --uri s3://bucket/run-1 --steps 40

The second command resumes from the newest complete checkpoint under
``--uri``, written by 4 ranks, on 2 ranks: DCP reshards the model and
optimizer state on load. Every ``--every`` steps the ranks start
``dcp.async_save`` of ``{uri}/step_{N}`` and go on training while it
uploads; the next save first waits for the previous one, so at most one is
in flight. ``make demo-distributed`` runs both commands against a local S3
server (``examples/dcp/distributed_demo.py``). The standard AWS variables (``AWS_ENDPOINT_URL``, credentials,
``AWS_REGION``) say which store to use.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import Future
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from s3dcp import S3StorageReader, S3StorageWriter, latest_checkpoint

FEATURES = 32


def build_model(mesh: Any) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 1),
    )
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def batch(step: int, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s slice of a synthetic regression set, the same whatever the world size."""
    generator = torch.Generator().manual_seed(step)
    inputs = torch.randn(64, FEATURES, generator=generator)
    targets = inputs[:, :4].sum(dim=1, keepdim=True).sin()
    rows = torch.arange(64).tensor_split(world_size)[rank]
    return inputs[rows], targets[rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default=os.environ.get("S3DCP_EXAMPLE_URI"), help="s3://bucket/prefix of the run")
    parser.add_argument("--steps", type=int, default=20, help="train until this step")
    parser.add_argument("--every", type=int, default=5, help="checkpoint every N steps")
    args = parser.parse_args()
    if not args.uri:
        parser.error("give --uri s3://bucket/prefix (or set S3DCP_EXAMPLE_URI)")

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    # async saves run their collectives from a background thread: give them their own
    # group, or they interleave with training's collectives on the default one
    checkpoint_group = dist.new_group(backend="gloo")
    mesh = init_device_mesh("cpu", (world_size,))
    model = build_model(mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    say = print if rank == 0 else (lambda *a, **k: None)

    start = 0
    newest = latest_checkpoint(args.uri)
    if newest is not None:
        model_state, optim_state = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_state, "optim": optim_state, "step": 0}
        dcp.load(state, storage_reader=S3StorageReader(None, newest))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        start = state["step"]
        say(f"resumed from {newest} (step {start}) on {world_size} ranks")
    else:
        say(f"no complete checkpoint under {args.uri}: starting at step 0 on {world_size} ranks")

    pending: Future[Any] | None = None
    for step in range(start + 1, args.steps + 1):
        inputs, targets = batch(step, rank, world_size)
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % args.every == 0 or step == args.steps:
            if pending is not None:
                pending.result()  # one save in flight at a time
            model_state, optim_state = get_state_dict(model, optimizer)
            began = time.perf_counter()
            pending = dcp.async_save(
                {"model": model_state, "optim": optim_state, "step": step},
                storage_writer=S3StorageWriter(None, f"{args.uri}/step_{step}"),
                process_group=checkpoint_group,
            )
            blocked = time.perf_counter() - began
            say(
                f"step {step:4d}  loss {loss.item():.4f}  checkpoint step_{step} started (training blocked {blocked:.3f}s)"
            )
    if pending is not None:
        pending.result()
    say(f"done at step {args.steps}; newest complete checkpoint: {latest_checkpoint(args.uri)}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
