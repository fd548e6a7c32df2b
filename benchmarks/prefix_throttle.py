"""Does a prefix strategy keep many ranks from being throttled? A model of S3's partitions.

S3 serves about 3,500 PUT/COPY/POST/DELETE requests per second per key-prefix
partition. This benchmark puts the fault proxy's throttling model between
s3dcp and moto's server: every partition (the first ``--partition-chars``
characters of a key after the checkpoint path) is a token bucket of
``--rate`` write requests per second (S3's rate scaled down so one machine
reaches it; burst = one second's worth), and a write over budget gets 503
SlowDown. Reads are not throttled.

Many ranks save at once, each with its own small state dict, through the
real ``S3StorageWriter``: ranks are threads of one process that go through
DCP's save protocol (plan, global plan, write, finish) as ``dcp.save``
would with a process group, so hundreds of ranks fit on two cores. For
each rank count and strategy it reports the 503s received, requests sent,
the partitions the shard keys fall in, and the save's wall time.

    .venv/bin/python benchmarks/prefix_throttle.py                # 32, 128, 256 ranks
    .venv/bin/python benchmarks/prefix_throttle.py --ranks 64 --rate 20
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import torch
from stamp import stamp
from torch.distributed.checkpoint import DefaultSavePlanner

from s3dcp import (
    BinaryPrefixStrategy,
    HexPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3ClientConfig,
    S3StorageWriter,
)
from s3dcp_testkit.fault_proxy import FaultProxy
from s3dcp_testkit.moto_server import ACCESS_KEY, SECRET_KEY, MotoServer

HERE = Path(__file__).resolve().parent

warnings.filterwarnings("ignore", message="torch.distributed is disabled")

BUCKET = "prefix-bench"
REGION = "us-east-1"
S3_WRITES_PER_PARTITION = 3500  # per second, AWS's documented figure
WRITE_METHODS = ("PUT", "POST", "DELETE")


def strategies() -> dict[str, Any]:
    return {
        "none": None,
        "round-robin (16 prefixes)": RoundRobinPrefixStrategy([f"{i:x}" for i in range(16)]),
        "binary": BinaryPrefixStrategy(),
        "hex": HexPrefixStrategy(),
    }


def rank_state(rank: int, numel: int) -> dict[str, Any]:
    return {f"rank{rank}.weight": torch.full((numel,), float(rank)), f"rank{rank}.step": torch.tensor(rank)}


def save_as_ranks(states: list[dict[str, Any]], writers: list[S3StorageWriter]) -> None:
    """What ``dcp.save`` does on ``len(states)`` ranks, with the ranks as threads of this process."""
    world = len(states)
    planners = [DefaultSavePlanner() for _ in range(world)]
    local_plans = []
    for rank, (planner, writer, state) in enumerate(zip(planners, writers, states)):
        planner.set_up_planner(state_dict=state, storage_meta=writer.storage_meta(), is_coordinator=rank == 0)
        writer.set_up_storage_writer(rank == 0, rank=rank, use_collectives=True)
        local_plans.append(writer.prepare_local_plan(planner.create_local_plan()))
    global_plans, metadata = planners[0].create_global_plan(local_plans)
    global_plans = writers[0].prepare_global_plan(global_plans)
    final_plans = [planner.finish_plan(plan) for planner, plan in zip(planners, global_plans)]

    def write(rank: int) -> Any:
        return writers[rank].write_data(final_plans[rank], planners[rank]).wait()

    with ThreadPoolExecutor(world) as ranks:
        results = list(ranks.map(write, range(world)))
    writers[0].finish(metadata=metadata, results=results)


def measure(
    proxy: FaultProxy, s3: Any, ranks: int, name: str, strategy: Any, args: argparse.Namespace
) -> dict[str, Any]:
    path = f"{name.split()[0]}-{ranks}"
    proxy.clear()
    rule = proxy.add_rule(
        "throttle",
        method=WRITE_METHODS,
        rate=args.rate,
        burst=args.rate,
        partition_root=f"/{BUCKET}/{path}/",
        partition_chars=args.partition_chars,
    )
    config = S3ClientConfig(endpoint_url=proxy.endpoint_url, force_path_style=True)
    states = [rank_state(rank, args.shard_kib * 256) for rank in range(ranks)]
    writers = [S3StorageWriter(REGION, f"s3://{BUCKET}/{path}", config, prefix_strategy=strategy) for _ in states]
    started = time.monotonic()
    error = None
    try:
        save_as_ranks(states, writers)
    except Exception as err:  # reported in the table: a save that gave up is a result too
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    wall = time.monotonic() - started
    records = proxy.requests()
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{path}/")
        for o in page.get("Contents", [])
    ]
    shard_keys = [k for k in keys if k.endswith(".distcp")]
    return {
        "ranks": ranks,
        "strategy": name,
        "partitions": len({rule.partition(f"/{BUCKET}/{k}") for k in shard_keys}),
        "requests": len(records),
        "throttled_503": sum(1 for r in records if r.status == 503),
        "wall_s": round(wall, 2),
        "committed": f"{path}/.metadata" in keys,
        "error": error,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"{report['date']}, {report['machine']}; moto behind the throttling proxy; "
        f"{s['rate']:g} writes/s per partition (S3: {S3_WRITES_PER_PARTITION}), "
        f"partition = first {s['partition_chars']} key characters after the checkpoint path; "
        f"one {s['shard_kib']} KiB shard per rank, s3dcp's default retries",
        "",
        "| ranks | strategy | partitions | requests | 503 SlowDown | save s | committed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        committed = "yes" if row["committed"] else f"no ({row['error']})"
        lines.append(
            f"| {row['ranks']} | {row['strategy']} | {row['partitions']} | {row['requests']} | "
            f"{row['throttled_503']} | {row['wall_s']:.2f} | {committed} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="32,128,256", help="comma-separated rank counts")
    parser.add_argument("--rate", type=float, default=35.0, help="writes/s per partition (S3: 3,500)")
    parser.add_argument("--partition-chars", type=int, default=2)
    parser.add_argument("--shard-kib", type=int, default=64, help="tensor bytes per rank")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "prefix_throttle.json")
    args = parser.parse_args()

    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_EC2_METADATA_DISABLED="true")
    rows = []
    with MotoServer() as server, FaultProxy(server.endpoint_url) as proxy:
        s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        # warm-up (not reported): the process's first save pays for creating the S3 client
        save_as_ranks(
            [rank_state(r, 16) for r in range(2)],
            [
                S3StorageWriter(
                    REGION,
                    f"s3://{BUCKET}/warm-up",
                    S3ClientConfig(endpoint_url=proxy.endpoint_url, force_path_style=True),
                )
                for _ in range(2)
            ],
        )
        for ranks in (int(n) for n in args.ranks.split(",")):
            for name, strategy in strategies().items():
                row = measure(proxy, s3, ranks, name, strategy, args)
                print(
                    f"{ranks:4d} ranks  {name:26s} partitions {row['partitions']:3d}  requests {row['requests']:4d}  "
                    f"503 {row['throttled_503']:4d}  {row['wall_s']:6.2f}s  {row['error'] or 'committed'}",
                    flush=True,
                )
                rows.append(row)
    report = {
        **stamp(),
        "settings": {"rate": args.rate, "partition_chars": args.partition_chars, "shard_kib": args.shard_kib},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
