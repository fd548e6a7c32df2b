"""What a checkpoint costs before any checkpoint code runs: the floors under the CPU figures.

    .venv/bin/python benchmarks/floor.py            # prints a table, writes results/floor.{json,md}

Measured in this process, CPU seconds (user+sys) per GiB, median of 3:

- raw HTTP(S): 64 PUTs of 16 MiB bodies with ``http.client`` to the null sink
  (``s3dcp_testkit.null_sink``, started here as a separate process, over HTTP and over
  HTTPS with a throwaway CA), then 64 GETs of a 16 MiB object read with ``readinto`` into one
  buffer: the sending and receiving alone (kernel, and TLS in Python's
  ``ssl``), no S3 client, no signing, no serialization;
- passes over the benchmark's 1 GiB state dict: CRC-32 (ISA-L when
  installed, as s3dcp uses), xxh3-64 (s3dcp's item digest), SHA-256
  (SigV4's payload hash over plain HTTP), and one copy;
- DCP's own work for a save: ``dcp.save`` with a storage writer that
  stores nothing (planning, metadata, ``resolve_data`` for every item),
  and for a load: ``dcp.load`` with a storage reader that reads nothing
  (planning, ``resolve_tensor`` and ``commit_tensor`` for every item).

A save over HTTPS cannot cost less than raw PUTs over HTTPS + CRC-32 +
xxh3 + DCP's planning; over plain HTTP with payload signing, add SHA-256.
A load cannot cost less than raw GETs + xxh3 (each item's digest) + DCP's
load planning.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import json
import platform
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import xxhash
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadItemType, WriteItemType
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future
from workload import build_state_dict, tensor_bytes

from s3dcp import _crc32 as crc32
from s3dcp_testkit.certificates import make_certificate

BODY = 16 << 20
REQUESTS = 64  # 1 GiB
RESULTS = Path(__file__).resolve().parent / "results"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median_cost(run: Callable[[], None], gib: float, repeats: int = 3) -> float:
    run()  # warm: connections, caches, page faults
    costs = []
    for _ in range(repeats):
        start = cpu_seconds()
        run()
        costs.append((cpu_seconds() - start) / gib)
    return round(statistics.median(costs), 3)


def raw_http(endpoint: str, ca_file: str | None) -> tuple[float, float]:
    """CPU s/GiB of 1 GiB of PUTs and of 1 GiB of GETs over one connection."""
    host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
    if ca_file:
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, int(port), context=ssl.create_default_context(cafile=ca_file)
        )
    else:
        connection = http.client.HTTPConnection(host, int(port))
    body = bytearray(BODY)
    target = memoryview(bytearray(BODY))

    def put() -> None:
        for number in range(1, REQUESTS + 1):
            connection.request("PUT", f"/floor/object?partNumber={number}&uploadId=floor", body=body)
            connection.getresponse().read()

    def get() -> None:
        for _ in range(REQUESTS):
            connection.request("GET", "/floor/whole")
            response = connection.getresponse()
            filled = 0
            while filled < BODY:
                count = response.readinto(target[filled : filled + (1 << 20)])
                if not count:
                    raise RuntimeError("GET body ended early")
                filled += count
            response.read()

    connection.request("PUT", "/floor/whole", body=body)  # the sink remembers its size for GETs
    connection.getresponse().read()
    result = median_cost(put, REQUESTS * BODY / 2**30), median_cost(get, REQUESTS * BODY / 2**30)
    connection.close()
    return result


class _NoStorage(StorageWriter):
    """Takes every item from DCP (``resolve_data``) and stores nothing but the metadata and plain values."""

    def __init__(self) -> None:
        super().__init__()
        self.metadata: Metadata | None = None
        self.values: dict[str, bytes] = {}  # plain values by name, for the load that hands them back

    def reset(self, checkpoint_id: Any = None) -> None:
        pass

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: Any) -> Any:
        return plan

    def prepare_global_plan(self, plans: Any) -> Any:
        return plans

    def write_data(self, plan: Any, planner: Any) -> Future[list[WriteResult]]:
        results = []
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                self.values[item.index.fqn] = data.getvalue()
            results.append(WriteResult(index=item.index, size_in_bytes=0, storage_data=None))
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Any, results: Any) -> None:
        self.metadata = metadata

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return True

    def storage_meta(self) -> None:
        return None


class _NoRead(StorageReader):
    """Hands DCP the target of every tensor it asks for without reading a byte: DCP's own work for a load."""

    def __init__(self, saved: _NoStorage) -> None:
        super().__init__()
        assert saved.metadata is not None, "save with this _NoStorage first"
        self.metadata, self.values = saved.metadata, saved.values

    def reset(self, checkpoint_id: Any = None) -> None:
        pass

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self.metadata

    def set_up_storage_reader(self, metadata: Any, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: Any) -> Any:
        return plan

    def prepare_global_plan(self, plans: Any) -> Any:
        return plans

    def read_data(self, plan: Any, planner: Any) -> Future[None]:
        for item in plan.items:
            if item.type == LoadItemType.BYTE_IO:
                planner.load_bytes(item, io.BytesIO(self.values[item.storage_index.fqn]))
            else:
                planner.commit_tensor(item, planner.resolve_tensor(item))
        future: Future[None] = Future()
        future.set_result(None)
        return future

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return True


