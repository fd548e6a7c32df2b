"""A save leaves only its own objects: shards earlier saves left are removed after the commit.

Everything else under the checkpoint path (the user's files, a nested
checkpoint) stays, and the new checkpoint loads.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import HexPrefixStrategy, S3StorageReader, S3StorageWriter
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION, list_keys
from tests.helpers import assert_same, blank_like

pytestmark = pytest.mark.s3


def small_state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(5)
    return {"a": torch.randn(64, generator=g), "b": torch.randn(32, generator=g), "step": 7}


def assert_loads(path: str, state: dict[str, Any]) -> None:
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state, loaded)


def test_a_smaller_save_after_an_interrupted_bigger_one_leaves_only_its_objects(
    s3_env: Any, s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    # what an interrupted save leaves: shards (several layouts) and its marker, no .metadata
    for key in ("ckpt/__0_0.distcp", "ckpt/__1_0.distcp", "ckpt/__0_1.distcp", "ckpt/0000/__2_0.distcp"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 1000)
    s3.put_object(Bucket=bucket, Key="ckpt/.s3dcp-saving", Body=b"{}")
    state = small_state()
    with caplog.at_level(logging.INFO, logger="s3dcp"):
        dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/ckpt"))
    assert set(list_keys(s3, bucket)) == {"ckpt/.metadata", "ckpt/__0_0.distcp"}
    assert "removed 3 shard objects (3000 bytes)" in caplog.text
    assert_loads(f"s3://{bucket}/ckpt", state)


def test_overwrite_with_fewer_objects_removes_the_old_ones(s3_env: Any, s3: Any, bucket: str) -> None:
    path = f"s3://{bucket}/over"
    big = {f"w{i}": torch.full((100,), float(i)) for i in range(6)}
    dcp.save(big, storage_writer=S3StorageWriter(REGION, path, thread_count=3))
    assert len([k for k in list_keys(s3, bucket) if k.endswith(".distcp")]) == 3
    state = small_state()
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, thread_count=1, overwrite=True))
    assert set(list_keys(s3, bucket)) == {"over/.metadata", "over/__0_0.distcp"}
    assert_loads(path, state)


def test_a_new_prefix_strategy_removes_the_old_layout(s3_env: Any, s3: Any, bucket: str) -> None:
    path = f"s3://{bucket}/layout"
    dcp.save(small_state(), storage_writer=S3StorageWriter(REGION, path))
    state = small_state()
    strategy = HexPrefixStrategy(min_prefix_length=4)
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, prefix_strategy=strategy, overwrite=True))
    assert set(list_keys(s3, bucket)) == {"layout/.metadata", "layout/0000/__0_0.distcp"}
    assert_loads(path, state)


def test_objects_that_are_not_the_checkpoints_survive(s3_env: Any, s3: Any, bucket: str) -> None:
    path = f"s3://{bucket}/run"
    nested = small_state()
    dcp.save(nested, storage_writer=S3StorageWriter(REGION, f"{path}/sub"))
    theirs = {
        "run/logs/train.log": b"epoch 1",
        "run/notes.txt": b"keep me",
        "run/logs/__0_0.distcp.bak": b"a backup, not a shard name",
        "run/saving/.s3dcp-saving": b"{}",  # another save in progress below
        "run/saving/__0_0.distcp": b"its shard",
    }
    for key, body in theirs.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    before = list_keys(s3, bucket)
    s3.put_object(Bucket=bucket, Key="run/__3_0.distcp", Body=b"stray")
    state = {"w": torch.arange(10.0)}
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    after = list_keys(s3, bucket)
    assert set(after) == set(before) | {"run/.metadata", "run/__0_0.distcp"}
    for key, body in theirs.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert_loads(path, state)
    assert_loads(f"{path}/sub", nested)


def test_a_checkpoint_at_the_bucket_root_leaves_other_runs_unfinished_saves(s3_env: Any, s3: Any, bucket: str) -> None:
    # another run's save that died before markers existed: shards, no marker, no .metadata
    s3.put_object(Bucket=bucket, Key="other-run/step_3/__0_0.distcp", Body=b"their shard")
    state = {"w": torch.arange(10.0)}
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}"))
    assert set(list_keys(s3, bucket)) == {".metadata", "__0_0.distcp", "other-run/step_3/__0_0.distcp"}
    assert_loads(f"s3://{bucket}", state)


def test_a_failed_clean_up_warns_and_the_save_still_succeeds(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    s3.put_object(Bucket=bucket, Key="kept/__5_0.distcp", Body=b"y" * 500)
    proxy.add_rule("access_denied", method="POST", query_contains="delete")
    state = small_state()
    with caplog.at_level(logging.WARNING, logger="s3dcp"):
        dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/kept"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "is committed" in message and "1 shard objects (500 bytes)" in message
    assert f"s3://{bucket}/kept/__5_0.distcp" in message and "AccessDenied" in message
    assert "kept/__5_0.distcp" in list_keys(s3, bucket)
    assert_loads(f"s3://{bucket}/kept", state)
