"""The save marker: stored before the first shard, there while the save runs, gone after the commit."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import S3ClientConfig, S3StorageWriter
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION, list_keys

pytestmark = pytest.mark.s3


def test_marker_is_stored_before_the_shards_and_removed_after_the_commit(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    hold = proxy.add_rule("hold", method="PUT", key_pattern=r"ckpt/__0_0\.distcp$", count=1)
    writer = S3StorageWriter(REGION, f"s3://{bucket}/ckpt")
    with ThreadPoolExecutor(1) as pool:
        saving = pool.submit(dcp.save, {"w": torch.ones(4)}, storage_writer=writer)
        try:
            assert hold.hit.wait(60), "the save never reached its shard upload"
            body = s3.get_object(Bucket=bucket, Key="ckpt/.s3dcp-saving")["Body"].read()
        finally:
            hold.release()
        saving.result(timeout=120)
    record = json.loads(body)
    assert record["save_id"] == writer.save_id
    started = datetime.strptime(record["started"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - started) < timedelta(minutes=10)
    writes = [r.path for r in proxy.requests() if r.method in ("PUT", "POST", "DELETE")]
    assert writes[0] == f"/{bucket}/ckpt/.s3dcp-saving"
    assert set(list_keys(s3, bucket)) == {"ckpt/.metadata", "ckpt/__0_0.distcp"}


def test_a_save_that_fails_leaves_its_marker_and_no_metadata(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    proxy.add_rule("access_denied", method="PUT", key_pattern=r"__0_0\.distcp$")
    with pytest.raises(CheckpointException):
        dcp.save({"w": torch.ones(4)}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/failed"))
    assert set(list_keys(s3, bucket)) == {"failed/.s3dcp-saving"}


def test_overwrite_stores_the_marker_before_it_uncommits(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    path = f"s3://{bucket}/over"
    dcp.save({"w": torch.zeros(4)}, storage_writer=S3StorageWriter(REGION, path))
    proxy.clear()
    config = S3ClientConfig(max_attempts=1)
    proxy.add_rule("access_denied", method="PUT", key_pattern=r"__0_0\.distcp$")
    with pytest.raises(CheckpointException):
        dcp.save({"w": torch.ones(4)}, storage_writer=S3StorageWriter(REGION, path, config, overwrite=True))
    # un-committed, and marked as a save that did not finish
    assert set(list_keys(s3, bucket)) == {"over/.s3dcp-saving", "over/__0_0.distcp"}
    writes = [(r.method, r.path.rsplit("/", 1)[-1]) for r in proxy.requests() if r.method in ("PUT", "DELETE")]
    assert writes[:2] == [("PUT", ".s3dcp-saving"), ("DELETE", ".metadata")]
