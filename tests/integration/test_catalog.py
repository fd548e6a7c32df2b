"""The catalog: which checkpoints a run has, and which one to resume from."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3StorageWriter, latest_checkpoint, list_checkpoints
from s3dcp._format.layout import parse_step
from tests.conftest import REGION

pytestmark = pytest.mark.s3


def save(bucket: str, path: str) -> None:
    dcp.save({"w": torch.ones(64), "path": path}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/{path}"))


def leave_incomplete(s3: Any, bucket: str, path: str) -> None:
    """What a save killed before its commit leaves: shards, no .metadata."""
    s3.put_object(Bucket=bucket, Key=f"{path}/__0_0.distcp", Body=b"x" * 100)


def test_parse_step() -> None:
    assert parse_step("run/step_10") == 10
    assert parse_step("run/step_007/") == 7
    assert parse_step("step_3/sub") == 3
    assert parse_step("run/final") is None and parse_step("run/step_x") is None and parse_step("mystep_5") is None


def test_lists_complete_and_incomplete_in_numeric_step_order(s3_env: Any, s3: Any, bucket: str) -> None:
    for step in (9, 100, 10):
        save(bucket, f"run/step_{step}")
    leave_incomplete(s3, bucket, "run/step_200")
    save(bucket, "run/final")
    s3.put_object(Bucket=bucket, Key="run/logs/train.log", Body=b"not a checkpoint")
    s3.put_object(Bucket=bucket, Key="run/notes.txt", Body=b"not a checkpoint either")

    found = list_checkpoints(f"s3://{bucket}/run")

    assert [(c.uri.rsplit("/", 1)[1], c.step, c.complete) for c in found] == [
        ("final", None, True),
        ("step_9", 9, True),
        ("step_10", 10, True),
        ("step_100", 100, True),
        ("step_200", 200, False),
    ]
    incomplete = found[-1]
    assert incomplete.num_objects == 1 and incomplete.size_bytes == 100
    complete = found[1]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="run/step_9/")["Contents"]
    assert complete.num_objects == len(listed) == 2
    assert complete.size_bytes == sum(o["Size"] for o in listed)
    assert complete.last_modified == max(o["LastModified"] for o in listed)


def test_latest_is_the_highest_complete_step(s3_env: Any, s3: Any, bucket: str) -> None:
    for step in (9, 10, 2):
        save(bucket, f"run/step_{step}")
    leave_incomplete(s3, bucket, "run/step_11")  # newer, but its save never committed
    assert latest_checkpoint(f"s3://{bucket}/run") == f"s3://{bucket}/run/step_10"


def test_latest_without_steps_is_the_last_written_complete_one(s3_env: Any, s3: Any, bucket: str) -> None:
    save(bucket, "run/first")
    save(bucket, "run/second")
    leave_incomplete(s3, bucket, "run/third")
    # "second" was committed last (or in the same second, when the name breaks the tie)
    assert latest_checkpoint(f"s3://{bucket}/run/") == f"s3://{bucket}/run/second"


def test_nothing_to_resume_from(s3_env: Any, s3: Any, bucket: str) -> None:
    assert latest_checkpoint(f"s3://{bucket}/run") is None
    assert list_checkpoints(f"s3://{bucket}/run") == []
    leave_incomplete(s3, bucket, "run/step_1")
    assert latest_checkpoint(f"s3://{bucket}/run") is None


def test_prune_never_removes_the_newest_complete_checkpoint(s3_env: Any, s3: Any, bucket: str) -> None:
    from s3dcp._catalog import prune

    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        prune(f"s3://{bucket}/run", 0)
    save(bucket, "run/step_1")
    save(bucket, "run/step_2")
    leave_incomplete(s3, bucket, "run/step_3")
    gone = prune(f"s3://{bucket}/run", 1, grace=timedelta(0))
    assert [info.uri.rsplit("/", 1)[1] for info in gone] == ["step_1", "step_3"]
    assert latest_checkpoint(f"s3://{bucket}/run") == f"s3://{bucket}/run/step_2"
    assert [c.uri.rsplit("/", 1)[1] for c in list_checkpoints(f"s3://{bucket}/run")] == ["step_2"]
