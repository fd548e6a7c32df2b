"""Side by side: s3dcp, s3torchconnector, fsspec/s3fs, raw boto3 and a local disk.

    make bench                                           # everything, 1 GiB, 3 runs (its own venv)
    .venv-bench/bin/python benchmarks/compare.py --size-mib 64 --runs 1 --out /tmp/quick.json
    .venv-bench/bin/python benchmarks/compare.py --server sink --scheme https --methods s3dcp,boto3-raw
    .venv-bench/bin/python benchmarks/compare.py --scaling --max-mib 4096
    .venv-bench/bin/python benchmarks/compare.py --server wan --workload one-tensor --parallel 2 --no-partial

Servers, all on 127.0.0.1 and started here:
  moto  moto's S3 server behind a counting forwarder (s3dcp_testkit.forwarder); with
        HTTPS the forwarder also terminates TLS. Saves and loads.
  sink  s3dcp_testkit.null_sink, which reads and drops every upload: the client's
        ceiling on this machine. Saves only.
  local DCP's FileSystemWriter/Reader on a temporary directory (method local-fs):
        no network at all, measured once whatever --server/--scheme say.
  wan   (only when asked: --server wan) s3dcp_testkit.wan's emulator of a distant S3 in
        front of s3dcp_testkit.memory_store (--wan-store moto: moto; sink: the null
        sink, saves only): first-byte
        latency (--latency-ms, --complete-latency-ms) and MB/s per connection
        (--conn-mbps) and in all (--total-mbps); its tables add the requests in flight.

HTTPS uses a throwaway CA made with the openssl command; the workers trust it
through AWS_CA_BUNDLE (boto3, s3dcp, s3fs) and SSL_CERT_FILE (the AWS CRT
under s3torchconnector).

Every measurement is a fresh worker process (client CPU = its user+sys, peak
RSS growth from just before the operation); methods alternate A B C A B C;
each save goes to a new path (deleted from moto afterwards, untimed); loads
read a checkpoint stored once beforehand and are checked bit for bit. HTTP
requests and body bytes are counted by the forwarder or the sink, per worker.
The partial load reads only the ``model.*`` tensors of that checkpoint and
compares the bytes fetched with the bytes those items occupy (from the
checkpoint's own metadata).

``--workload`` picks the state dict (workload.py): ``mixed`` (the default,
``build_state_dict``: big tensors of mixed dtypes, 4 MiB ones, small ones and a
few plain values) or ``one-tensor`` (one float32 tensor of --size-mib MiB,
``build_one_tensor``; the partial load is skipped: there is no part of it to
load alone).

``--parallel N`` (1) starts N workers at once for every measurement (same
method, same op), each with its own path: its own save path, or its own
stored checkpoint (prepared beforehand, N at once), like the ranks of a job.
Each builds its state dict and reports READY; the driver then lets them all go
together and waits for all. The rows give the median worker's wall time, CPU
and peak RSS growth, MB/s per worker (the median of the N) and aggregate MB/s
(all N workers' bytes over the time from the first start to the last end);
HTTP requests, connections and requests in flight are counted for all N
together. The partial load is always one worker. The point: N ranks at once
should not be worse per rank than one.

With ``--warm`` each worker first does the same kind of operation once,
unmeasured and uncounted (a save of a 64 MiB state dict to another path, or
``--warm-mib`` MiB, or the same load), and then measures a second one: the
steady state of a training job, whose first checkpoint alone pays for
building clients and threads (and, at ``--warm-mib`` = ``--size-mib``, for
s3dcp's finding its requests in flight). Peak RSS growth then leaves out what the first operation kept
(s3dcp's part buffers, for one), so compare memory on the default runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from transfer import check_loaded, measure

from s3dcp_testkit.wan import add_options

HERE = Path(__file__).resolve().parent

MIB = 1024 * 1024
ALL_METHODS = ["s3dcp", "s3dcp-unsigned", "s3torchconnector", "fsspec-s3fs", "boto3-raw", "local-fs"]
DEFAULT_METHODS = [m for m in ALL_METHODS if m != "s3dcp-unsigned"]  # that one on request only
DCP_METHODS = {"s3dcp", "s3dcp-unsigned", "s3torchconnector", "fsspec-s3fs", "local-fs"}
PARTIAL_PREFIX = "model."
WARM_UP_MIB = 64
READY = "READY"  # a worker's line: set-up (and any warm-up) done, waiting for the driver's start signal
BUCKET = "bench"
CA_NOT_TRUSTED = "n/a (cannot trust a self-signed CA)"
WORKLOADS = {  # workload.WORKLOADS's keys (workload.py imports torch: the driver does not)
    "mixed": "mixed state dict (big tensors of mixed dtypes, 4 MiB ones, small ones, a few plain values)",
    "one-tensor": "one float32 tensor",
}


# -- worker side --------------------------------------------------------------------
def _needed_bytes(method: Any, uri: str) -> dict[str, int]:
    """Bytes the checkpoint's metadata says its items occupy: all, and the ``model.*`` ones."""
    storage = method.reader(uri).read_metadata().storage_data
    return {
        "stored_bytes": sum(info.length for info in storage.values()),
        "model_bytes": sum(info.length for index, info in storage.items() if index.fqn.startswith(PARTIAL_PREFIX)),
    }


