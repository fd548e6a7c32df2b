"""How long does a checkpoint stop training? ``dcp.save``, ``dcp.async_save``, tiered.

Saves the benchmark state dict (``workload.py``, ~1 GiB) with s3dcp to moto's
server on 127.0.0.1 over HTTP, in a one-rank gloo process group, and
reports for each way of saving:

* blocked: how long the call kept the caller (the training loop) waiting;
* total: until the checkpoint was complete in S3 (the future resolved, or
  the tiered writer's background upload committed).

``dcp.async_save`` first copies the state dict to CPU staging memory (the
part that blocks) and uploads from the copy in a background thread, or in
a separate checkpoint process with ``AsyncCheckpointerType.PROCESS``.
``TieredStorageWriter`` writes a local copy (``--local-dir``, default a
folder in ``/dev/shm``) and uploads it in the background. Runs alternate
between the ways; medians of ``--runs``.

    .venv/bin/python benchmarks/async_blocking.py              # 1024 MiB, 3 runs
    .venv/bin/python benchmarks/async_blocking.py --size-mib 256 --runs 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

import boto3
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from stamp import stamp
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
from workload import build_state_dict, tensor_bytes

from s3dcp import S3StorageWriter, TieredStorageWriter
from s3dcp_testkit.moto_server import ACCESS_KEY, SECRET_KEY, MotoServer
from s3dcp_testkit.ports import free_port

HERE = Path(__file__).resolve().parent

warnings.filterwarnings("ignore")
BUCKET = "async-bench"
WAYS = ("save", "async_save thread", "async_save process", "tiered save", "tiered async_save thread")


def measure_tiered(way: str, state: dict[str, Any], uri: str, group: Any, local: Path) -> tuple[float, float]:
    writer = TieredStorageWriter(local, uri.rsplit("/", 1)[0], overwrite=True, keep_local=1)
    name = uri.rsplit("/", 1)[1] + "-tiered"
    started = time.perf_counter()
    if way == "tiered save":
        dcp.save(state, checkpoint_id=name, storage_writer=writer)
        blocked = time.perf_counter() - started
    else:
        future = cast(
            Future[Any],
            dcp.async_save(
                state,
                checkpoint_id=name,
                storage_writer=writer,
                async_checkpointer_type=AsyncCheckpointerType.THREAD,
                process_group=group,
            ),
        )
        blocked = time.perf_counter() - started
        future.result()
    writer.wait_for_uploads()  # raises if the S3 copy failed
    return blocked, time.perf_counter() - started


def measure(way: str, state: dict[str, Any], uri: str, group: Any, local: Path) -> tuple[float, float]:
    if way.startswith("tiered"):
        return measure_tiered(way, state, uri, group, local)
    writer = S3StorageWriter(None, uri, overwrite=True)
    started = time.perf_counter()
    if way == "save":
        dcp.save(state, storage_writer=writer)
        blocked = total = time.perf_counter() - started
        return blocked, total
    executor = AsyncCheckpointerType.PROCESS if way.endswith("process") else AsyncCheckpointerType.THREAD
    future = cast(
        Future[Any], dcp.async_save(state, storage_writer=writer, async_checkpointer_type=executor, process_group=group)
    )
    blocked = time.perf_counter() - started
    future.result()
    return blocked, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "async_blocking.json")
    parser.add_argument("--local-dir", type=Path, help="local tier root (default: a new folder in /dev/shm)")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    local = args.local_dir or Path(tempfile.mkdtemp(prefix="s3dcp-tier-", dir=shm if shm.is_dir() else None))
    try:
        run(args, local)
    finally:
        if args.local_dir is None:
            shutil.rmtree(local, ignore_errors=True)


def run(args: argparse.Namespace, local: Path) -> None:

    with MotoServer() as server:
        os.environ.update(
            AWS_ENDPOINT_URL=server.endpoint_url,
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
            RANK="0",
            WORLD_SIZE="1",
        )
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        dist.init_process_group("gloo")
        group = dist.new_group(backend="gloo")
        state = build_state_dict(args.size_mib)
        size = tensor_bytes(state)
        # warm-up, not reported: the first save builds the S3 client and the checkpoint process
        for way in WAYS:
            measure(way, build_state_dict(16), f"s3://{BUCKET}/warm-up", group, local)
        results: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
        for run in range(args.runs):
            for way in WAYS:
                blocked, total = measure(way, state, f"s3://{BUCKET}/ckpt", group, local)
                results[way].append((blocked, total))
                print(f"run {run + 1} {way:20s} blocked {blocked:6.2f}s  total {total:6.2f}s", flush=True)
        dist.destroy_process_group()

    rows = [
        {
            "way": way,
            "blocked_s": round(statistics.median(b for b, _ in runs), 2),
            "total_s": round(statistics.median(t for _, t in runs), 2),
        }
        for way, runs in results.items()
    ]
    report = {
        **stamp(),
        "bytes": size,
        "runs": args.runs,
        "local_tier": "tmpfs" if str(local).startswith("/dev/shm") else "disk",
        "rows": rows,
    }
    lines = [
        f"{report['date']}, {report['machine']}; s3dcp to moto over HTTP, {size / 2**20:.0f} MiB, "
        f"median of {args.runs}; tiered local copy on {report['local_tier']}",
        "",
        "| way | training blocked s | until complete in S3 s |",
        "| --- | --- | --- |",
        *(f"| `{r['way']}` | {r['blocked_s']:.2f} | {r['total_s']:.2f} |" for r in rows),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
