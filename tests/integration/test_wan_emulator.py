"""The WAN emulator relays S3 requests and counts them by operation (it is a benchmark instrument).

Checked through its own counters only: timings on a shared test machine
decide nothing here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from s3dcp_testkit.certificates import make_certificate
from s3dcp_testkit.wan import WanEmulator, WanProcess, WanSettings
from tests.conftest import REGION, use_loopback_store

pytestmark = pytest.mark.s3

MIB = 1024 * 1024


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_put_and_a_get_through_the_emulator_are_counted_and_leave_nothing_in_flight(
    s3_server: Any, bucket: str, tmp_path: Path, scheme: str
) -> None:
    tls, ca = None, None
    if scheme == "https":
        made = make_certificate(tmp_path / "tls")
        tls, ca = (made.cert, made.key), str(made.ca)
    settings = WanSettings(first_byte_ms=30, connection_mbps=20)
    # Ceph RGW checks signatures, so the emulator must pass bodies on untouched: no aws-chunked ones
    checksums = "when_required" if s3_server.kind.startswith("rgw") else "when_supported"
    with WanEmulator(s3_server.http_endpoint_url, settings, tls) as wan:
        assert wan.endpoint_url.startswith(f"{scheme}://")
        client: Any = boto3.client(
            "s3",
            endpoint_url=wan.endpoint_url,
            region_name=REGION,
            aws_access_key_id=s3_server.access_key,
            aws_secret_access_key=s3_server.secret_key,
            verify=ca or True,
            config=botocore.config.Config(
                retries={"total_max_attempts": 1},
                s3={"addressing_style": "path"},
                request_checksum_calculation=checksums,
            ),
        )
        data = bytes(range(256)) * (MIB // 256)
        wan.counts.take()
        wan.in_flight.take()

        client.put_object(Bucket=bucket, Key="wan/object", Body=data)
        assert client.get_object(Bucket=bucket, Key="wan/object")["Body"].read() == data

        assert wan.in_flight.wait_idle(timeout=30)  # the last answer's end is counted just after the client has it
        counts = wan.counts.take()
        in_flight = wan.in_flight.take()

    assert counts["op:PutObject"] == 1 and counts["op:GetObject"] == 1 and counts["requests"] == 2
    assert counts["connections"] >= 1
    assert counts["request_body_bytes"] >= MIB  # aws-chunked framing (HTTPS) adds a little
    assert counts["response_bytes:GetObject"] == MIB
    assert in_flight["in_flight_now"] == 0
    assert in_flight["in_flight_max"] == 1  # one client thread, one request at a time
    assert 0 < in_flight["in_flight_mean"] <= 1 and in_flight["active_s"] > 0


def test_s3dcp_saves_and_loads_through_the_emulator_in_front_of_the_memory_store(clean_aws_env: Any) -> None:
    import torch
    import torch.distributed.checkpoint as dcp

    from s3dcp import S3StorageReader, S3StorageWriter
    from s3dcp_testkit.memory_store import MemoryStore

    with MemoryStore() as store, WanEmulator(store.endpoint_url, WanSettings(first_byte_ms=5)) as wan:
        use_loopback_store(clean_aws_env, wan.endpoint_url)
        boto3.client("s3").create_bucket(Bucket="wan")
        state = {"big": torch.randn(1536, 1024), "small": torch.arange(100), "step": 7}  # 6 MiB: two parts
        writer = S3StorageWriter(REGION, "s3://wan/run/step_7", part_size=5 * MIB)
        dcp.save(state, storage_writer=writer)
        loaded = {"big": torch.zeros(1536, 1024), "small": torch.zeros(100, dtype=torch.int64), "step": 0}
        dcp.load(loaded, storage_reader=S3StorageReader(REGION, "s3://wan/run/step_7"))
        assert wan.in_flight.wait_idle(timeout=30)
        counts = wan.counts.take()

    assert torch.equal(loaded["big"], state["big"]) and torch.equal(loaded["small"], state["small"])
    assert loaded["step"] == 7
    assert counts["op:UploadPart"] >= 2 and counts["op:CompleteMultipartUpload"] >= 1
    assert counts["op:PutObject"] >= 1 and counts["op:GetObject"] >= 2  # .metadata, and the reads
    assert wan.in_flight.now == 0


def test_the_emulator_in_a_process_of_its_own_relays_counts_and_stops(clean_aws_env: Any) -> None:
    """WanProcess: the store behind it answers directly too, take() reports what was in flight, exit ends the child."""
    wan = WanProcess(WanSettings(first_byte_ms=5, connection_mbps=None))
    with wan:
        use_loopback_store(clean_aws_env, wan.store_url)
        boto3.client("s3").create_bucket(Bucket="wan")
        assert wan.take()["in_flight_max"] == 0  # the store's own endpoint is not the emulator's
        use_loopback_store(clean_aws_env, wan.endpoint_url)
        client: Any = boto3.client("s3")
        client.put_object(Bucket="wan", Key="k", Body=b"x" * MIB)
        assert client.get_object(Bucket="wan", Key="k")["Body"].read() == b"x" * MIB
        counted = wan.take()
        process = wan._process
    assert counted["in_flight_max"] == 1 and counted["in_flight_now"] == 0
    assert process is not None and process.returncode == 0
