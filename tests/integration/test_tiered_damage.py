"""Tiered checkpoints: a committed checkpoint that cannot be read in full is damaged, not absent."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import (
    CheckpointDamagedError,
    CheckpointNotFoundError,
    TieredStorageReader,
    TieredStorageWriter,
    find_s3dcp_error,
)
from tests.conftest import REGION

pytestmark = pytest.mark.s3


def state() -> dict[str, Any]:
    return {"w": torch.arange(64, dtype=torch.float32), "b": torch.ones(8)}


def blank() -> dict[str, Any]:
    return {"w": torch.zeros(64), "b": torch.zeros(8)}


def load_error(local: Path, bucket: str, name: str) -> Any:
    reader = TieredStorageReader(local, f"s3://{bucket}/run", region=REGION)
    with pytest.raises(BaseException) as caught:
        dcp.load(blank(), checkpoint_id=name, storage_reader=reader)
    error = find_s3dcp_error(caught.value)
    assert error is not None, caught.value
    return error


def save_local_only(local: Path, bucket: str, name: str) -> None:
    writer = TieredStorageWriter(local, f"s3://{bucket}/run", region=REGION, s3_every=0)
    dcp.save(state(), checkpoint_id=name, storage_writer=writer)


def test_a_local_shard_missing_with_no_s3_copy_is_damage(s3_env: Any, bucket: str, tmp_path: Path) -> None:
    save_local_only(tmp_path, bucket, "step_3")
    (tmp_path / "step_3" / "__0_0.distcp").unlink()
    error = load_error(tmp_path, bucket, "step_3")
    assert type(error) is CheckpointDamagedError, error
    assert "step_3" in str(error) and "'w'" in str(error) and "S3 holds no copy" in str(error)


def test_local_metadata_that_does_not_load_with_no_s3_copy_is_damage(s3_env: Any, bucket: str, tmp_path: Path) -> None:
    save_local_only(tmp_path, bucket, "step_4")
    (tmp_path / "step_4" / ".metadata").write_bytes(b"cut sho")
    error = load_error(tmp_path, bucket, "step_4")
    assert type(error) is CheckpointDamagedError, error
    assert str(tmp_path / "step_4" / ".metadata") in str(error)


def test_an_s3_copy_with_a_shard_missing_is_damage(s3_env: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    writer = TieredStorageWriter(tmp_path, f"s3://{bucket}/run", region=REGION)
    dcp.save(state(), checkpoint_id="step_5", storage_writer=writer)
    writer.wait_for_uploads(timeout=120)
    shutil.rmtree(tmp_path / "step_5")
    s3.delete_object(Bucket=bucket, Key="run/step_5/__0_0.distcp")
    error = load_error(tmp_path, bucket, "step_5")
    assert type(error) is CheckpointDamagedError, error
    assert "run/step_5/__0_0.distcp" in str(error)


def test_a_checkpoint_in_neither_tier_is_still_not_found(s3_env: Any, bucket: str, tmp_path: Path) -> None:
    error = load_error(tmp_path, bucket, "step_6")
    assert type(error) is CheckpointNotFoundError, error
