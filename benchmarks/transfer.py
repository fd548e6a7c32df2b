"""Save/load throughput, client CPU and peak memory: s3dcp against raw boto3.

    python benchmarks/transfer.py                      # local moto server, 1 GiB, 3 runs
    python benchmarks/transfer.py --uri s3://bucket/bench --size-mib 4096

Every measurement runs in a fresh worker process, so CPU time (user+sys of
that process) and peak RSS growth belong to the client alone; the S3 server
is another process. Methods alternate (A B A B ...) so drift hits all alike.
Loads are checked bit for bit after they are timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from stamp import stamp

HERE = Path(__file__).resolve().parent

MIB = 1024 * 1024


# -- worker side --------------------------------------------------------------------
def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(operation: Callable[[], None]) -> tuple[float, float, float]:
    """Wall seconds, this process's CPU seconds (user+sys) and peak RSS growth (MiB) of ``operation``."""
    precise = _reset_peak_rss()
    base_rss = _rss_mib() if precise else _peak_rss_mib()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    operation()
    wall = time.perf_counter() - started
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return wall, cpu, _peak_rss_mib() - base_rss


def check_loaded(state: dict[str, Any], size_mib: int, method_name: str, workload: str = "mixed") -> None:
    """Exit unless every tensor in ``state`` (all keys, or a partial load's) is the benchmark's, bit for bit."""
    import torch
    from workload import build

    expected = build(workload, size_mib)
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and not torch.equal(
            value.view(torch.uint8), expected[key].view(torch.uint8)
        ):
            raise SystemExit(f"{method_name} loaded wrong bytes for {key}")


def run_worker(op: str, method_name: str, uri: str, size_mib: int) -> dict[str, Any]:
    import torch
    from methods import METHODS
    from workload import build_state_dict, tensor_bytes

    method = METHODS[method_name](uri)
    state = build_state_dict(size_mib)
    if op == "prepare":
        method.prepare(state)
        return {}
    target = method.uri + "-ref" if op == "load" else method.uri
    if op == "load":
        for value in state.values():
            if isinstance(value, torch.Tensor):
                value.zero_()
    wall, cpu, peak_growth = measure(lambda: method.save(state, target) if op == "save" else method.load(state, target))
    if op == "load":
        check_loaded(state, size_mib, method_name)
    nbytes = tensor_bytes(state)
    return {
        "method": method_name,
        "op": op,
        "bytes": nbytes,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_growth_mib": peak_growth,
    }


# -- driver side --------------------------------------------------------------------
def _worker(op: str, method: str, uri: str, size_mib: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", op, "--method", method, "--uri", uri, "--size-mib", str(size_mib)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"worker {op} {method} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]) if op != "prepare" else {}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    gib = runs[0]["bytes"] / 1024**3
    walls = [r["wall_s"] for r in runs]
    return {
        "method": runs[0]["method"],
        "op": runs[0]["op"],
        "runs": len(runs),
        "gib": round(gib, 3),
        "wall_s": round(statistics.median(walls), 3),
        "wall_min_s": round(min(walls), 3),
        "wall_max_s": round(max(walls), 3),
        "mb_per_s": round(runs[0]["bytes"] / 1e6 / statistics.median(walls), 1),
        "cpu_s_per_gib": round(statistics.median(r["cpu_s"] for r in runs) / gib, 3),
        "peak_rss_growth_mib": round(statistics.median(r["peak_rss_growth_mib"] for r in runs), 1),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| op | method | wall s (median, min-max) | MB/s | client CPU s/GiB | peak RSS growth MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["op"], r["method"] != "s3dcp", r["method"])):
        lines.append(
            f"| {r['op']} | {r['method']} | {r['wall_s']:.2f} ({r['wall_min_s']:.2f}-{r['wall_max_s']:.2f}) "
            f"| {r['mb_per_s']:.0f} | {r['cpu_s_per_gib']:.2f} | {r['peak_rss_growth_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", help="s3://bucket/prefix to use (default: start a local moto server)")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--methods", default="s3dcp,boto3-raw")
    parser.add_argument("--ops", default="save,load")
    parser.add_argument("--out", type=Path, help="write the summary as JSON here")
    parser.add_argument("--worker", choices=["prepare", "save", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(run_worker(args.worker, args.method, args.uri, args.size_mib)))
        return

    methods = args.methods.split(",")
    ops = args.ops.split(",")
    with ExitStack() as stack:
        uri, server = args.uri, "given endpoint"
        if not uri:
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
            uri, server = "s3://bench/transfer", "moto server (loopback, HTTP)"
        print(f"server: {server}; {args.size_mib} MiB; {args.runs} runs; methods {methods}", flush=True)
        if "load" in ops:
            for method in methods:
                _worker("prepare", method, uri, args.size_mib)
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for run in range(args.runs):
            for op in ops:
                for method in methods:
                    result = _worker(op, method, uri, args.size_mib)
                    results.setdefault((op, method), []).append(result)
                    print(
                        f"  run {run + 1} {op:4} {method:10} {result['wall_s']:.2f}s cpu {result['cpu_s']:.2f}s "
                        f"rss +{result['peak_rss_growth_mib']:.0f} MiB",
                        flush=True,
                    )
    rows = [summarize(runs) for runs in results.values()]
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            **stamp(),
            "server": server,
            "size_mib": args.size_mib,
            "rows": rows,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
