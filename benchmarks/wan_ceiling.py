"""How fast the WAN emulator (s3dcp_testkit.wan) can go on this machine: is it, or its store, the bottleneck?

    python benchmarks/wan_ceiling.py                                  # 32 threads, 256 MiB, HTTP, every store
    python benchmarks/wan_ceiling.py --size-mib 16 --threads 8 --store sink --scheme https

A plain boto3 client (one client, ``--threads`` threads, as many connections)
uploads ``--size-mib`` as the parts of one multipart upload (``--part-mib``
each), completes it, and reads it back in ranged GETs of the part size.
For each store (``sink``: the null sink, which keeps nothing and answers
ranged GETs with zeros; ``memory``: s3dcp_testkit.memory_store, which keeps
the bytes in this process; ``moto``: moto's server, which keeps them in
its own) it does so three times:

  store      straight to the store (no emulator): the store's own ceiling
  relay      through the emulator with no latency and no rate limit: its relaying cost
  emulated   through the emulator with the knobs given (--latency-ms, --conn-mbps, ...)

and prints MB/s for the parts and the GETs, the connections opened and the
requests in flight (mean over the active span, and max) the emulator saw.
The "emulated" rows should come near the "ideal" row (rounds of ``--threads``
requests, each a first-byte wait plus a part at ``--conn-mbps``, capped by
``--total-mbps``) when neither the relay nor the store is slower: where a
"relay" or "store" row is below the ideal, it (or the client, which the
"store" rows of the sink measure) is the bottleneck of a run with those knobs.
Runs in the test venv (boto3, moto, s3dcp_testkit). Timings only: run it on
an idle machine for figures worth keeping.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from s3dcp_testkit.wan import WanEmulator, WanSettings, add_options, settings_from

MIB = 1024 * 1024
BUCKET = "ceiling"
KEY = "object"


def _client(endpoint: str, threads: int, ca: str | None) -> Any:
    import boto3
    import botocore.config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="s3dcp-bench-access-key",
        aws_secret_access_key="s3dcp-bench-secret-key",
        verify=ca or True,
        config=botocore.config.Config(
            max_pool_connections=threads,
            retries={"total_max_attempts": 1},
            request_checksum_calculation="when_required",  # plain bodies: the relay, not aws-chunked framing
            s3={"addressing_style": "path"},
        ),
    )


def _timed(threads: int, jobs: list[Callable[[], int]]) -> tuple[float, int]:
    """Seconds to run ``jobs`` on ``threads`` threads, and the bytes they moved."""
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        moved = sum(pool.map(lambda job: job(), jobs))
    return time.perf_counter() - start, moved


def measure(endpoint: str, args: argparse.Namespace, ca: str | None) -> dict[str, float]:
    """MB/s of the parts of one multipart upload and of ranged GETs of it, ``args.threads`` at a time."""
    client = _client(endpoint, args.threads, ca)
    part: int = args.part_mib * MIB
    count = max(1, args.size_mib // args.part_mib)
    body = os.urandom(part)
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=KEY)["UploadId"]
    etags: dict[int, str] = {}

    def put(number: int) -> int:
        answer = client.upload_part(Bucket=BUCKET, Key=KEY, UploadId=upload_id, PartNumber=number, Body=body)
        etags[number] = answer["ETag"]
        return part

    put_s, put_bytes = _timed(args.threads, [partial(put, n) for n in range(1, count + 1)])
    parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
    client.complete_multipart_upload(Bucket=BUCKET, Key=KEY, UploadId=upload_id, MultipartUpload={"Parts": parts})

    def get(index: int) -> int:
        answer = client.get_object(Bucket=BUCKET, Key=KEY, Range=f"bytes={index * part}-{(index + 1) * part - 1}")
        return len(answer["Body"].read())

    get_s, get_bytes = _timed(args.threads, [partial(get, i) for i in range(count)])
    if get_bytes != put_bytes:
        raise RuntimeError(f"read {get_bytes} bytes back, wrote {put_bytes}")
    client.delete_object(Bucket=BUCKET, Key=KEY)
    return {"put_mb_per_s": put_bytes / 1e6 / put_s, "get_mb_per_s": get_bytes / 1e6 / get_s}


def ideal_mb_per_s(size: int, part: int, threads: int, settings: WanSettings) -> float:
    """What the emulated link allows: rounds of ``threads`` requests, each a first-byte wait plus its part at the connection rate."""
    count = max(1, size // part)
    rounds = -(-count // threads)
    rate = settings.connection_mbps * 1e6 if settings.connection_mbps else float("inf")
    seconds = rounds * (settings.first_byte_ms / 1000 + part / rate)
    ideal = count * part / 1e6 / seconds if seconds > 0 else float("inf")
    return min(ideal, settings.total_mbps or float("inf"))


@contextmanager
def store(kind: str) -> Iterator[str]:
    """A plain-HTTP store's endpoint, with the bucket made."""
    if kind == "memory":
        from s3dcp_testkit.memory_store import MemoryStore

        with MemoryStore() as memory:
            _client(memory.endpoint_url, 1, None).create_bucket(Bucket=BUCKET)
            yield memory.endpoint_url
    elif kind == "moto":
        from s3dcp_testkit.moto_server import MotoServer

        with MotoServer() as moto:
            _client(moto.endpoint_url, 1, None).create_bucket(Bucket=BUCKET)
            yield moto.endpoint_url
    else:
        from s3dcp_testkit.null_sink import NullSink

        with NullSink() as sink:
            yield sink.endpoint_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    parser.add_argument("--threads", type=int, default=32, help="client threads, and so connections (32)")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--part-mib", type=int, default=8, help="part and range size, >= 5 (8)")
    parser.add_argument("--store", choices=["sink", "memory", "moto", "all"], default="all")
    parser.add_argument("--scheme", choices=["http", "https"], default="http")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.part_mib < 5:
        parser.error("--part-mib must be at least 5: S3 (and moto) refuse smaller parts")
    asked = settings_from(args)
    unlimited = WanSettings(first_byte_ms=0, first_byte_ms_by_operation={}, connection_mbps=None, total_mbps=None)
    print(
        f"{args.size_mib} MiB in {args.part_mib} MiB parts and ranges, {args.threads} threads, {args.scheme}; "
        f"emulated: {args.latency_ms:g} ms first byte ({args.complete_latency_ms:g} ms to complete), "
        f"{args.conn_mbps or 'unlimited'} MB/s per connection, {args.total_mbps or 'unlimited'} in all; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print("| store | path | parts MB/s | ranged GETs MB/s | connections | requests in flight mean (max) |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows: list[dict[str, Any]] = []
    best = ideal_mb_per_s(args.size_mib * MIB, args.part_mib * MIB, args.threads, asked)
    print(f"| any | ideal for the emulated rows | {best:.0f} | {best:.0f} | {args.threads} | {args.threads} |")
    with ExitStack() as stack:
        tls, ca = None, None
        if args.scheme == "https":
            from s3dcp_testkit.certificates import make_certificate

            made = make_certificate(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            tls, ca = (made.cert, made.key), str(made.ca)
        for kind in ["sink", "memory", "moto"] if args.store == "all" else [args.store]:
            with store(kind) as upstream:
                paths: list[tuple[str, WanSettings | None]] = [("store", None), ("relay", unlimited)]
                for path, settings in paths + [("emulated", asked)]:
                    if settings is None:
                        if args.scheme == "https":
                            continue  # the stores speak plain HTTP only
                        row: dict[str, Any] = {**measure(upstream, args, None), "connections": "-", "in_flight": "-"}
                    else:
                        with WanEmulator(upstream, settings, tls) as wan:
                            row = {**measure(wan.endpoint_url, args, ca)}
                            wan.in_flight.wait_idle(30)
                            # the counts cover the setup requests too (CreateMultipartUpload, Complete, Delete)
                            flight = wan.in_flight.take()
                            row.update(
                                connections=wan.counts.take().get("connections", 0),
                                in_flight=f"{flight['in_flight_mean']:.1f} ({flight['in_flight_max']:.0f})",
                            )
                    row.update(store=kind, path=path)
                    rows.append(row)
                    print(
                        f"| {kind} | {path} | {row['put_mb_per_s']:.0f} | {row['get_mb_per_s']:.0f} "
                        f"| {row['connections']} | {row['in_flight']} |",
                        flush=True,
                    )
    if args.out:
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
