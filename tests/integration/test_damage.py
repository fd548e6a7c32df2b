"""A committed checkpoint whose data is gone or broken is damaged, never "not found"."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import (
    CheckpointDamagedError,
    S3ClientConfig,
    S3StorageReader,
    S3StorageWriter,
    UnsafeCheckpointError,
)
from s3dcp._verify import verify_checkpoint
from tests.conftest import REGION
from tests.helpers import s3dcp_error

pytestmark = pytest.mark.s3

SHARD = "ckpt/__0_0.distcp"
# one GET per item, so a cut can fall before an item (416) or inside it (fewer bytes than asked)
ONE_ITEM_PER_GET = S3ClientConfig(max_read_size=1)


def saved(bucket: str) -> tuple[str, dict[str, Any]]:
    """A small committed checkpoint of two tensors in one shard; its URI and each item's storage record."""
    uri = f"s3://{bucket}/ckpt"
    dcp.save({"first": torch.ones(64), "second": torch.full((64,), 2.0)}, storage_writer=S3StorageWriter(REGION, uri))
    records = S3StorageReader(REGION, uri).read_metadata().storage_data
    return uri, {index.fqn: info for index, info in records.items()}


def load_error(uri: str, config: S3ClientConfig | None = None) -> Any:
    """The s3dcp error a DCP load of ``uri`` ends in."""
    with pytest.raises(CheckpointException) as raised:
        dcp.load(
            {"first": torch.zeros(64), "second": torch.zeros(64)}, storage_reader=S3StorageReader(REGION, uri, config)
        )
    return s3dcp_error(raised.value)


def assert_damaged(error: Any, uri: str, *words: str) -> None:
    assert type(error) is CheckpointDamagedError, repr(error)
    assert not isinstance(error, FileNotFoundError)  # never mistaken for "no checkpoint"
    text = str(error)
    for word in (uri, "older checkpoint", *words):
        assert word in text, text
    assert "no reason to start from scratch" in text


def test_a_deleted_shard_is_damage_naming_object_and_items(s3_env: Any, s3: Any, bucket: str) -> None:
    uri, _ = saved(bucket)
    s3.delete_object(Bucket=bucket, Key=SHARD)
    error = load_error(uri)
    assert_damaged(error, uri, f"s3://{bucket}/{SHARD}", "'first'", "'second'", "missing")
    assert error.key == SHARD


def test_a_shard_cut_before_an_item_is_damage(s3_env: Any, s3: Any, bucket: str) -> None:
    """The item's range starts past the object's end: S3 answers 416 InvalidRange."""
    uri, records = saved(bucket)
    body = s3.get_object(Bucket=bucket, Key=SHARD)["Body"].read()
    s3.put_object(Bucket=bucket, Key=SHARD, Body=body[: records["second"].offset])
    error = load_error(uri, ONE_ITEM_PER_GET)
    assert_damaged(error, uri, f"s3://{bucket}/{SHARD}", "'second'", "ends before byte")
    assert "'first'" not in str(error)


def test_a_shard_cut_inside_an_item_is_damage(s3_env: Any, s3: Any, bucket: str) -> None:
    """The item's range starts inside the object and ends past it: fewer bytes than asked."""
    uri, records = saved(bucket)
    body = s3.get_object(Bucket=bucket, Key=SHARD)["Body"].read()
    second = records["second"]
    s3.put_object(Bucket=bucket, Key=SHARD, Body=body[: second.offset + second.length // 2])
    for config in (ONE_ITEM_PER_GET, None):  # alone, and coalesced with the item before it
        error = load_error(uri, config)
        assert_damaged(error, uri, f"s3://{bucket}/{SHARD}", "'second'", "ends before byte")


@pytest.mark.parametrize("cut", ["garbage", "truncated", "empty", "not-metadata"])
def test_metadata_that_does_not_unpickle_is_damage(s3_env: Any, s3: Any, bucket: str, cut: str) -> None:
    uri, _ = saved(bucket)
    key = "ckpt/.metadata"
    good = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    body = {
        "garbage": b"this was overwritten by something else",
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not-metadata": pickle.dumps({"a": [1, 2, 3]}),
    }[cut]
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    error = load_error(uri)  # kept past torch's read_metadata trap: arrives intact through DCP
    assert_damaged(error, uri, f"{uri}/.metadata")
    with pytest.raises(CheckpointDamagedError):
        S3StorageReader(REGION, uri).read_metadata()
    report = verify_checkpoint(uri, region=REGION)  # damage is what verify reports, not raises
    assert [(problem.key, problem.item) for problem in report.problems] == [("ckpt/.metadata", "")]
    assert "older checkpoint" in report.problems[0].detail


def test_metadata_naming_a_callable_is_still_unsafe_not_damaged(s3_env: Any, s3: Any, bucket: str) -> None:
    uri, _ = saved(bucket)
    hostile = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93."
    s3.put_object(Bucket=bucket, Key="ckpt/.metadata", Body=hostile)
    error = load_error(uri)
    assert type(error) is UnsafeCheckpointError and "os.system" in str(error)


def test_verify_reports_missing_and_short_objects_as_problems(s3_env: Any, s3: Any, bucket: str) -> None:
    uri, records = saved(bucket)
    body = s3.get_object(Bucket=bucket, Key=SHARD)["Body"].read()
    s3.put_object(Bucket=bucket, Key=SHARD, Body=body[: records["second"].offset + 4])
    report = verify_checkpoint(uri, region=REGION)
    assert not report.ok and [problem.item for problem in report.problems] == ["second"]
    assert "object ends at byte" in report.problems[0].detail
    s3.delete_object(Bucket=bucket, Key=SHARD)
    report = verify_checkpoint(uri, region=REGION)
    assert [(problem.key, problem.item) for problem in report.problems] == [(SHARD, "")]
    assert "missing" in report.problems[0].detail
