"""Faults on the wire: retries that recover, budgets that end, commits that stay atomic.

Every fault here is real: the proxy answers 503/500/403/501 with S3's XML,
resets TCP connections, cuts bodies short and loses answers to requests the
server already carried out.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import (
    AccessDeniedError,
    BucketNotFoundError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    S3ClientConfig,
    S3RequestError,
    S3StorageReader,
    S3StorageWriter,
)
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION, list_keys
from tests.helpers import FAST_RETRIES, MIB, assert_same, blank_like, s3dcp_error

pytestmark = pytest.mark.s3

REPO = Path(__file__).resolve().parents[2]


def mixed_state(seed: int = 3) -> dict[str, Any]:
    """Two multipart-sized tensors, hundreds of small ones, and plain values."""
    g = torch.Generator().manual_seed(seed)
    return {
        "big": torch.randn(6 * MIB // 4, generator=g),
        "half": torch.randn(3 * MIB, generator=g).to(torch.bfloat16),
        "small": {f"w{i}": torch.randn(256, generator=g) for i in range(300)},
        "step": 1234,
        "names": ["a", "b"],
    }


def test_save_and_load_survive_30_percent_faults(proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str) -> None:
    """About 30% of some 400 requests fail, each fault kind some 25 times."""
    state = mixed_state()
    path = f"s3://{bucket}/flaky"
    config = S3ClientConfig(part_size=5 * MIB, coalesce_gap=0, max_read_size=2048, **FAST_RETRIES)
    actions = ("slowdown", "internal_error", "reset", "lose_answer", "truncate")
    proxy.add_fault_mix(0.3, actions)
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config, thread_count=3))
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)
    fired = {r.action for r in proxy.requests() if r.action}
    assert fired == set(actions), fired
    faults = sum(1 for r in proxy.requests() if r.action)
    assert 0.15 * len(proxy.requests()) <= faults <= 0.45 * len(proxy.requests())
    assert any(r.action == "truncate" and r.method == "GET" for r in proxy.requests())


def test_a_body_cut_short_is_resumed_for_the_missing_bytes_only(
    proxied_env: Any, proxy: FaultProxy, bucket: str
) -> None:
    state = {"w": torch.randn(MIB // 4)}
    path = f"s3://{bucket}/cut"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    proxy.clear()
    proxy.add_rule("truncate", method="GET", key_pattern=r"distcp$", count=1, keep_fraction=0.25)
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state, loaded)
    first, second = proxy.requests("GET", r"distcp$")
    first_start, first_end = (int(x) for x in first.range.removeprefix("bytes=").split("-"))
    second_start, second_end = (int(x) for x in second.range.removeprefix("bytes=").split("-"))
    assert second_end == first_end
    # bytes arrive in read chunks; the chunk being read when the body broke is asked again
    assert first_start < second_start <= first_start + first.response_bytes


def test_constant_throttling_fails_within_the_attempt_budget_and_commits_nothing(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    proxy.add_rule("slowdown", method="PUT", key_pattern=r"\.distcp$")
    config = S3ClientConfig(max_attempts=3, **FAST_RETRIES)
    with pytest.raises(CheckpointException) as raised:
        dcp.save({"w": torch.ones(8)}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/busy", config))
    error = s3dcp_error(raised.value)
    assert isinstance(error, S3RequestError) and error.code == "SlowDown"
    assert error.attempts == 3
    assert error.key == "busy/__0_0.distcp"
    assert "after 3 attempts" in str(error) and "busy/__0_0.distcp" in str(error)
    assert len(proxy.requests("PUT", r"\.distcp$")) == 3
    assert set(list_keys(s3, bucket)) == {"busy/.s3dcp-saving"}  # marks the save that did not finish


def test_missing_bucket_fails_after_one_request(proxied_env: Any, proxy: FaultProxy) -> None:
    with pytest.raises(CheckpointException) as raised:
        dcp.save({"w": torch.ones(2)}, storage_writer=S3StorageWriter(REGION, "s3://no-such-bucket-zz/c"))
    assert isinstance(s3dcp_error(raised.value), BucketNotFoundError)
    assert len(proxy.requests()) == 1
    proxy.clear()
    with pytest.raises(CheckpointException) as raised:
        dcp.load({"w": torch.ones(2)}, storage_reader=S3StorageReader(REGION, "s3://no-such-bucket-zz/c"))
    assert isinstance(s3dcp_error(raised.value), BucketNotFoundError)
    assert len(proxy.requests()) == 1


def test_access_denied_fails_after_one_request(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    proxy.add_rule("access_denied")
    with pytest.raises(CheckpointException) as raised:
        dcp.save({"w": torch.ones(2)}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/denied"))
    error = s3dcp_error(raised.value)
    assert isinstance(error, AccessDeniedError) and error.attempts == 1
    assert len(proxy.requests()) == 1


def test_a_lost_commit_answer_is_not_taken_for_a_rival_save(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    """The .metadata PUT lands but its answer is lost; the retry meets our own object."""
    proxy.add_rule("lose_answer", method="PUT", key_pattern=r"\.metadata$", count=1)
    state = {"w": torch.arange(10.0)}
    path = f"s3://{bucket}/lost"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    puts = proxy.requests("PUT", r"\.metadata$")
    assert [r.status for r in puts] == [-1, 412]
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state, loaded)


def test_a_lost_complete_answer_is_checked_against_the_stored_etag(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """The upload was completed but the answer lost; the retry finds no such upload."""
    proxy.add_rule("lose_answer", method="POST", query_contains="uploadId", count=1)
    proxy.add_rule("no_such_upload", method="POST", query_contains="uploadId", count=1)
    state = {"w": torch.randn(6 * MIB // 4)}
    path = f"s3://{bucket}/complete"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, S3ClientConfig(part_size=5 * MIB)))
    completes = proxy.requests("POST", r"distcp$")
    assert [r.status for r in completes if "uploadId" in r.query] == [-1, 404]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state, loaded)


def test_two_saves_racing_for_one_path_commit_once(proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str) -> None:
    """Another job commits while ours is mid-save: ours must not replace its .metadata."""
    path = f"s3://{bucket}/race"
    hold = proxy.add_rule("hold", method="PUT", key_pattern=r"race/__0_0\.distcp$", count=1)
    with ThreadPoolExecutor(1) as pool:
        saving = pool.submit(dcp.save, {"w": torch.ones(4)}, storage_writer=S3StorageWriter(REGION, path))
        assert hold.hit.wait(60), "the save never reached its shard upload"
        s3.put_object(Bucket=bucket, Key="race/.metadata", Body=b"the rival's commit")
        hold.release()
        with pytest.raises(CheckpointException) as raised:
            saving.result(timeout=120)
    error = s3dcp_error(raised.value)
    assert isinstance(error, CheckpointExistsError) and "another save" in str(error)
    assert s3.get_object(Bucket=bucket, Key="race/.metadata")["Body"].read() == b"the rival's commit"


def test_stores_without_conditional_writes_fall_back_to_a_plain_put(
    proxied_env: Any, proxy: FaultProxy, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.add_rule("not_implemented", method="PUT", key_pattern=r"\.metadata$", header="If-None-Match")
    state = {"w": torch.arange(6.0)}
    path = f"s3://{bucket}/plain"
    with caplog.at_level(logging.WARNING, logger="s3dcp"):
        dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    assert "does not support create-only PUTs" in caplog.text
    assert [r.status for r in proxy.requests("PUT", r"\.metadata$")] == [501, 200]
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state, loaded)


def test_throttling_per_prefix_is_retried_through(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    """A token bucket per key partition answers SlowDown; the save still lands bit-exact."""
    proxy.add_rule("throttle", rate=20.0, burst=2, partition_root=f"/{bucket}/prefixed/", partition_chars=1)
    state = {f"w{i}": torch.randn(1000) for i in range(16)}
    path = f"s3://{bucket}/prefixed"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, thread_count=8))
    assert proxy.statuses().get(503, 0) > 0
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state, loaded)


_KILLED_SAVER = """
import sys, torch, torch.distributed.checkpoint as dcp
from s3dcp import S3ClientConfig, S3StorageWriter
state = {"w": torch.randn(12 * 1024 * 1024 // 4)}
dcp.save(state, storage_writer=S3StorageWriter(None, sys.argv[1], S3ClientConfig(part_size=5 * 1024 * 1024)))
"""


def test_sigkill_mid_save_leaves_no_metadata_and_the_previous_checkpoint_loads(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    previous = {"w": torch.randn(1000), "step": 1}
    dcp.save(previous, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/run/step_1"))
    hold = proxy.add_rule("hold", method="PUT", key_pattern=r"step_2/", query_contains="partNumber=2")
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVER, f"s3://{bucket}/run/step_2"],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stderr=subprocess.PIPE,
    )
    try:
        assert hold.hit.wait(120), "the child never reached its second part"
        child.kill()
        child.wait(timeout=60)
    finally:
        hold.release()
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert child.returncode == -9
    assert set(list_keys(s3, bucket, "run/step_2/")) == {"run/step_2/.s3dcp-saving"}
    with pytest.raises(CheckpointException) as raised:
        dcp.load({"w": torch.zeros(1000)}, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/run/step_2"))
    assert isinstance(s3dcp_error(raised.value), CheckpointNotFoundError)
    loaded = {"w": torch.zeros(1000), "step": 0}
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/run/step_1"))
    assert_same(previous, loaded)