def passes(state: dict[str, Any], gib: float) -> dict[str, float]:
    views = [
        t.reshape(-1).view(torch.uint8).numpy().data.cast("B")
        for t in state.values()
        if isinstance(t, torch.Tensor) and t.numel()
    ]
    scratch = memoryview(bytearray(max(view.nbytes for view in views)))

    def over(function: Callable[[memoryview], Any]) -> Callable[[], None]:
        def run() -> None:
            for view in views:
                function(view)

        return run

    def copy(view: memoryview) -> None:
        scratch[: view.nbytes] = view

    costs = {
        f"CRC-32 ({'ISA-L' if 'isal' in crc32.compute.__module__ else 'zlib'})": median_cost(over(crc32.compute), gib),
        "xxh3-64": median_cost(over(lambda view: xxhash.xxh3_64(view).digest()), gib),
        "SHA-256": median_cost(over(lambda view: hashlib.sha256(view).digest()), gib),
        "one copy": median_cost(over(copy), gib),
        "dcp.save planning (writer stores nothing)": median_cost(
            lambda: dcp.save(state, storage_writer=_NoStorage(), no_dist=True), gib
        ),
    }
    saved = _NoStorage()
    dcp.save(state, storage_writer=saved, no_dist=True)
    costs["dcp.load planning (reader reads nothing)"] = median_cost(
        lambda: dcp.load(state, storage_reader=_NoRead(saved), no_dist=True), gib
    )
    return costs


@contextlib.contextmanager
def null_sink(tls: list[Any]) -> Iterator[str]:
    """The null sink in a process of its own, so its CPU is not counted here; yields its endpoint."""
    sink = subprocess.Popen(
        [sys.executable, "-m", "s3dcp_testkit.null_sink", *map(str, tls)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        yield sink.stdout.readline().strip()
    finally:
        sink.terminate()
        sink.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="state dict for the passes and DCP's planning")
    parser.add_argument("--out", type=Path, default=RESULTS / "floor.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        made = make_certificate(Path(scratch))
        https = ["--tls-cert", made.cert, "--tls-key", made.key]
        for scheme, tls, ca_file in (("HTTP", [], None), ("HTTPS", https, str(made.ca))):
            with null_sink(tls) as endpoint:
                put, get = raw_http(endpoint, ca_file)
            rows[f"raw PUTs over {scheme} (http.client, 16 MiB bodies)"] = put
            rows[f"raw GETs over {scheme} (http.client readinto)"] = get
    state = build_state_dict(args.size_mib)
    rows.update(passes(state, tensor_bytes(state) / 2**30))

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = f"{when}, {platform.machine()}, Python {platform.python_version()}, CPU s/GiB, median of 3"
    lines = [header, "", "| work | CPU s/GiB |", "| --- | --- |"]
    lines += [f"| {name} | {cost:.2f} |" for name, cost in rows.items()]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"when": when, "cpu_seconds_per_gib": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
