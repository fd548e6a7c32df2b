"""Slow and stalled connections: a slow link saves, a stalled one is retried soon, and the error says which.

A part used to go to the socket in one ``sendall``, which the socket's
timeout (``connect_timeout`` while urllib3 sends) bounds as a whole: a part
that took longer to cross the link than ``connect_timeout`` failed every
attempt. Now each piece of a part is bounded (``s3dcp._s3.send``).

The slow link is the WAN emulator at 1.5 MB/s per connection, with a small
receive buffer so that kernel buffers cannot swallow a 5 MiB part; with
``connect_timeout=0.2`` the old one-``sendall`` part (5 MiB at 1.5 MB/s,
about 3.5 s, of which the buffers hide at most some 4 MB) cannot make it,
the new pieces (64 KiB each, 0.05 s at that rate) easily can. Stalls are
the fault proxy's ``stall`` rule: a connection that stops moving, held for a
minute unless the client gives up first. Times are asserted only against
generous bounds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import EndpointError, S3ClientConfig, S3StorageReader, S3StorageWriter
from s3dcp._compat import botocore as compat_botocore
from s3dcp._config import resolve_settings
from s3dcp._ranges import ByteRange
from s3dcp._s3.client import S3Client
from s3dcp._s3.download import read_range_into
from s3dcp._s3.objects import put_object
from s3dcp_testkit.certificates import make_certificate
from s3dcp_testkit.fault_proxy import FaultProxy
from s3dcp_testkit.memory_store import MemoryStore
from s3dcp_testkit.wan import WanEmulator, WanSettings
from tests.conftest import REGION, use_loopback_store
from tests.helpers import FAST_RETRIES, MIB

pytestmark = pytest.mark.s3

SLOW_LINK = WanSettings(first_byte_ms=0, connection_mbps=1.5, receive_buffer_bytes=64 * 1024)
STALL_S = 60.0  # how long a stalled connection stays stalled unless the client gives up


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_part_that_takes_longer_than_connect_timeout_to_send_is_saved(
    clean_aws_env: pytest.MonkeyPatch, tmp_path: Path, scheme: str
) -> None:
    tls = None
    if scheme == "https":
        made = make_certificate(tmp_path / "tls")
        tls = (made.cert, made.key)
        clean_aws_env.setenv("AWS_CA_BUNDLE", str(made.ca))
    state = {"big": torch.randn(5 * MIB // 4 + 1024), "step": 3}  # a 5 MiB part from the tensor's memory, and a bit
    config = S3ClientConfig(part_size=5 * MIB, max_concurrency=2, connect_timeout=0.2, **FAST_RETRIES)
    with MemoryStore() as store, WanEmulator(store.endpoint_url, SLOW_LINK, tls) as wan:
        use_loopback_store(clean_aws_env, wan.endpoint_url)
        boto3.client("s3", endpoint_url=store.endpoint_url).create_bucket(Bucket="slow")
        dcp.save(state, storage_writer=S3StorageWriter(REGION, "s3://slow/step_3", config, thread_count=1))
        assert wan.counts.take()["op:UploadPart"] >= 2
        # read back past the emulator: the load is not what is tested here
        direct = S3ClientConfig(endpoint_url=store.endpoint_url)
        loaded = {"big": torch.zeros_like(state["big"]), "step": 0}
        dcp.load(loaded, storage_reader=S3StorageReader(REGION, "s3://slow/step_3", direct))
    assert torch.equal(loaded["big"], state["big"]) and loaded["step"] == 3


def _client(config: S3ClientConfig) -> S3Client:
    return S3Client(resolve_settings(REGION, config))


def test_a_stalled_upload_is_retried_within_its_timeouts_and_succeeds(
    proxied_env: Any, proxy: FaultProxy, bucket: str, s3: Any
) -> None:
    rule = proxy.add_rule("stall", method="PUT", count=1, keep_fraction=0.1, delay=STALL_S)
    body = bytearray(b"slow" * (5 * MIB // 4))  # more than kernel buffers take: the send itself stalls
    client = _client(S3ClientConfig(connect_timeout=0.2, read_timeout=2, **FAST_RETRIES))
    started = time.monotonic()
    put_object(client, bucket, "stalled/put", body)
    assert time.monotonic() - started < STALL_S / 2
    assert rule.hits == 1
    assert s3.get_object(Bucket=bucket, Key="stalled/put")["Body"].read() == body


def test_a_stalled_download_is_retried_after_read_timeout_for_the_missing_bytes(
    proxied_env: Any, proxy: FaultProxy, bucket: str, s3: Any
) -> None:
    data = bytes(range(256)) * (3 * MIB // 256)  # read a MiB at a time: resumed after the first
    s3.put_object(Bucket=bucket, Key="stalled/get", Body=data)
    proxy.clear()
    rule = proxy.add_rule("stall", method="GET", count=1, keep_fraction=0.5, delay=STALL_S)
    client = _client(S3ClientConfig(read_timeout=0.5, **FAST_RETRIES))
    target = memoryview(bytearray(len(data)))
    started = time.monotonic()
    read_range_into(client, bucket, "stalled/get", ByteRange(0, len(data)), [target])
    assert time.monotonic() - started < STALL_S / 2
    assert rule.hits == 1 and bytes(target) == data
    first, retry = (g.range or "" for g in proxy.requests("GET", r"stalled/get$"))
    assert first == f"bytes=0-{len(data) - 1}"
    resumed_at = int(retry.removeprefix("bytes=").split("-")[0])
    assert 0 < resumed_at <= len(data) // 2 and retry.endswith(f"-{len(data) - 1}")


def test_when_every_attempt_stalls_the_error_says_the_link_is_too_slow_and_what_to_change(
    proxied_env: Any, proxy: FaultProxy, bucket: str
) -> None:
    proxy.add_rule("stall", method="PUT", keep_fraction=0.01, delay=STALL_S)
    client = _client(S3ClientConfig(connect_timeout=0.2, read_timeout=1, max_attempts=2, **FAST_RETRIES))
    started = time.monotonic()
    with pytest.raises(EndpointError) as raised:  # 16 MiB: far more than kernel buffers take, so the send stalls
        put_object(client, bucket, "stalled/never", bytearray(16 * MIB))
    assert time.monotonic() - started < STALL_S / 2
    message = str(raised.value)
    assert "was too slow or stalled" in message and "2 attempts" in message
    assert "of 16.8 MB had gone when a piece of 64 KiB did not go in 0.2 s: under 328 KB/s" in message, message
    assert "raise connect_timeout / read_timeout, or lower part_size" in message
    assert "could not talk" not in message
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message and os.environ["AWS_ACCESS_KEY_ID"] not in message


def test_where_the_http_stack_cannot_send_pieces_parts_go_whole_as_before(
    proxied_env: Any, proxy: FaultProxy, bucket: str, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compat_botocore, "sends_iterable_bodies", lambda: False)
    client = _client(S3ClientConfig(connect_timeout=4.5, sign_payload=True))  # settings no other test uses
    body = bytearray(b"whole" * MIB)
    put_object(client, bucket, "fallback/put", body)
    (record,) = proxy.requests("PUT", r"fallback/put$")
    assert record.headers["x-amz-content-sha256"] == record.body_sha256
    assert s3.get_object(Bucket=bucket, Key="fallback/put")["Body"].read() == body
