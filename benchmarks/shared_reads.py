"""A resume on W ranks: bytes fetched from S3 and wall time, with shared reads on and off.

    .venv-bench/bin/python benchmarks/shared_reads.py --out benchmarks/results/shared-reads.json
    .venv-bench/bin/python benchmarks/shared_reads.py --ranks 4 --layouts replicated --size-mib 16   # a quick look

For each layout and rank count W, W real gloo ranks (spawned processes on
this machine) save a ``--size-mib`` checkpoint with s3dcp through the WAN
emulator (``s3dcp_testkit.wan``: ``--latency-ms`` to first byte,
``--conn-mbps`` per connection, in front of an in-memory store), then load
it with each method in turn:

  replicated  every rank holds the whole state dict (DDP)
  hsdp        two replica groups, each sharding every tensor over W/2 ranks
  sharded     every tensor sharded over all W ranks (FSDP): no byte is needed twice

Methods: ``s3dcp`` (shared reads on, the default), ``s3dcp-no-sharing``
(``share_reads=False``: every rank reads what it needs itself) and
``s3torchconnector`` (its DCP reader). Each method loads once unmeasured
first (imports, clients, threads), then once measured. Each row gives the GET bytes the
emulator served (and as a multiple of the stored bytes), GET requests, the
wall time of ``dcp.load`` on the slowest rank, and the CPU seconds of all
ranks together. On one machine the ranks share two cores and one loopback
"network" to the store, so wall times here show the cost of the exchange
rather than what a cluster gains: there each node has its own link to S3,
and the bytes not fetched are what shared reads save.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from stamp import stamp

MIB = 1 << 20
REGION = "us-east-1"
BUCKET = "shared-reads"
LAYOUTS = ("replicated", "hsdp", "sharded")
METHODS = ("s3dcp", "s3dcp-no-sharing", "s3torchconnector")


def _state(layout: str, world_size: int, size_mib: int, fill: float | None) -> dict[str, Any]:
    """``size_mib`` MiB of float32 in 8 tensors, laid out as ``layout`` says; ``fill``: a blank to load into."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    rows = size_mib * MIB // 4 // 8 // 1024
    generator = torch.Generator().manual_seed(3)
    full = {f"layer{n}.weight": torch.randn(rows, 1024, generator=generator) for n in range(8)}
    if fill is not None:
        full = {name: torch.full_like(tensor, fill) for name, tensor in full.items()}
    if layout == "replicated":
        return full
    if layout == "hsdp":
        mesh = init_device_mesh("cpu", (2, world_size // 2))
        return {name: distribute_tensor(t, mesh, [Replicate(), Shard(0)]) for name, t in full.items()}
    mesh = init_device_mesh("cpu", (world_size,))
    return {name: distribute_tensor(t, mesh, [Shard(0)]) for name, t in full.items()}


def _reader(method: str, uri: str) -> Any:
    if method == "s3torchconnector":
        from s3torchconnector import S3ClientConfig as CRTConfig
        from s3torchconnector.dcp import S3StorageReader as CRTReader

        return CRTReader(REGION, uri, CRTConfig(force_path_style=True))
    from s3dcp import S3StorageReader

    return S3StorageReader(REGION, uri, share_reads=method == "s3dcp")


def _rank(rank: int, world_size: int, port: int, env: dict[str, str], job: dict[str, Any], pipe: Any) -> None:
    """One rank: save the layout's checkpoint, then load it with each method, rank 0 telling the driver when."""
    os.environ.update(env)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from s3dcp import S3StorageWriter

    dist.init_process_group("gloo")
    layout, size_mib, uri = job["layout"], job["size_mib"], job["uri"]
    dcp.save(_state(layout, world_size, size_mib, None), storage_writer=S3StorageWriter(REGION, uri))
    expected = _state(layout, world_size, size_mib, None)
    for method in job["methods"]:  # unmeasured: each method's first load in a process pays for imports and set-up
        dcp.load(_state(layout, world_size, size_mib, -1.0), storage_reader=_reader(method, uri))
    for method in job["methods"]:
        blank = _state(layout, world_size, size_mib, -1.0)
        dist.barrier()
        if rank == 0:
            pipe.send(("begin", method))
            pipe.recv()  # the driver has taken the counts before
        dist.barrier()
        cpu, started = time.process_time(), time.perf_counter()
        dcp.load(blank, storage_reader=_reader(method, uri))
        took = torch.tensor([time.perf_counter() - started, time.process_time() - cpu], dtype=torch.float64)
        for name, value in expected.items():
            got = blank[name].full_tensor() if hasattr(blank[name], "full_tensor") else blank[name]
            want = value.full_tensor() if hasattr(value, "full_tensor") else value
            assert torch.equal(got, want), f"{method}: rank {rank}'s {name} differs after the load"
        slowest = took[:1].clone()
        dist.all_reduce(slowest, dist.ReduceOp.MAX)
        dist.all_reduce(took, dist.ReduceOp.SUM)
        if rank == 0:
            pipe.send(("end", method, float(slowest[0]), float(took[1])))
            pipe.recv()
    dist.barrier()
    dist.destroy_process_group()


def _run(job: dict[str, Any], world_size: int, wan: Any, env: dict[str, str]) -> list[dict[str, Any]]:
    """Start the ranks for one layout and rank count; the emulator's GET counts around each method's load."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import start_processes

    from s3dcp_testkit.ports import free_port

    context = mp.get_context("spawn")
    ours, theirs = context.Pipe()
    ranks = start_processes(  # type: ignore[no-untyped-call]
        _rank,
        args=(world_size, free_port(), env, job, theirs),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    rows: list[dict[str, Any]] = []
    while len(rows) < len(job["methods"]):
        if not ours.poll(1.0):
            ranks.join(timeout=0)  # raises if a rank failed
            continue
        message = ours.recv()
        counts = wan.counts.take()  # since the last take: at "begin", what came before; at "end", the load's
        if message[0] == "end":
            _, method, seconds, cpu = message
            rows.append(
                {
                    "method": method,
                    "get_bytes": counts.get("response_bytes:GetObject", 0),
                    "gets": counts.get("op:GetObject", 0),
                    "wall_s": round(seconds, 3),
                    "cpu_s": round(cpu, 3),
                }
            )
        ours.send("go")
    while not ranks.join(timeout=60):
        pass
    return rows


def main() -> None:
    import boto3

    from s3dcp_testkit.memory_store import MemoryStore
    from s3dcp_testkit.wan import WanEmulator, add_options, settings_from

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="2,4,8", help="rank counts W, comma-separated (even numbers)")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--size-mib", type=int, default=64, help="the state dict's size (all ranks together)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON, and a .md table beside it")
    add_options(parser)
    args = parser.parse_args()
    methods = args.methods.split(",")
    results: list[dict[str, Any]] = []
    with MemoryStore() as store, WanEmulator(store.endpoint_url, settings_from(args)) as wan:
        env = {
            "AWS_ENDPOINT_URL": wan.endpoint_url,
            "AWS_ACCESS_KEY_ID": "s3dcp-bench",
            "AWS_SECRET_ACCESS_KEY": "s3dcp-bench",
            "AWS_REGION": REGION,
        }
        s3 = boto3.client("s3", endpoint_url=store.endpoint_url, region_name=REGION, **_keys(env))
        s3.create_bucket(Bucket=BUCKET)
        for layout in args.layouts.split(","):
            for world_size in [int(w) for w in args.ranks.split(",")]:
                prefix = f"{layout}-{world_size}"
                job = {
                    "layout": layout,
                    "size_mib": args.size_mib,
                    "uri": f"s3://{BUCKET}/{prefix}",
                    "methods": methods,
                }
                rows = _run(job, world_size, wan, env)
                stored = sum(
                    entry["Size"]
                    for entry in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
                    if entry["Key"].endswith(".distcp")
                )
                for row in rows:
                    row.update(layout=layout, ranks=world_size, stored_bytes=stored)
                    row["times_stored"] = round(row["get_bytes"] / stored, 2)
                    print(
                        f"{layout:10} W={world_size} {row['method']:18} {row['get_bytes'] / MIB:8.1f} MiB "
                        f"({row['times_stored']}x stored) {row['gets']:4} GETs {row['wall_s']:6.2f} s "
                        f"cpu {row['cpu_s']:6.2f} s",
                        flush=True,
                    )
                results.extend(rows)
    report = {
        **stamp(),
        "settings": {
            "size_mib": args.size_mib,
            "latency_ms": args.latency_ms,
            "conn_mbps": args.conn_mbps,
            "total_mbps": args.total_mbps,
        },
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(_table(report))
        print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def _keys(env: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}


def _table(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"{report['date']}, {report['machine']}; {settings['size_mib']} MiB of float32 in 8 tensors; WAN "
        f"emulator: {settings['latency_ms']:g} ms to first byte, {settings['conn_mbps']:g} MB/s per connection "
        f"(0: no limit), in front of an in-memory store; each method's second load in the ranks' processes, one run. Wall time: `dcp.load` on the slowest rank; "
        "CPU: all ranks together.",
        "",
        "| layout | ranks | method | S3 bytes fetched, MiB (x stored) | GETs | wall s | CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["results"]:
        lines.append(
            f"| {row['layout']} | {row['ranks']} | {row['method']} | {row['get_bytes'] / MIB:.1f} "
            f"({row['times_stored']}x) | {row['gets']} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
