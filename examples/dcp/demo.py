"""s3dcp demo: train, checkpoint to S3, crash mid-save, resume, verify bit for bit.

    make demo                                  # local S3 server on 127.0.0.1
    python examples/dcp/demo.py --uri s3://my-bucket/experiments   # your S3: works in a new
                                      # sub-prefix experiments/s3dcp-demo-<time>-<random>, and
                                      # saves, prunes and cleans up there only

1. A training process checkpoints model + AdamW state to S3 every few steps.
2. It is killed with SIGKILL in the middle of a save.
3. The half-written checkpoint has no ``.metadata``, so it does not count.
4. We resume from the newest complete checkpoint (``latest_checkpoint``), check it is bit-identical
   to what the trainer had in memory when it saved, and train to the end.
5. The final weights equal those of a run that never crashed, and the final
   checkpoint loads back bit-identical.
6. Housekeeping with the ``s3dcp`` command, in the demo's own prefix only:
   abort the killed save's multipart uploads (``gc``), keep the newest two
   checkpoints (``prune``), list what is left (``ls``) and re-read every
   byte (``verify``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import boto3
import torch
import torch.distributed.checkpoint as dcp
from _s3_target import s3_target
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter, latest_checkpoint

warnings.filterwarnings("ignore", message="torch.distributed is disabled")

WIDTH = 1024
LAYERS = 4
BATCH = 64


def make_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(LAYERS):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers[:-1])
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> float:
    """One step on data that depends only on the step number (so resumes replay exactly)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(BATCH, WIDTH, generator=g)
    y = torch.randn(BATCH, WIDTH, generator=g)
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def checkpoint_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd, "step": step}


