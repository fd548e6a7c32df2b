"""ls and info count what a checkpoint is made of, and say where checkpoints are.

Sizes count ``.metadata`` and the objects it references; leftovers of an
earlier save to the same path are strays, reported apart; a committed
checkpoint with a referenced object missing or short is damaged.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3StorageWriter, list_checkpoints
from s3dcp._cli import human_bytes
from tests.conftest import REGION, list_keys
from tests.helpers import run_cli as run

pytestmark = pytest.mark.s3

STRAY = 8 * 1024


def save(bucket: str, path: str) -> None:
    dcp.save(
        {"w": torch.arange(32, dtype=torch.float32), "step": path},
        storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/{path}"),
    )


def with_strays(s3: Any, bucket: str, path: str) -> None:
    """A checkpoint beside shards its metadata does not use, as an older s3dcp (no clean-up after the
    commit) or a clean-up that failed leaves them: ranks 1 and 2 of a bigger earlier save."""
    save(bucket, path)
    for rank in (1, 2):
        s3.put_object(Bucket=bucket, Key=f"{path}/__{rank}_0.distcp", Body=b"s" * STRAY)


def row(out: str, name: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.rstrip().endswith("/" + name))


def test_ls_and_info_count_what_the_metadata_references_and_report_strays(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with_strays(s3, bucket, "run/step_2")
    save(bucket, "run/step_3")
    keys = list_keys(s3, bucket, "run/step_2/")
    committed = keys["run/step_2/.metadata"] + keys["run/step_2/__0_0.distcp"]

    (info, clean) = list_checkpoints(f"s3://{bucket}/run")
    assert (info.size_bytes, info.num_objects) == (committed, 2)
    assert (info.stray_objects, info.stray_bytes, info.damaged) == (2, 2 * STRAY, None)
    assert (clean.stray_objects, clean.stray_bytes, clean.damaged) == (0, 0, None)

    code, out, _ = run(capsys, "ls", f"s3://{bucket}/run")
    assert code == 0
    assert out.splitlines()[0].split()[:5] == ["STEP", "COMPLETE", "SIZE", "OBJECTS", "STRAYS"]
    assert row(out, "step_2")[:7] == ["2", "yes", *human_bytes(committed).split(), "2", "2", "(16.0"]
    assert row(out, "step_3")[5] == "-"

    code, out, _ = run(capsys, "info", f"s3://{bucket}/run/step_2")
    assert code == 0
    assert "strays       2 objects, 16.0 KiB, not referenced by .metadata" in out

    code, out, _ = run(capsys, "ls", "--json", f"s3://{bucket}/run")
    listed = json.loads(out)
    assert [(c["step"], c["complete"], c["size_bytes"], c["stray_objects"], c["stray_bytes"]) for c in listed][0] == (
        2,
        True,
        committed,
        2,
        2 * STRAY,
    )
    assert set(listed[0]) >= {"uri", "num_objects", "last_modified", "damaged"}

    code, out, _ = run(capsys, "info", "--json", f"s3://{bucket}/run/step_2")
    report = json.loads(out)
    assert code == 0 and report["stray_objects"] == 2 and report["damaged"] is None
    assert [key["key"] for key in report["keys"]] == ["step", "w"] and report["keys"][1]["shape"] == [32]


def test_a_committed_checkpoint_with_missing_or_short_objects_is_damaged(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for step in (1, 2, 3):
        save(bucket, f"run/step_{step}")
    s3.delete_object(Bucket=bucket, Key="run/step_1/__0_0.distcp")
    body = s3.get_object(Bucket=bucket, Key="run/step_2/__0_0.distcp")["Body"].read()
    s3.put_object(Bucket=bucket, Key="run/step_2/__0_0.distcp", Body=body[: len(body) // 2])

    found = {c.step: c for c in list_checkpoints(f"s3://{bucket}/run")}
    assert found[1].damaged == "1 of 1 referenced objects missing (e.g. __0_0.distcp)"
    assert found[2].damaged is not None and "shorter than the metadata needs (e.g. __0_0.distcp" in found[2].damaged
    assert found[3].damaged is None

    code, out, err = run(capsys, "ls", f"s3://{bucket}/run")
    assert code == 0
    assert [row(out, f"step_{step}")[1] for step in (1, 2, 3)] == ["DAMAGED", "DAMAGED", "yes"]
    assert f"s3dcp: damaged: s3://{bucket}/run/step_1: 1 of 1 referenced objects missing" in err

    for step in (1, 2):
        code, _, err = run(capsys, "info", f"s3://{bucket}/run/step_{step}")
        assert code == 3 and f"s3dcp: damaged: s3://{bucket}/run/step_{step}: " in err


def test_ls_says_where_checkpoints_are(s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    save(bucket, "team/run-a/step_1")
    s3.put_object(Bucket=bucket, Key="team/run-b/step_4/__0_0.distcp", Body=b"an incomplete save")
    s3.put_object(Bucket=bucket, Key="team/datasets/train.csv", Body=b"a,b")

    code, out, err = run(capsys, "ls", f"s3://{bucket}/team")
    assert (code, out) == (0, "")
    assert f"run-a/ and run-b/ hold checkpoints: s3dcp ls s3://{bucket}/team/run-a" in err

    code, out, err = run(capsys, "ls", f"s3://{bucket}/team/run-a/step_1")
    assert (code, out) == (0, "")
    assert "is a checkpoint itself" in err and f"s3dcp info s3://{bucket}/team/run-a/step_1" in err

    code, out, err = run(capsys, "ls", "--json", f"s3://{bucket}/team")
    assert code == 0 and json.loads(out) == [] and "hold checkpoints" in err

    code, out, _ = run(capsys, "ls", f"s3://{bucket}/team/run-b")
    assert code == 0 and row(out, "step_4")[:4] == ["4", "NO", "18", "B"]
