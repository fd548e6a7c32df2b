"""What DCP's ZStandard stream transform costs and saves through s3dcp.

    python benchmarks/transforms.py                          # the benchmark state dict, 1 GiB, moto over HTTP
    python benchmarks/transforms.py --weights model.pth      # also a real model's weights (a torch.load-able state dict)

For each state dict, s3dcp saves and loads it plain and with
``extensions=[ZStandard()]``; every save and load runs in a fresh worker
process (client CPU and peak RSS growth are that process's alone), plain and
zstd alternate, loads are checked bit for bit. The stored size is the sum of
the checkpoint's objects. ``--weights`` adds the file's weights as stored
and cast to bfloat16 (how many training jobs keep them). Test venv
(``zstandard`` comes with the test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from stamp import stamp

HERE = Path(__file__).resolve().parent

MIB = 1024 * 1024
CODINGS = ("plain", "zstd")


def _state(workload: str, size_mib: int, weights: str | None) -> dict[str, Any]:
    import torch
    from workload import build_state_dict

    if workload == "bench":
        return build_state_dict(size_mib)
    assert weights is not None
    loaded = torch.load(weights, map_location="cpu", weights_only=True)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if workload == "weights-bf16":
        tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}
    return tensors


def run_worker(op: str, coding: str, workload: str, uri: str, size_mib: int, weights: str | None) -> dict[str, Any]:
    import boto3
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._extension import ZStandard
    from transfer import measure
    from workload import blank_copy, tensor_bytes

    from s3dcp import S3StorageReader, S3StorageWriter
    from s3dcp._uri import parse_s3_uri

    state = _state(workload, size_mib, weights)
    extensions = [ZStandard()] if coding == "zstd" else None
    if op == "save":
        writer = S3StorageWriter(None, uri, thread_count=4, overwrite=True, extensions=extensions)
        wall, cpu, peak = measure(lambda: dcp.save(state, storage_writer=writer))
    else:
        dest = blank_copy(state)
        wall, cpu, peak = measure(lambda: dcp.load(dest, storage_reader=S3StorageReader(None, uri)))
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and not torch.equal(
                dest[key].reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8)
            ):
                raise SystemExit(f"{coding} load of {workload} gave wrong bytes for {key}")
    where = parse_s3_uri(uri)
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=where.prefix + "/")
    stored = sum(obj["Size"] for page in pages for obj in page.get("Contents", []))
    return {
        "op": op,
        "coding": coding,
        "workload": workload,
        "bytes": tensor_bytes(state),
        "stored_bytes": stored,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_growth_mib": peak,
    }


def _worker(*args: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{result.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    gib = runs[0]["bytes"] / 1024**3
    walls = [r["wall_s"] for r in runs]
    return {
        "workload": runs[0]["workload"],
        "op": runs[0]["op"],
        "coding": runs[0]["coding"],
        "bytes": runs[0]["bytes"],
        "stored_bytes": runs[-1]["stored_bytes"],
        "runs": len(runs),
        "wall_s_median": statistics.median(walls),
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "mb_s": runs[0]["bytes"] / 1e6 / statistics.median(walls),
        "cpu_s_per_gib": statistics.median(r["cpu_s"] for r in runs) / gib,
        "peak_rss_growth_mib": statistics.median(r["peak_rss_growth_mib"] for r in runs),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| state dict | op | coding | tensor MiB | stored MiB | stored / tensor | wall s median (min-max) "
        "| MB/s of tensor bytes | client CPU s/GiB | peak RSS growth MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['op']} | {r['coding']} | {r['bytes'] / MIB:.0f} | {r['stored_bytes'] / MIB:.0f} "
            f"| {r['stored_bytes'] / r['bytes']:.1%} | {r['wall_s_median']:.2f} ({r['wall_s_min']:.2f}-{r['wall_s_max']:.2f}) "
            f"| {r['mb_s']:.0f} | {r['cpu_s_per_gib']:.2f} | {r['peak_rss_growth_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the benchmark state dict")
    parser.add_argument("--weights", help="a torch.load-able file of model weights to measure as well")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write rows as JSON here (and Markdown next to it)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        op, coding, workload, uri, size = args.worker
        print(json.dumps(run_worker(op, coding, workload, uri, int(size), args.weights)))
        return

    workloads = ["bench"] + (["weights", "weights-bf16"] if args.weights else [])
    extra = ["--weights", args.weights] if args.weights else []
    with ExitStack() as stack:
        import boto3

        from s3dcp_testkit.moto_server import ACCESS_KEY, SECRET_KEY, MotoServer

        moto = stack.enter_context(MotoServer())
        os.environ.update(
            AWS_ENDPOINT_URL=moto.endpoint_url,
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_REGION="us-east-1",
        )
        boto3.client("s3").create_bucket(Bucket="bench")
        print(
            f"moto over HTTP; benchmark state dict {args.size_mib} MiB; {args.runs} runs; weights {args.weights}",
            flush=True,
        )
        results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for run in range(args.runs):
            for workload in workloads:
                for op in ("save", "load"):
                    for coding in CODINGS if run % 2 == 0 else reversed(CODINGS):
                        uri = f"s3://bench/{workload}-{coding}"
                        row = _worker(op, coding, workload, uri, str(args.size_mib), *extra)
                        results.setdefault((workload, op, coding), []).append(row)
                        print(
                            f"  run {run + 1} {workload} {op} {coding}: {row['wall_s']:.2f} s, "
                            f"cpu {row['cpu_s']:.2f} s, stored {row['stored_bytes'] / MIB:.1f} MiB",
                            flush=True,
                        )
    rows = [
        summarize(results[key]) for key in sorted(results, key=lambda k: (workloads.index(k[0]), k[1] != "save", k[2]))
    ]
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            **stamp(),
            "server": "moto server (loopback, HTTP)",
            "size_mib": args.size_mib,
            "weights": Path(args.weights).name if args.weights else None,
            "rows": rows,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