def state_bytes(state: Any) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def assert_identical(expected: Any, actual: Any, where: str = "") -> int:
    """Bit-exact comparison; returns the number of tensors compared."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and expected.dtype == actual.dtype, where
        assert torch.equal(expected.view(-1).view(torch.uint8), actual.contiguous().view(-1).view(torch.uint8)), where
        return 1
    if isinstance(expected, dict):
        assert set(expected) == set(actual), where
        return sum(assert_identical(expected[k], actual[k], f"{where}.{k}") for k in expected)
    if isinstance(expected, (list, tuple)):
        return sum(assert_identical(e, a, f"{where}[{i}]") for i, (e, a) in enumerate(zip(expected, actual)))
    assert expected == actual, where
    return 0


def mbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / 1e6:.1f} MB in {seconds:.2f}s = {nbytes / 1e6 / max(seconds, 1e-9):.0f} MB/s"


def writer(uri: str) -> S3StorageWriter:
    # 8 MiB parts so that a save is several requests long and can be cut in the middle
    return S3StorageWriter(None, uri, S3ClientConfig(part_size=8 * 1024 * 1024), thread_count=2)


def save(state: dict[str, Any], uri: str) -> float:
    started = time.perf_counter()
    dcp.save(state, storage_writer=writer(uri))
    return time.perf_counter() - started


# -- the training process that gets killed -------------------------------------------
def run_trainer(base: str, steps: int, every: int, truth: Path, crash_at: int) -> None:
    model, optimizer = make_model()
    for step in range(1, steps + 1):
        train_step(model, optimizer, step)
        if step % every == 0:
            state = checkpoint_state(model, optimizer, step)
            torch.save(state, truth / f"step_{step}.pt")  # ground truth, kept locally
            if step == crash_at:
                crash_during_save(state, f"{base}/step_{step}")
            seconds = save(state, f"{base}/step_{step}")
            print(f"SAVED step_{step} {state_bytes(state)} {seconds:.3f}", flush=True)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``, for the boto3 calls that watch the save."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix.rstrip("/")


def crash_during_save(state: dict[str, Any], uri: str) -> None:
    """Start the save, wait until S3 holds some of its parts, then SIGKILL ourselves mid-upload.

    This save sends one request at a time in 5 MiB parts, so it is many
    requests long even against a server on this machine, and the kill lands
    between parts, as a crash on a busy link would: its multipart uploads
    stay open, holding parts that are stored (and billed) until ``gc``
    aborts them.
    """
    one_at_a_time = S3ClientConfig(part_size=5 * 1024 * 1024, max_concurrency=1, initial_concurrency=1)
    slow_writer = S3StorageWriter(None, uri, one_at_a_time, thread_count=2)
    threading.Thread(target=dcp.save, args=(state,), kwargs={"storage_writer": slow_writer}, daemon=True).start()
    bucket, prefix = split_s3_uri(uri)
    s3 = boto3.client("s3")
    while True:  # watch the real upload
        uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])
        parts = [s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []) for u in uploads]
        if any(parts):
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind: as if the node died


# -- the driver ------------------------------------------------------------------------
def s3dcp_command(*args: str) -> None:
    """Run the s3dcp command line tool, showing its output as a shell would."""
    print(f"    $ s3dcp {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "s3dcp", *args], capture_output=True, text=True)
    for line in (result.stdout + result.stderr).splitlines():
        print(f"      {line}")
    if result.returncode != 0:
        raise SystemExit(f"s3dcp {args[0]} exited with {result.returncode}")


def drive(base: str, steps: int, every: int, crash_at: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        truth = Path(tmp)
        print(f"\n[1] training {LAYERS}x{WIDTH}x{WIDTH} MLP + AdamW, checkpoint every {every} steps to {base}")
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "train",
                "--base",
                base,
                "--steps",
                str(steps),
                "--every",
                str(every),
                "--truth",
                tmp,
                "--crash-at",
                str(crash_at),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        for line in child.stdout:
            word, name, *rest = line.split()
            if word == "SAVED":
                print(f"    saved {name}: {mbps(int(rest[0]), float(rest[1]))}")
        child.wait()
        if child.returncode != -signal.SIGKILL:
            raise SystemExit(f"trainer ended with {child.returncode} before the crash")
        print(f"[2] the trainer killed itself (SIGKILL) while saving step_{crash_at}, with parts uploaded")

        print("[3] checkpoints in S3 now (the killed save has no .metadata, so it is not complete):")
        s3dcp_command("ls", base)
        show_abandoned_uploads(base)
        latest_uri = latest_checkpoint(base)
        assert latest_uri is not None and latest_uri != f"{base}/step_{crash_at}"
        latest = int(latest_uri.rsplit("_", 1)[1])

        print(f"[4] resuming from the newest complete checkpoint: {latest_uri}")
        model, optimizer = make_model()
        state = checkpoint_state(model, optimizer, 0)
        started = time.perf_counter()
        dcp.load(state, storage_reader=S3StorageReader(None, latest_uri))
        load_seconds = time.perf_counter() - started
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        expected = torch.load(truth / f"step_{latest}.pt", weights_only=True)
        compared = assert_identical(expected, checkpoint_state(model, optimizer, state["step"]))
        print(f"    loaded {mbps(state_bytes(state), load_seconds)}")
        print(f"    {compared} tensors bit-identical to what the trainer held at step {state['step']}")

    for step in range(state["step"] + 1, steps + 1):
        train_step(model, optimizer, step)
    final_uri = f"{base}/step_{steps}"
    final = checkpoint_state(model, optimizer, steps)
    seconds = save(final, final_uri)
    print(f"    trained to step {steps} and saved {final_uri}: {mbps(state_bytes(final), seconds)}")

    print("[5] checking the result")
    reference_model, reference_optim = make_model()
    for step in range(1, steps + 1):
        train_step(reference_model, reference_optim, step)
    compared = assert_identical(checkpoint_state(reference_model, reference_optim, steps), final)
    print(f"    resumed run == uninterrupted run: {compared} tensors bit-identical")
    fresh_model, fresh_optim = make_model()
    loaded = checkpoint_state(fresh_model, fresh_optim, 0)
    dcp.load(loaded, storage_reader=S3StorageReader(None, final_uri))
    compared = assert_identical(final, loaded)
    print(f"    final checkpoint loads back: {compared} tensors bit-identical")

    housekeeping(base, final_uri)
    print("demo OK")


def show_abandoned_uploads(base: str) -> None:
    """The killed save's multipart uploads: open, holding parts no object shows."""
    bucket, prefix = split_s3_uri(base)
    s3 = boto3.client("s3")
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])
    print(
        f"    {len(uploads)} multipart upload(s) left open by the killed save (no process will finish or abort them):"
    )
    for upload in uploads:
        parts = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
        size = sum(part["Size"] for part in parts)
        print(f"      {upload['Key'].removeprefix(prefix + '/')}: {len(parts)} part(s), {size / 1e6:.1f} MB stored")
    if not uploads:
        raise SystemExit("the killed save left no open upload: it finished before the kill landed")


def housekeeping(base: str, final_uri: str) -> None:
    """Step 6: the s3dcp command on the demo's own prefix (``--yes``: nothing else is in it, so no question)."""
    print(f"[6] housekeeping with the s3dcp command, in {base} only")
    s3dcp_command("gc", base, "--older-than-hours", "0", "--yes")
    s3dcp_command("prune", base, "--keep", "2", "--grace-hours", "0", "--yes")
    s3dcp_command("ls", base)
    s3dcp_command("verify", final_uri)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="(internal) the training process the demo kills")
    train.add_argument("--base", required=True)
    train.add_argument("--steps", type=int, required=True)
    train.add_argument("--every", type=int, required=True)
    train.add_argument("--truth", type=Path, required=True)
    train.add_argument("--crash-at", type=int, required=True)
    parser.add_argument(
        "--uri",
        help="s3://bucket/prefix under which the demo makes a new sub-prefix of its own "
        "and works only there (default: a local S3 server)",
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--crash-at", type=int, default=9, help="kill the trainer while saving this step")
    args = parser.parse_args()
    if args.command == "train":
        run_trainer(args.base, args.steps, args.every, args.truth, args.crash_at)
        return
    if args.crash_at % args.every or not args.every <= args.crash_at < args.steps:
        parser.error("--crash-at must be a checkpoint step after the first and before --steps")
    with s3_target(args.uri) as base:
        drive(base, args.steps, args.every, args.crash_at)


if __name__ == "__main__":
    main()
