"""``s3dcp verify`` reports every kind of damage to a committed checkpoint as damage (exit 3)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3StorageWriter
from s3dcp._cli import main
from tests.conftest import REGION

pytestmark = pytest.mark.s3

SHARD = "ckpt/__0_0.distcp"


def verify(capsys: pytest.CaptureFixture[str], uri: str) -> tuple[int, list[str], str]:
    """Exit code, the 'damaged:' lines and all of stderr of ``s3dcp verify uri``."""
    code = main(["verify", uri])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("s3dcp: damaged:")], err


@pytest.fixture
def checkpoint(s3_env: Any, bucket: str) -> str:
    uri = f"s3://{bucket}/ckpt"
    dcp.save({"first": torch.ones(64), "second": torch.full((64,), 2.0)}, storage_writer=S3StorageWriter(REGION, uri))
    return uri


def test_a_shard_cut_short_is_damage(checkpoint: str, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    body = s3.get_object(Bucket=bucket, Key=SHARD)["Body"].read()
    s3.put_object(Bucket=bucket, Key=SHARD, Body=body[: len(body) // 2])
    code, damaged, _ = verify(capsys, checkpoint)
    assert code == 3
    assert damaged and all(f"{SHARD}: " in line and "object ends at byte" in line for line in damaged)


def test_a_missing_shard_is_damage(checkpoint: str, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    s3.delete_object(Bucket=bucket, Key=SHARD)
    code, damaged, _ = verify(capsys, checkpoint)
    assert code == 3 and len(damaged) == 1 and f"{SHARD}: object is missing" in damaged[0]


def test_metadata_that_does_not_unpickle_is_damage(
    checkpoint: str, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = s3.get_object(Bucket=bucket, Key="ckpt/.metadata")["Body"].read()
    s3.put_object(Bucket=bucket, Key="ckpt/.metadata", Body=good[: len(good) // 3])
    code, damaged, _ = verify(capsys, checkpoint)
    assert code == 3 and len(damaged) == 1 and "ckpt/.metadata: " in damaged[0] and "does not unpickle" in damaged[0]


def test_no_checkpoint_is_not_damage(s3_env: Any, bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, damaged, err = verify(capsys, f"s3://{bucket}/nothing")
    assert code == 1 and not damaged and "no complete checkpoint" in err