def run_worker(
    op: str,
    method_name: str,
    target: str,
    size_mib: int,
    warm: bool = False,
    workload: str = "mixed",
    warm_mib: int = WARM_UP_MIB,
) -> dict[str, Any]:
    """One operation; prints READY and waits for a line on stdin first (the driver's start signal,
    given to all of a measurement's workers at once, after any warm-up)."""
    import torch
    from methods import METHODS
    from workload import build, tensor_bytes

    def zero(values: dict[str, Any]) -> None:
        for value in values.values():
            if isinstance(value, torch.Tensor):
                value.zero_()

    method = METHODS[method_name](f"s3://{BUCKET}/unused")
    state = build(workload, size_mib)
    if op in ("load", "partial"):
        if op == "partial":
            state = {k: v for k, v in state.items() if k.startswith(PARTIAL_PREFIX)}
        zero(state)
    if warm and op != "prepare":
        if op == "save":
            method.save(build(workload, warm_mib, seed=1), target + "-warm-up")
            method.cleanup(target + "-warm-up")
        else:
            method.load(state, target)
            zero(state)
    print(READY, flush=True)
    sys.stdin.readline()  # every worker is ready; the driver has taken the counts so far
    if op == "prepare":
        method.save(state, target)
        return _needed_bytes(method, target) if method_name in DCP_METHODS else {}
    started = time.time()  # the wall clock, comparable between the workers of one measurement
    wall, cpu, peak_growth = measure(lambda: method.save(state, target) if op == "save" else method.load(state, target))
    ended = time.time()
    if op == "save":
        method.cleanup(target)
    else:
        check_loaded(state, size_mib, method_name, workload)
    return {
        "method": method_name,
        "op": op,
        "bytes": tensor_bytes(state),
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_growth_mib": peak_growth,
        "started": started,
        "ended": ended,
    }


# -- driver side --------------------------------------------------------------------
@dataclass
class Target:
    """Where workers send their requests, and who counts them."""

    server: str  # moto | rgw | sink | wan | local
    scheme: str  # http | https | -
    endpoint: str | None = None
    counts: Any = None
    env: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] | None = None  # for this server only (RGW has its own keys)
    admin: dict[str, str] | None = None  # boto3.client kwargs reaching the store directly (uncounted)
    in_flight: Any = None  # the WAN emulator's s3dcp_testkit.wan.InFlight

    @property
    def label(self) -> str:
        return self.server if self.server == "local" else f"{self.server} {self.scheme}"


