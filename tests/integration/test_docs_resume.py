"""The resume pattern on the errors page (docs/errors.md), run as written: damage stops the job."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import CheckpointDamagedError, S3StorageWriter, find_s3dcp_error, latest_checkpoint
from tests.conftest import REGION

pytestmark = pytest.mark.s3

ERRORS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def documented_resume_pattern() -> Callable[[dict[str, Any], str | None], bool]:
    """``load_or_start_fresh`` exactly as the errors page shows it."""
    blocks = re.findall(r"```python\n(.*?)```", ERRORS_PAGE.read_text(), re.DOTALL)
    code = next(block for block in blocks if "def load_or_start_fresh" in block)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(ERRORS_PAGE), "exec"), namespace)  # noqa: S102 - our own documentation
    function: Callable[[dict[str, Any], str | None], bool] = namespace["load_or_start_fresh"]
    return function


def save_steps(bucket: str) -> dict[str, torch.Tensor]:
    """Two committed checkpoints, step_1 and step_2; returns what step_2 holds."""
    for step in (1, 2):
        state = {"w": torch.full((64,), float(step)), "b": torch.full((8,), float(step))}
        dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/run/step_{step}"))
    return state


def blank() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(64), "b": torch.zeros(8)}


def test_a_good_checkpoint_resumes(s3_env: Any, bucket: str) -> None:
    want = save_steps(bucket)
    state = blank()
    assert documented_resume_pattern()(state, latest_checkpoint(f"s3://{bucket}/run")) is True
    assert torch.equal(state["w"], want["w"]) and torch.equal(state["b"], want["b"])


@pytest.mark.parametrize("damage", ["deleted shard", "truncated shard"])
def test_a_damaged_checkpoint_stops_the_job(s3_env: Any, s3: Any, bucket: str, damage: str) -> None:
    save_steps(bucket)
    key = "run/step_2/__0_0.distcp"
    if damage == "deleted shard":
        s3.delete_object(Bucket=bucket, Key=key)
    else:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        s3.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2])
    load_or_start_fresh = documented_resume_pattern()
    uri = latest_checkpoint(f"s3://{bucket}/run")
    assert uri == f"s3://{bucket}/run/step_2"  # still committed: its .metadata is there
    with pytest.raises(CheckpointException) as raised:  # never returns False: no silent restart
        load_or_start_fresh(blank(), uri)
    assert isinstance(find_s3dcp_error(raised.value), CheckpointDamagedError)
    # going on from the older checkpoint is an explicit choice
    assert load_or_start_fresh(blank(), f"s3://{bucket}/run/step_1") is True


def test_no_checkpoint_starts_from_scratch(s3_env: Any, bucket: str) -> None:
    load_or_start_fresh = documented_resume_pattern()
    assert latest_checkpoint(f"s3://{bucket}/run") is None
    assert load_or_start_fresh(blank(), latest_checkpoint(f"s3://{bucket}/run")) is False
    assert load_or_start_fresh(blank(), f"s3://{bucket}/run/step_9") is False  # nothing saved there
