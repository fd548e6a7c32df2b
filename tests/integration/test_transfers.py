"""The data path: multipart streaming, ranged partial reads, bounded memory, clean threads."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION
from tests.helpers import MIB, assert_same, blank_like

pytestmark = pytest.mark.s3

REPO = Path(__file__).resolve().parents[2]


def needed_bytes(path: str, prefix: str) -> int:
    """Bytes the metadata records for items whose key starts with ``prefix``."""
    metadata = S3StorageReader(REGION, path).read_metadata()
    return sum(info.length for index, info in metadata.storage_data.items() if index.fqn.startswith(prefix))


def part_number(record: Any) -> int:
    return int(parse_qs(record.query)["partNumber"][0])


def shard_get_bytes(proxy: FaultProxy) -> int:
    return sum(r.response_bytes for r in proxy.requests("GET", r"\.distcp$"))


def test_partial_load_fetches_only_the_bytes_it_needs(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    g = torch.Generator().manual_seed(1)
    state = {
        "model": {f"layer{i}": torch.randn(64, 64, generator=g) for i in range(8)},  # 128 KiB
        "optim": {f"m{i}": torch.randn(256, 256, generator=g) for i in range(8)},  # 2 MiB
    }
    path = f"s3://{bucket}/partial"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    needed = needed_bytes(path, "model.")
    proxy.clear()
    loaded = {"model": blank_like(state["model"])}
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state["model"], loaded["model"])
    fetched = shard_get_bytes(proxy)
    assert needed <= fetched <= 1.1 * needed
    assert all(r.range for r in proxy.requests("GET", r"\.distcp$"))


def test_interleaved_partial_load_with_zero_gap_fetches_exactly(
    proxied_env: Any, proxy: FaultProxy, bucket: str
) -> None:
    """Wanted and unwanted items alternate in the object; gap 0 means no extra bytes."""
    state = {f"k{i:02d}": torch.full((1000,), float(i)) for i in range(20)}
    path = f"s3://{bucket}/interleaved"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    wanted = {k: torch.zeros(1000) for k in state if int(k[1:]) % 2 == 0}
    needed = sum(
        info.length
        for index, info in S3StorageReader(REGION, path).read_metadata().storage_data.items()
        if index.fqn in wanted
    )
    proxy.clear()
    config = S3ClientConfig(coalesce_gap=0)
    dcp.load(wanted, storage_reader=S3StorageReader(REGION, path, config))
    assert all(torch.equal(v, state[k]) for k, v in wanted.items())
    assert shard_get_bytes(proxy) == needed
    assert len(proxy.requests("GET", r"\.distcp$")) == len(wanted)


def test_nearby_ranges_are_coalesced_into_few_requests(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    state = {f"k{i:02d}": torch.full((100,), float(i)) for i in range(50)}
    path = f"s3://{bucket}/coalesce"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    proxy.clear()
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state, loaded)
    assert len(proxy.requests("GET", r"\.distcp$")) == 1


def test_multipart_parts_respect_part_size_and_concurrency(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    config = S3ClientConfig(part_size=5 * MIB, max_concurrency=2)
    state = {"a": torch.randn(4 * MIB // 4 * 3), "b": torch.randn(MIB // 4)}  # 13 MiB
    path = f"s3://{bucket}/parts"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config))
    parts = sorted(proxy.requests("PUT", r"__0_0\.distcp$"), key=part_number)
    assert [part_number(r) for r in parts] == [1, 2, 3]
    assert [r.request_bytes for r in parts[:2]] == [5 * MIB, 5 * MIB]
    assert 0 < parts[2].request_bytes <= 5 * MIB
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)


@pytest.mark.parametrize("thread_count", [1, 2])
def test_parts_in_flight_are_bounded_by_max_concurrency(
    proxied_env: Any, proxy: FaultProxy, bucket: str, thread_count: int
) -> None:
    """Slow part uploads pile up unless the uploader waits for a free slot; objects being
    filled at the same time do not take slots from the network."""
    config = S3ClientConfig(part_size=5 * MIB, max_concurrency=3)
    # 5 full parts and a small last one each; one object per tensor with two threads
    state = {"a": torch.randn(25 * MIB // 4), "b": torch.randn(25 * MIB // 4)}
    parts = proxy.add_rule("delay", method="PUT", query_contains="partNumber", delay=0.3)
    writer = S3StorageWriter(REGION, f"s3://{bucket}/bounded", config, thread_count=thread_count)
    dcp.save(state, storage_writer=writer)
    assert len(proxy.requests("PUT", r"__0_\d\.distcp$")) == (11 if thread_count == 1 else 12)
    assert parts.max_delayed == 3


def test_loads_reuse_their_connections(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    """Bodies are read below urllib3 into the load's buffers; each connection then goes
    back to the pool for the next GET instead of being closed."""
    config = S3ClientConfig(max_concurrency=2)
    state = {f"t{i}": torch.randn(64 * 1024) for i in range(4)}
    path = f"s3://{bucket}/reuse"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config, thread_count=4))
    proxy.clear()
    for _ in range(5):
        loaded = blank_like(state)
        dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
        assert_same(state, loaded)
    gets = proxy.requests("GET", r"\.distcp$")
    assert len(gets) >= 20  # four shard objects, five loads
    assert proxy.connections <= 2 * config.max_concurrency, (proxy.connections, len(gets))


def test_small_objects_go_in_one_put(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    dcp.save({"w": torch.ones(10)}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/small"))
    assert [r.query for r in proxy.requests("PUT", r"__0_0\.distcp$")] == [""]
    assert proxy.requests("POST") == []  # no CreateMultipartUpload


def test_no_transfer_threads_are_left_running(s3_env: Any, bucket: str) -> None:
    path = f"s3://{bucket}/threads"
    state = {f"t{i}": torch.randn(2 * MIB // 4) for i in range(4)}
    config = S3ClientConfig(part_size=5 * MIB)
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config, thread_count=2))
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)
    assert [t.name for t in threading.enumerate() if t.name.startswith("s3dcp")] == []


def test_peak_memory_of_save_and_load_stays_within_the_stated_bounds_at_the_defaults(clean_aws_env: Any) -> None:
    """A child process saves 768 MiB of small tensors over a slow link at the default settings,
    then loads it; its peak RSS grows by the documented bounds at most, well under the state."""
    import os

    import boto3

    from s3dcp import S3ClientConfig
    from s3dcp_testkit.memory_store import MemoryStore
    from s3dcp_testkit.wan import WanEmulator, WanSettings

    state_mib = 768
    defaults = S3ClientConfig()
    part_mib, read_mib = defaults.part_size / MIB, defaults.max_read_size / MIB
    script = REPO / "tests" / "integration" / "_memory_probe.py"
    # 6 MB/s per connection: parts are copied in far faster than they leave, so they pile up
    with MemoryStore() as store, WanEmulator(store.endpoint_url, WanSettings(connection_mbps=6)) as wan:
        keys = {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": REGION}
        admin = boto3.client(
            "s3",
            endpoint_url=store.endpoint_url,
            region_name=REGION,
            aws_access_key_id="key",
            aws_secret_access_key="s",
        )
        admin.create_bucket(Bucket="memory")
        result = subprocess.run(
            [sys.executable, str(script), "s3://memory/probe", str(state_mib), store.endpoint_url],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, PYTHONPATH=str(REPO), AWS_ENDPOINT_URL=wan.endpoint_url, **keys),
            check=False,
        )
        in_flight = wan.in_flight.take()
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded_right"], report
    # every request slot was used (one thread: the writer's own requests come between parts)
    assert defaults.max_concurrency <= in_flight["in_flight_max"] <= defaults.max_concurrency + 1, in_flight
    # parts on the wire plus the one being filled (thread_count=1), + interpreter noise
    assert report["save_growth_mib"] < (defaults.max_concurrency + 1) * part_mib + 48, report
    assert report["save_growth_mib"] < state_mib * 0.75, report
    # whole contiguous tensors are read straight into the state's own memory: only the
    # archives' framing is buffered (no item-sized buffer, no budget's worth of them); the
    # rest is the stacks and allocator arenas of max_concurrency reading threads
    assert report["load_growth_mib"] < 32, report
    # otherwise download buffers: at most the budget (max_concurrency x max_read_size), + noise
    assert report["buffered_load_growth_mib"] < defaults.max_concurrency * read_mib + 48, report


def test_a_failed_multipart_upload_is_aborted(proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str) -> None:
    """Part 2 keeps failing: the save fails, no .metadata, and no parts stay behind."""
    from torch.distributed.checkpoint.api import CheckpointException

    config = S3ClientConfig(part_size=5 * MIB, max_attempts=2, retry_initial_backoff=0.01)
    proxy.add_rule("internal_error", method="PUT", query_contains="partNumber=2", key_pattern=r"distcp$")
    state = {"a": torch.randn(12 * MIB // 4)}
    with pytest.raises(CheckpointException):
        dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/aborted", config))
    assert proxy.requests("DELETE", r"aborted/__0_0\.distcp$"), "no AbortMultipartUpload was sent"
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "aborted/.metadata" not in {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


@pytest.mark.parametrize("sign_payload", [None, False])
def test_payload_signing_follows_the_config(
    proxied_env: Any, proxy: FaultProxy, bucket: str, sign_payload: bool | None
) -> None:
    """Over plain HTTP botocore signs each body's SHA-256 unless told not to.

    The 12 MiB tensor goes in three 5 MiB parts, the middle one straight from its memory.
    """
    state = {"w": torch.randn(1000), "big": torch.randn(12 * MIB // 4)}
    path = f"s3://{bucket}/signed-{sign_payload}"
    config = S3ClientConfig(sign_payload=sign_payload, part_size=5 * MIB)
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config, thread_count=2))
    puts = [r for r in proxy.requests("PUT") if r.request_bytes]
    assert len(puts) >= 4  # three parts, the small shard, .metadata
    for record in puts:
        sent = record.headers["x-amz-content-sha256"]
        assert sent == ("UNSIGNED-PAYLOAD" if sign_payload is False else record.body_sha256), record.path
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)


def test_a_writer_keeps_at_most_max_concurrency_part_buffers_between_saves(s3_env: Any, bucket: str) -> None:
    config = S3ClientConfig(part_size=5 * MIB, max_concurrency=2)
    writer = S3StorageWriter(REGION, f"s3://{bucket}/reuse-1", config, thread_count=2)
    state = {"a": torch.randn(11 * MIB // 4), "b": torch.randn(11 * MIB // 4)}
    dcp.save(state, storage_writer=writer)
    kept = writer._part_buffers.kept_bytes
    assert 0 < kept <= 2 * 5 * MIB
    dcp.save(state, checkpoint_id=f"s3://{bucket}/reuse-2", storage_writer=writer)
    assert writer._part_buffers.kept_bytes <= 2 * 5 * MIB
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/reuse-2", config))
    assert_same(state, loaded)