def _workers(
    target: Target,
    op: str,
    method: str,
    uris: list[str],
    size_mib: int,
    warm: bool = False,
    workload: str = "mixed",
    warm_mib: int = WARM_UP_MIB,
) -> dict[str, Any]:
    """One measurement: a fresh process per URI, all started at once; ``{"error": ...}`` instead of raising.

    Each worker builds its state dict (and warms up, with ``warm``), prints READY and
    waits; when all are ready the driver takes the counts so far and lets them all go.
    The counts taken after the last one ends (requests, bytes, requests in flight) are
    of all the workers together. Returns the median worker's figures (``wall_s``,
    ``cpu_s``, ``peak_rss_growth_mib``, ``bytes``: per worker), ``mb_per_s`` (the
    median of the workers'), ``aggregate_mb_per_s`` (all bytes over the span from the
    first start to the last end) and every worker's own figures in ``workers``.
    """
    env = dict(os.environ, **target.env)
    warm = warm and op in ("save", "load", "partial")
    timeout = (120 + size_mib * len(uris) // 2) * (2 if warm else 1)
    deadline = time.monotonic() + timeout
    processes: list[tuple[subprocess.Popen[str], Any]] = []
    outputs: list[str] = []
    try:
        for uri in uris:
            command = [sys.executable, __file__, "--worker", op, "--method", method, "--target", uri]
            command += ["--size-mib", str(size_mib), "--workload", workload]
            command += ["--warm", "--warm-mib", str(warm_mib)] if warm else []
            # stderr to a file: a pipe nobody reads during the set-up could fill and stall the worker
            errors = tempfile.TemporaryFile(mode="w+")
            processes.append(
                (
                    subprocess.Popen(
                        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True, env=env
                    ),
                    errors,
                )
            )
        for worker, _ in processes:
            assert worker.stdout is not None
            while (line := worker.stdout.readline()) and line.strip() != READY:
                pass  # the worker's set-up (and warm-up), unmeasured (its chatter is not the result)
        time.sleep(0.05)  # as below: answers sent just before READY are recorded
        if target.counts is not None:
            target.counts.take()
        if target.in_flight is not None:
            target.in_flight.take()
        for worker, _ in processes:
            assert worker.stdin is not None
            if worker.poll() is None:
                try:
                    worker.stdin.write("\n")
                    worker.stdin.flush()
                except BrokenPipeError:
                    pass  # it died in its set-up: its exit status and stderr say why
        for worker, _ in processes:
            outputs.append(worker.communicate(timeout=max(deadline - time.monotonic(), 1))[0])
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    finally:
        stderrs = []
        for worker, errors in processes:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
            errors.seek(0)
            stderrs.append(errors.read())
            errors.close()
    time.sleep(0.05)  # let a server thread finish recording an answer sent just before the worker exited
    if target.in_flight is not None:
        target.in_flight.wait_idle(5)  # an answer's last byte can reach the worker before it is counted out
    counts = target.counts.take() if target.counts is not None else {}
    in_flight = target.in_flight.take() if target.in_flight is not None else None
    for (worker, _), stderr in zip(processes, stderrs, strict=True):
        if worker.returncode != 0:
            return {"error": _explain_failure(target, method, stderr), "stderr": stderr[-4000:]}
    results: list[dict[str, Any]] = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    answer = dict(results[0])
    if op != "prepare":
        answer.pop("started"), answer.pop("ended")
        span = max(r["ended"] for r in results) - min(r["started"] for r in results)
        answer.update(
            parallel=len(results),
            wall_s=statistics.median(r["wall_s"] for r in results),
            cpu_s=statistics.median(r["cpu_s"] for r in results),
            peak_rss_growth_mib=statistics.median(r["peak_rss_growth_mib"] for r in results),
            mb_per_s=statistics.median(r["bytes"] / 1e6 / r["wall_s"] for r in results),
            aggregate_mb_per_s=sum(r["bytes"] for r in results) / 1e6 / span,
            span_s=span,
            workers=[
                {k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_growth_mib", "started", "ended")} for r in results
            ],
        )
    if target.counts is not None:
        answer["requests"] = counts.get("requests", 0)
        answer["request_body_bytes"] = counts.get("request_body_bytes", 0)
        answer["response_body_bytes"] = counts.get("response_body_bytes", 0)
        answer["get_response_bytes"] = counts.get("response_bytes:GET", 0) + counts.get("response_bytes:GetObject", 0)
        answer["requests_by_op"] = {k[3:]: v for k, v in counts.items() if k.startswith("op:")}
    if in_flight is not None:
        answer["connections"] = counts.get("connections", 0)
        answer["in_flight_mean"] = in_flight["in_flight_mean"]
        answer["in_flight_max"] = in_flight["in_flight_max"]
    return answer


def _explain_failure(target: Target, method: str, stderr: str) -> str:
    tls_words = ("TLS", "SSL", "certificate", "CERTIFICATE")
    if target.scheme == "https" and any(word in stderr for word in tls_words):
        return CA_NOT_TRUSTED if method == "s3torchconnector" else "n/a (TLS failed: " + _last_line(stderr) + ")"
    return "failed: " + _last_line(stderr)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def summarize(runs: list[dict[str, Any]], target: Target, size_mib: int) -> dict[str, Any]:
    first = runs[0]
    gib = first["bytes"] / 1024**3
    walls = [r["wall_s"] for r in runs]  # each run's median worker's
    every_wall = [w["wall_s"] for r in runs for w in r["workers"]]  # min-max: over the workers too
    row: dict[str, Any] = {
        "server": target.server,
        "scheme": target.scheme,
        "method": first["method"],
        "op": first["op"],
        "size_mib": size_mib,
        "runs": len(runs),
        "gib": round(gib, 3),
        "wall_s": round(statistics.median(walls), 3),
        "wall_min_s": round(min(every_wall), 3),
        "wall_max_s": round(max(every_wall), 3),
        "parallel": first["parallel"],
        "mb_per_s": round(statistics.median(r["mb_per_s"] for r in runs), 1),  # per worker
        "aggregate_mb_per_s": round(statistics.median(r["aggregate_mb_per_s"] for r in runs), 1),
        "cpu_s_per_gib": round(statistics.median(r["cpu_s"] for r in runs) / gib, 3),
        "peak_rss_growth_mib": round(statistics.median(r["peak_rss_growth_mib"] for r in runs), 1),
    }
    if "requests" in first:
        row["requests"] = statistics.median(r["requests"] for r in runs)
        row["request_body_mib"] = round(statistics.median(r["request_body_bytes"] for r in runs) / MIB, 1)
        row["response_body_mib"] = round(statistics.median(r["response_body_bytes"] for r in runs) / MIB, 1)
        row["requests_by_op"] = first["requests_by_op"]
    if "in_flight_mean" in first:  # the WAN emulator's: time-weighted over each run's active span
        row["in_flight_mean"] = round(statistics.median(r["in_flight_mean"] for r in runs), 1)
        row["in_flight_max"] = max(r["in_flight_max"] for r in runs)
        row["connections"] = statistics.median(r["connections"] for r in runs)
    return row


def failed_row(target: Target, method: str, op: str, size_mib: int, error: str) -> dict[str, Any]:
    return {
        "server": target.server,
        "scheme": target.scheme,
        "method": method,
        "op": op,
        "size_mib": size_mib,
        "error": error,
    }


RATIO_KEYS = ("wall_s", "mb_per_s", "aggregate_mb_per_s", "cpu_s_per_gib", "peak_rss_growth_mib", "requests")


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each metric divided by s3dcp's for the same server, scheme, op and size."""
    reference = {
        (r["server"], r["scheme"], r["op"], r["size_mib"]): r
        for r in rows
        if r["method"] == "s3dcp" and "error" not in r
    }
    for row in rows:
        base = reference.get((row["server"], row["scheme"], row["op"], row["size_mib"]))
        if base is None and row["server"] == "local":  # local disk: against s3dcp on moto (HTTP if measured)
            for scheme in ("http", "https"):
                base = base or reference.get(("moto", scheme, row["op"], row["size_mib"]))
        if base is None or "error" in row:
            continue
        row["vs_s3dcp"] = {
            key: round(row[key] / base[key], 2) for key in RATIO_KEYS if key in row and key in base and base[key]
        }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[dict[str, Any]] = []
        self.partial: list[dict[str, Any]] = []
        self.scaling: list[dict[str, Any]] = []
        self.raw: list[dict[str, Any]] = []
        self.needed: dict[tuple[str, str, int], dict[str, int]] = {}
        self.load_at_start = [round(x, 2) for x in os.getloadavg()]

    def log(self, text: str) -> None:
        print(text, flush=True)

    def _delete_prefix(self, target: Target, prefix: str) -> None:
        """Drop saved checkpoints from a store that keeps them (straight to it, so nothing is counted)."""
        if target.admin is None:
            return
        import boto3

        client = boto3.client("s3", **target.admin)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})

    def uri(self, target: Target, method: str, what: str, size_mib: int) -> str:
        if target.server == "local":
            return str(Path(target.env["S3DCP_BENCH_LOCAL_DIR"]) / f"{method}-{size_mib}-{what}")
        return f"s3://{BUCKET}/{target.scheme}/{method}-{size_mib}/{what}"

    def uris(self, target: Target, method: str, what: str, size_mib: int) -> list[str]:
        """One path per worker of a measurement (``--parallel``): ``what``, or ``what-w0``, ``what-w1``, ..."""
        n = self.args.parallel
        return [self.uri(target, method, what if n == 1 else f"{what}-w{i}", size_mib) for i in range(n)]

    def _note(self, target: Target, op: str, method: str, result: dict[str, Any], run: int | None = None) -> None:
        where = f"{target.label:10} {op:7} {method:16}"
        if "error" in result:
            self.log(f"  {where} {result['error']}")
            if result.get("stderr") and self.args.verbose:
                self.log(result["stderr"])
            return
        requests = f" {result['requests']} req" if "requests" in result else ""
        workers = ""
        if result.get("parallel", 1) > 1:
            workers = (
                f" ({result['parallel']} workers: median; {result['mb_per_s']:.0f} MB/s each, "
                f"{result['aggregate_mb_per_s']:.0f} MB/s in all)"
            )
        self.log(
            f"  {f'run {run + 1} ' if run is not None else ''}{where} {result['wall_s']:.2f}s "
            f"cpu {result['cpu_s']:.2f}s rss +{result['peak_rss_growth_mib']:.0f} MiB{requests}{workers}"
        )

    def measure(
        self, target: Target, methods: list[str], ops: list[str], size_mib: int, runs: int, partial: bool
    ) -> list[dict[str, Any]]:
        """Prepare, then ``runs`` rounds of every op and method in turn; returns summary rows.

        Each measurement is ``--parallel`` workers at once, each with its own save path or its
        own stored checkpoint (prepared beforehand); the partial load is one worker."""
        failed: dict[str, str] = {}
        workload = self.args.workload
        partial = partial and workload == "mixed"  # one tensor has no part to load alone
        if "load" in ops or partial:
            for method in methods:
                result = _workers(
                    target, "prepare", method, self.uris(target, method, "ref", size_mib), size_mib, workload=workload
                )
                if "error" in result:
                    failed[method] = result["error"]
                    self._note(target, "prepare", method, result)
                elif method in DCP_METHODS:
                    self.needed[(target.label, method, size_mib)] = result
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for run in range(runs):
            for op in ops:
                for method in methods:
                    if method in failed:
                        continue
                    uris = self.uris(target, method, "ref" if op == "load" else f"save-{run}", size_mib)
                    result = _workers(target, op, method, uris, size_mib, self.args.warm, workload, self.args.warm_mib)
                    self._note(target, op, method, result, run)
                    if op == "save":
                        for uri in uris:  # no trailing "/": boto3-raw's object is the path + ".bin"
                            self._delete_prefix(target, uri[len(f"s3://{BUCKET}/") :])
                    if "error" in result:
                        failed[method] = result["error"]
                        continue
                    self.raw.append(
                        dict(result, server=target.server, scheme=target.scheme, run=run + 1, size_mib=size_mib)
                    )
                    results.setdefault((op, method), []).append(result)
        rows = [summarize(runs_, target, size_mib) for runs_ in results.values()]
        for method, error in failed.items():
            for op in ops:
                if (op, method) not in results:
                    rows.append(failed_row(target, method, op, size_mib, error))
        if partial:
            for method in methods:
                if method not in DCP_METHODS or method in failed:
                    continue
                ref = self.uris(target, method, "ref", size_mib)[:1]  # one worker, reading the first one's
                result = _workers(
                    target, "partial", method, ref, size_mib, self.args.warm, workload, self.args.warm_mib
                )
                self._note(target, "partial", method, result)
                self.partial.append(self._partial_row(target, method, size_mib, result))
        self._delete_prefix(target, f"{target.scheme}/")
        return rows

    def _partial_row(self, target: Target, method: str, size_mib: int, result: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {"server": target.server, "scheme": target.scheme, "method": method, "size_mib": size_mib}
        if "error" in result:
            return dict(row, error=result["error"])
        needed = self.needed.get((target.label, method, size_mib), {})
        row.update(
            wall_s=round(result["wall_s"], 3),
            cpu_s=round(result["cpu_s"], 3),
            peak_rss_growth_mib=round(result["peak_rss_growth_mib"], 1),
            tensor_mib=round(result["bytes"] / MIB, 1),
            needed_mib=round(needed.get("model_bytes", 0) / MIB, 1),
            checkpoint_mib=round(needed.get("stored_bytes", 0) / MIB, 1),
        )
        if "requests" in result:
            row["fetched_mib"] = round(result["get_response_bytes"] / MIB, 1)
            row["requests"] = result["requests"]
            if needed.get("model_bytes"):
                row["fetched_over_needed"] = round(result["get_response_bytes"] / needed["model_bytes"], 2)
        return row

    def run(self) -> None:
        args = self.args
        methods = [m for m in ALL_METHODS if m in args.methods.split(",")]
        unknown = set(args.methods.split(",")) - set(ALL_METHODS)
        if unknown:
            raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {ALL_METHODS}")
        servers = {"both": ["moto", "sink"], "all": ["moto", "rgw", "sink"]}.get(args.server, [args.server])
        wan_stores_bytes = args.wan_store in ("moto", "memory")
        schemes = ["http", "https"] if args.scheme == "both" else [args.scheme]
        remote = [m for m in methods if m != "local-fs"]
        ops = args.ops.split(",")
        credentials = {
            "AWS_ACCESS_KEY_ID": "s3dcp-bench-access-key",
            "AWS_SECRET_ACCESS_KEY": "s3dcp-bench-secret-key",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        with ExitStack() as stack:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s3dcp-bench-")))
            local_dir = scratch / "local"
            local_dir.mkdir()
            tls = None
            ca_file = ""
            if "https" in schemes:
                from s3dcp_testkit.certificates import make_certificate

                made = make_certificate(scratch / "tls")
                tls, ca_file = (made.cert, made.key), str(made.ca)
            targets: list[Target] = []
            if remote and ("moto" in servers or args.scaling):
                from s3dcp_testkit.forwarder import CountingForwarder
                from s3dcp_testkit.moto_server import MotoServer

                moto = stack.enter_context(MotoServer())
                import boto3

                os.environ.update(credentials)
                boto3.client("s3", endpoint_url=moto.endpoint_url).create_bucket(Bucket=BUCKET)
                for scheme in schemes:
                    forwarder = stack.enter_context(
                        CountingForwarder(moto.endpoint_url, tls if scheme == "https" else None)
                    )
                    targets.append(
                        Target(
                            "moto",
                            scheme,
                            forwarder.endpoint_url,
                            forwarder.counts,
                            admin={"endpoint_url": moto.endpoint_url},
                        )
                    )
            if remote and "rgw" in servers:
                import boto3

                from s3dcp_testkit import ceph_rgw
                from s3dcp_testkit.forwarder import CountingForwarder

                rgw_dir = scratch / "rgw"
                stack.callback(ceph_rgw.stop, rgw_dir)
                values = ceph_rgw.start(rgw_dir)
                http_url = values["S3DCP_RGW_HTTP_ENDPOINT"]
                keys = {
                    "aws_access_key_id": values["S3DCP_RGW_ACCESS_KEY"],
                    "aws_secret_access_key": values["S3DCP_RGW_SECRET_KEY"],
                }
                admin = {"endpoint_url": http_url, "region_name": "us-east-1", **keys}
                boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
                # boto3 >= 1.36 (boto3-raw, s3fs through aiobotocore) otherwise sends aws-chunked
                # bodies with trailing checksums, which this RGW refuses; the documented switch
                rgw_credentials = dict(
                    credentials,
                    AWS_ACCESS_KEY_ID=keys["aws_access_key_id"],
                    AWS_SECRET_ACCESS_KEY=keys["aws_secret_access_key"],
                    AWS_REQUEST_CHECKSUM_CALCULATION="when_required",
                )
                for scheme in schemes:
                    # like moto: TLS (our throwaway CA) ends at the forwarder, which counts requests
                    forwarder = stack.enter_context(CountingForwarder(http_url, tls if scheme == "https" else None))
                    targets.append(
                        Target(
                            "rgw",
                            scheme,
                            forwarder.endpoint_url,
                            forwarder.counts,
                            credentials=rgw_credentials,
                            admin=admin,
                        )
                    )
            if remote and "wan" in servers:
                import boto3

                from s3dcp_testkit.memory_store import MemoryStore
                from s3dcp_testkit.moto_server import MotoServer
                from s3dcp_testkit.null_sink import NullSink
                from s3dcp_testkit.wan import WanEmulator, settings_from

                store_server = {"moto": MotoServer, "memory": MemoryStore, "sink": NullSink}[args.wan_store]()
                store_url: str = stack.enter_context(store_server).endpoint_url
                wan_admin = {"endpoint_url": store_url} if wan_stores_bytes else None
                if wan_stores_bytes:
                    os.environ.update(credentials)
                    boto3.client("s3", endpoint_url=store_url).create_bucket(Bucket=BUCKET)
                for scheme in schemes:
                    wan = stack.enter_context(
                        WanEmulator(store_url, settings_from(args), tls if scheme == "https" else None)
                    )
                    targets.append(
                        Target("wan", scheme, wan.endpoint_url, wan.counts, admin=wan_admin, in_flight=wan.in_flight)
                    )
            if remote and "sink" in servers:
                from s3dcp_testkit.null_sink import NullSink

                for scheme in schemes:
                    sink = stack.enter_context(NullSink(tls if scheme == "https" else None))
                    targets.append(Target("sink", scheme, sink.endpoint_url, sink.counts))
            for target in targets:
                target.env = dict(
                    target.credentials or credentials,
                    AWS_ENDPOINT_URL=target.endpoint or "",
                    AWS_ENDPOINT_URL_S3=target.endpoint or "",
                    S3DCP_BENCH_LOCAL_DIR=str(local_dir),
                )
                if target.scheme == "https":  # boto3/s3dcp/s3fs read AWS_CA_BUNDLE, the AWS CRT SSL_CERT_FILE
                    target.env.update(AWS_CA_BUNDLE=ca_file, SSL_CERT_FILE=ca_file)
            local = Target("local", "-", env=dict(credentials, S3DCP_BENCH_LOCAL_DIR=str(local_dir)))

            self.log(
                f"{args.size_mib} MiB, {args.runs} runs, methods {methods}, "
                f"targets {[t.label for t in targets] + (['local'] if 'local-fs' in methods else [])}"
            )
            for target in targets:
                if target.server == "moto" and "moto" not in servers:
                    continue  # started for --scaling only
                keeps_bytes = target.server in ("moto", "rgw") or (target.server == "wan" and wan_stores_bytes)
                target_ops = ops if keeps_bytes else [op for op in ops if op == "save"]
                self.log(f"{target.label}: {target.endpoint}")
                self.rows += self.measure(
                    target,
                    remote,
                    target_ops,
                    args.size_mib,
                    args.runs,
                    partial=args.partial and (target.server == "moto" or (target.server == "wan" and wan_stores_bytes)),
                )
            if "local-fs" in methods:
                self.log(f"local: {local_dir}")
                self.rows += self.measure(local, ["local-fs"], ops, args.size_mib, args.runs, partial=args.partial)
                shutil.rmtree(local_dir, ignore_errors=True)
                local_dir.mkdir()
            if args.scaling:
                self.run_scaling(targets, local)
        add_ratios(self.rows)
        add_ratios(self.scaling)

    def run_scaling(self, targets: list[Target], local: Target) -> None:
        args = self.args
        sizes = [s for s in (64, 256, 1024, 4096) if s <= args.max_mib]
        methods = [m for m in ALL_METHODS if m in (args.scaling_methods or args.methods).split(",")]
        moto = next((t for t in targets if t.server == "moto"), None)
        for size in sizes:
            for target, group in ((moto, [m for m in methods if m != "local-fs"]), (local, ["local-fs"])):
                group = [m for m in group if m in methods]
                if target is None or not group:
                    continue
                reused = [
                    r
                    for r in self.rows
                    if r["server"] == target.server
                    and r["scheme"] == target.scheme
                    and r["size_mib"] == size
                    and r["method"] in group
                    and ("error" in r or r["runs"] >= args.scaling_runs)
                ]
                if {(r["method"], r["op"]) for r in reused} >= {(m, op) for m in group for op in ("save", "load")}:
                    self.scaling += [dict(r) for r in reused if r["op"] in ("save", "load")]
                    continue
                self.log(f"scaling {size} MiB on {target.label}")
                self.scaling += self.measure(target, group, ["save", "load"], size, args.scaling_runs, partial=False)

    def report(self) -> dict[str, Any]:
        versions = {}
        for name in (
            "torch",
            "s3dcp",
            "boto3",
            "botocore",
            "s3torchconnector",
            "s3torchconnectorclient",
            "s3fs",
            "aiobotocore",
            "fsspec",
            "moto",
        ):
            try:
                versions[name] = package_metadata.version(name)
            except package_metadata.PackageNotFoundError:
                pass
        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {
                "platform": platform.platform(),
                "machine": platform.machine(),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_at_start": self.load_at_start,
            },
            "versions": versions,
            "s3dcp_source": _git_state(),
            "settings": {
                "size_mib": self.args.size_mib,
                "runs": self.args.runs,
                "server": self.args.server,
                "scheme": self.args.scheme,
                "methods": self.args.methods,
                "scaling_runs": self.args.scaling_runs,
                "warm": self.args.warm,
                "warm_mib": self.args.warm_mib if self.args.warm else None,
                "workload": self.args.workload,
                "parallel": self.args.parallel,
                **(
                    {
                        "wan": {
                            "store": self.args.wan_store,
                            "latency_ms": self.args.latency_ms,
                            "complete_latency_ms": self.args.complete_latency_ms,
                            "conn_mbps": self.args.conn_mbps or None,
                            "total_mbps": self.args.total_mbps or None,
                        }
                    }
                    if self.args.server == "wan"
                    else {}
                ),
            },
            "servers": {
                "moto": "moto S3 server (one process) behind s3dcp_testkit.forwarder's counting forwarder; "
                "HTTPS terminates at the forwarder",
                "rgw": "Ceph RGW 16 (s3dcp_testkit.ceph_rgw: one mon, one memstore OSD, radosgw beast) "
                "behind the counting forwarder; HTTPS terminates at the forwarder",
                "sink": "s3dcp_testkit.null_sink in the driver process: takes uploads, stores nothing",
                "local": "FileSystemWriter/Reader on a temporary directory (page cache, no fsync)",
                "wan": "s3dcp_testkit.wan in the driver process (first-byte latency per operation, MB/s per "
                "connection and in all) in front of the in-memory store, moto or the null sink (settings.wan.store); "
                "HTTPS terminates at the emulator",
            },
            "rows": self.rows,
            "partial_load": self.partial,
            "scaling": self.scaling,
            "runs_raw": self.raw,
        }


def _git_state() -> str:
    """The commit s3dcp was measured at, and whether its sources had uncommitted changes.

    Taken from the checkout the imported ``s3dcp`` comes from, which ``PYTHONPATH`` may point
    at another one (to measure an older commit with this harness).
    """
    import s3dcp

    checkout = Path(s3dcp.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "s3dcp"], cwd=checkout, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with uncommitted changes in s3dcp/" if dirty else "")


# -- output -------------------------------------------------------------------------
def _ratio(row: dict[str, Any], key: str) -> str:
    ratio = row.get("vs_s3dcp", {}).get(key)
    return "" if ratio is None or row["method"] == "s3dcp" else f" ({ratio:.2f}x)"


def _main_table(rows: list[dict[str, Any]]) -> list[str]:
    in_flight = any("in_flight_mean" in r for r in rows)  # the WAN emulator's tables only
    n = max((r.get("parallel", 1) for r in rows), default=1)  # --parallel: per worker, and in all
    if n > 1:
        figures = f"wall s per worker median (min-max of all workers) | MB/s per worker (median of {n}) "
        figures += f"| aggregate MB/s ({n} at once) | client CPU s/GiB per worker | peak RSS growth MiB per worker "
        figures += f"| HTTP requests (all {n}) |"
    else:
        figures = "wall s median (min-max) | MB/s | client CPU s/GiB | peak RSS growth MiB | HTTP requests |"
    columns = 5 + (n > 1) + 2 * in_flight
    lines = [
        "| op | method | " + figures + (" requests in flight mean (max) | connections |" if in_flight else ""),
        "| --- | --- |" + " --- |" * columns,
    ]
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    for r in sorted(rows, key=lambda r: (r["op"] != "save", order.get(r["method"], 99))):
        if "error" in r:
            lines.append(f"| {r['op']} | {r['method']} | {r['error']} |" + " |" * (columns - 1))
            continue
        requests = f"{r['requests']:.0f}{_ratio(r, 'requests')}" if "requests" in r else "-"
        aggregate = f" {r['aggregate_mb_per_s']:.0f}{_ratio(r, 'aggregate_mb_per_s')} |" if n > 1 else ""
        lines.append(
            f"| {r['op']} | {r['method']} | {r['wall_s']:.2f} ({r['wall_min_s']:.2f}-{r['wall_max_s']:.2f}){_ratio(r, 'wall_s')} "
            f"| {r['mb_per_s']:.0f}{_ratio(r, 'mb_per_s')} |{aggregate} {r['cpu_s_per_gib']:.2f}{_ratio(r, 'cpu_s_per_gib')} "
            f"| {r['peak_rss_growth_mib']:.0f}{_ratio(r, 'peak_rss_growth_mib')} | {requests} |"
            + (
                f" {r['in_flight_mean']:.1f} ({r['in_flight_max']:.0f}) | {r['connections']:.0f} |"
                if "in_flight_mean" in r
                else " - | - |"
                if in_flight
                else ""
            )
        )
    return lines


TITLES = {
    ("moto", "http"): "moto over HTTP (through the counting forwarder)",
    ("moto", "https"): "moto over HTTPS (TLS ends at the counting forwarder)",
    ("rgw", "http"): "Ceph RGW 16 over HTTP (through the counting forwarder)",
    ("rgw", "https"): "Ceph RGW 16 over HTTPS (TLS ends at the counting forwarder)",
    ("sink", "http"): "null sink over HTTP (client ceiling; saves only)",
    ("sink", "https"): "null sink over HTTPS (client ceiling; saves only)",
    ("local", "-"): "local disk: FileSystemWriter/Reader, no network (ratios against s3dcp on moto)",
    ("wan", "http"): "WAN emulator over HTTP",
    ("wan", "https"): "WAN emulator over HTTPS (TLS ends at the emulator)",
}


def _wan_title(title: str, settings: dict[str, Any]) -> str:
    wan = settings.get("wan")
    if not wan:
        return title
    rates = f"{wan['conn_mbps'] or 'unlimited'} MB/s per connection, {wan['total_mbps'] or 'unlimited'} in all"
    return (
        f"{title}: {wan['latency_ms']:g} ms to first byte ({wan['complete_latency_ms']:g} ms for "
        f"CompleteMultipartUpload), {rates}, in front of {wan['store']}; requests in flight: time-weighted "
        "mean over each run's active span (max)"
    )


def _workload_title(settings: dict[str, Any]) -> str:
    """The size and kind of state dict."""
    workload = settings.get("workload", "mixed")
    return f"{settings['size_mib']} MiB {WORKLOADS[workload]} (--workload {workload})"


def _parallel_note(settings: dict[str, Any]) -> str:
    n = settings.get("parallel", 1)
    if n == 1:
        return ""
    return (
        f"; **{n} workers at once** per measurement (--parallel {n}), each with its own save path or stored "
        "checkpoint: per-worker figures are the median worker's (MB/s: the median of the workers'), aggregate "
        f"MB/s = all {n} workers' bytes / first start to last end, HTTP requests and requests in flight are of "
        f"all {n} together"
    )


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    out = [
        f"{report['date']}, {machine['machine']}, {machine['cores']} cores (shared by client and server), "
        f"Python {machine['python']}, {_workload_title(report['settings'])}, "
        f"median of {report['settings']['runs']} runs; (Nx) = this method / s3dcp"
        + _parallel_note(report["settings"])
        + (
            "; **warm**: each figure is a process's second operation (after an unmeasured, uncounted one"
            + (f"; a save's of {report['settings']['warm_mib']} MiB" if report["settings"].get("warm_mib") else "")
            + "), so peak RSS growth leaves out what the first kept"
            if report["settings"].get("warm")
            else ""
        ),
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in report["rows"]:
        groups.setdefault((row["server"], row["scheme"]), []).append(row)
    for key in sorted(groups, key=lambda k: list(TITLES).index(k) if k in TITLES else 99):
        title = TITLES.get(key, " ".join(key))
        if key[0] == "wan":
            title = _wan_title(title, report["settings"])
        out += ["", f"**{title}**", ""] + _main_table(groups[key])
    if report["partial_load"]:
        out += [
            "",
            "**Partial load: only the `model.*` tensors** (bytes needed = their items' lengths in the "
            "checkpoint metadata; fetched = GET response bytes counted at the forwarder)",
            "",
            "| server | method | wall s | needed MiB | fetched MiB | fetched / needed | HTTP requests |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in report["partial_load"]:
            where = r["server"] if r["server"] == "local" else f"{r['server']} {r['scheme']}"
            if "error" in r:
                out.append(f"| {where} | {r['method']} | {r['error']} | | | | |")
                continue
            out.append(
                f"| {where} | {r['method']} | {r['wall_s']:.2f} | {r['needed_mib']:.0f} | {r.get('fetched_mib', '-')} "
                f"| {r.get('fetched_over_needed', '-')} | {r.get('requests', '-')} |"
            )
    if report["scaling"]:
        out += [
            "",
            f"**Scaling** (moto, first scheme measured, and local disk; {report['settings']['scaling_runs']} "
            "run(s) per size, the main size's rows reused)",
            "",
            "| size MiB | method | where | save s | save MB/s | save CPU s/GiB | load s | load MB/s | load CPU s/GiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        cells: dict[tuple[int, str, str], dict[str, dict[str, Any]]] = {}
        for r in report["scaling"]:
            where = r["server"] if r["server"] == "local" else f"{r['server']} {r['scheme']}"
            cells.setdefault((r["size_mib"], r["method"], where), {})[r["op"]] = r
        order = {m: i for i, m in enumerate(ALL_METHODS)}
        for (size, method, where), ops in sorted(cells.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
            parts = []
            for op in ("save", "load"):
                r = ops.get(op)
                if r is None or "error" in r:
                    parts += [r["error"] if r else "-", "", ""]
                else:
                    parts += [f"{r['wall_s']:.2f}", f"{r['mb_per_s']:.0f}", f"{r['cpu_s_per_gib']:.2f}"]
            out.append(f"| {size} | {method} | {where} | " + " | ".join(parts) + " |")
    return "\n".join(out)


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "error" not in r]
    labels = []
    for r in report["rows"]:
        label = r["server"] if r["server"] == "local" else f"{r['server']} {r['scheme']}"
        if label not in labels:
            labels.append(label)
    methods = [m for m in ALL_METHODS if any(r["method"] == m for r in report["rows"])]
    figure, axes = plt.subplots(2, 2, figsize=(14, 8.5), constrained_layout=True)
    colors = {label: f"C{i}" for i, label in enumerate(labels)}
    width = 0.8 / max(len(labels), 1)

    def where(r: dict[str, Any]) -> str:
        return r["server"] if r["server"] == "local" else f"{r['server']} {r['scheme']}"

    for col, op in enumerate(("save", "load")):
        for row_index, (metric, unit) in enumerate(
            (("mb_per_s", "MB/s (higher is better)"), ("cpu_s_per_gib", "client CPU s/GiB (lower is better)"))
        ):
            axis = axes[row_index][col]
            legend_done: set[str] = set()
            for m, method in enumerate(methods):  # each method's bars centred on its tick
                present = [
                    r for label in labels for r in rows if r["op"] == op and r["method"] == method and where(r) == label
                ]
                for i, r in enumerate(present):
                    label = where(r)
                    bars = axis.bar(
                        m + (i - (len(present) - 1) / 2) * width,
                        r[metric],
                        width,
                        color=colors[label],
                        label=None if label in legend_done else label,
                    )
                    legend_done.add(label)
                    axis.bar_label(bars, fmt="%.0f" if metric == "mb_per_s" else "%.2f", fontsize=7, padding=1)
            axis.set_xticks(range(len(methods)), methods, fontsize=9)
            axis.set_title(f"{op}: {unit}", fontsize=10)
            axis.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[label]) for label in labels]
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9)
    machine = report["machine"]
    figure.suptitle(
        f"{report['settings']['size_mib']} MiB {report['settings'].get('workload', 'mixed')} state dict, "
        f"{report['settings'].get('parallel', 1)} worker(s) at once (MB/s per worker), "
        f"median of {report['settings']['runs']} runs, "
        f"{machine['cores']} cores, {report['date']} (missing bar: not measured or n/a)",
        fontsize=11,
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--server",
        choices=["moto", "rgw", "sink", "wan", "both", "all"],
        default="both",
        help="both = moto and sink; all = moto, rgw and sink (rgw needs root: it may apt-install Ceph); "
        "wan = the WAN emulator, on request only",
    )
    parser.add_argument("--scheme", choices=["http", "https", "both"], default="both")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from {ALL_METHODS} (default: all but s3dcp-unsigned)",
    )
    parser.add_argument("--ops", default="save,load")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument(
        "--workload",
        choices=list(WORKLOADS),
        default="mixed",
        help="the state dict: mixed (workload.build_state_dict) or one-tensor (one float32 tensor of --size-mib; "
        "no partial load)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="worker processes per measurement, started at once, each with its own path; MB/s per worker "
        "(median) and in all",
    )
    parser.add_argument("--no-partial", dest="partial", action="store_false", help="skip the partial-load case")
    parser.add_argument(
        "--scaling", action="store_true", help="also measure 64, 256, 1024 MiB (4096 with --max-mib 4096)"
    )
    parser.add_argument("--max-mib", type=int, default=1024)
    parser.add_argument("--scaling-methods", help="methods for --scaling (default: --methods)")
    parser.add_argument("--scaling-runs", type=int, default=1)
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results" / "compare.json",
        help="JSON report; the .md table and .png chart go next to it",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="measure each worker's second operation (steady state), after an unmeasured one",
    )
    parser.add_argument(
        "--warm-mib",
        type=int,
        default=WARM_UP_MIB,
        help="with --warm, the size of the unmeasured save (default %(default)s; --size-mib for a job's "
        "next checkpoint of the same size)",
    )
    parser.add_argument("--verbose", action="store_true", help="print a failing worker's stderr")
    wan_options = parser.add_argument_group("--server wan", "the WAN emulator's knobs (s3dcp_testkit.wan)")
    add_options(wan_options)
    wan_options.add_argument(
        "--wan-store",
        choices=["memory", "moto", "sink"],
        default="memory",
        help="what the emulator fronts: moto or s3dcp_testkit.memory_store (faster) keep the bytes (saves and "
        "loads); the null sink keeps nothing (saves only)",
    )
    parser.add_argument("--worker", choices=["prepare", "save", "load", "partial"], help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")

    if args.worker:
        print(
            json.dumps(
                run_worker(
                    args.worker, args.method, args.target, args.size_mib, args.warm, args.workload, args.warm_mib
                )
            )
        )
        return

    bench = Bench(args)
    if bench.load_at_start[0] > 1.0:
        print(
            f"warning: load average {bench.load_at_start} before starting: is another benchmark or test run "
            "going on? It shares the cores with this one.",
            flush=True,
        )
    bench.run()
    report = bench.report()
    table = markdown(report)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table + "\n")
    written = [args.out.name, args.out.with_suffix(".md").name]
    try:
        chart(report, args.out.with_suffix(".png"))
        written.append(args.out.with_suffix(".png").name)
    except ImportError:
        print("no chart: matplotlib is not installed (make bench installs it in .venv-bench)", flush=True)
    print(f"wrote {', '.join(written)} in {args.out.parent}", flush=True)


if __name__ == "__main__":
    main()
