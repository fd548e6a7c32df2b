"""The s3dcp command end to end against the local S3 server: output, effects, exit codes.

Most cases call ``main(argv)`` in this process (same parsing, same code);
a few run the installed command in a subprocess to check what a shell sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3StorageReader, S3StorageWriter
from tests.conftest import REGION, list_keys
from tests.helpers import run_cli as run
from tests.integration.test_roundtrip import mixed_state_dict

pytestmark = pytest.mark.s3


def save(bucket: str, path: str, state: dict[str, Any] | None = None) -> dict[str, Any]:
    state = state if state is not None else {"w": torch.arange(64, dtype=torch.float32), "step": path}
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/{path}"))
    return state


def test_ls_shows_steps_in_numeric_order_and_incomplete_saves(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for step in (10, 9):
        save(bucket, f"run/step_{step}")
    s3.put_object(Bucket=bucket, Key="run/step_11/__0_0.distcp", Body=b"partial")
    code, out, _ = run(capsys, "ls", f"s3://{bucket}/run")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["STEP", "COMPLETE", "SIZE", "OBJECTS"]
    assert [line.split()[0] for line in lines[1:]] == ["9", "10", "11"]
    assert [line.split()[1] for line in lines[1:]] == ["yes", "yes", "NO"]
    assert lines[3].rstrip().endswith(f"s3://{bucket}/run/step_11")

    code, out, err = run(capsys, "ls", f"s3://{bucket}/empty")
    assert (code, out) == (0, "") and "no checkpoints" in err


def test_info_summarizes_the_metadata(s3_env: Any, bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    save(bucket, "ckpt", {"layer.weight": torch.zeros(3, 4, dtype=torch.bfloat16), "step": 7})
    code, out, _ = run(capsys, "info", f"s3://{bucket}/ckpt")
    assert code == 0
    assert "written by   1 rank(s), ranks 0-0" in out
    assert "xxh3-64 on 2 of 2 pieces" in out
    weight = next(line for line in out.splitlines() if line.startswith("layer.weight"))
    assert weight.split() == ["layer.weight", "tensor", "bfloat16", "3x4", "24", "B"]
    assert next(line for line in out.splitlines() if line.startswith("step")).split()[1] == "object"


def test_verify_passes_a_good_checkpoint_and_names_damage(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    save(bucket, "good", mixed_state_dict())
    code, out, _ = run(capsys, "verify", f"s3://{bucket}/good")
    assert code == 0 and out.rstrip().endswith("OK")

    save(bucket, "bad", {"first": torch.ones(1000), "second": torch.full((1000,), 2.0)})
    key = "bad/__0_0.distcp"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    reader = S3StorageReader(REGION, f"s3://{bucket}/bad")
    storage = reader.read_metadata().storage_data
    second = next(info for index, info in storage.items() if index.fqn == "second")
    body[second.offset + second.length // 2] ^= 0x01  # one bit, inside "second"
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    code, out, err = run(capsys, "verify", f"s3://{bucket}/bad")
    assert code == 3
    damaged = [line for line in err.splitlines() if line.startswith("s3dcp: damaged:")]
    assert len(damaged) == 1 and f"{key}: second:" in damaged[0]

    s3.delete_object(Bucket=bucket, Key=key)
    code, _, err = run(capsys, "verify", f"s3://{bucket}/bad")
    assert code == 3 and f"{key}: object is missing" in err


def test_rm_deletes_one_checkpoint(s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    save(bucket, "run/step_1")
    save(bucket, "run/step_10")  # shares the "run/step_1" text, must survive
    code, out, _ = run(capsys, "rm", f"s3://{bucket}/run/step_1")
    assert code == 0 and "deleted 2 objects" in out
    assert sorted(list_keys(s3, bucket)) == ["run/step_10/.metadata", "run/step_10/__0_0.distcp"]


def test_prune_keeps_the_newest_and_dry_run_changes_nothing(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for step in (1, 2, 3, 10):
        save(bucket, f"run/step_{step}")
    s3.put_object(Bucket=bucket, Key="run/step_11/__0_0.distcp", Body=b"a save in progress")
    before = list_keys(s3, bucket)

    code, out, _ = run(capsys, "prune", f"s3://{bucket}/run", "--keep", "2", "--dry-run")
    assert code == 0 and "of 2 checkpoint(s) under" in out and out.startswith("would delete ")
    assert list_keys(s3, bucket) == before

    code, out, _ = run(capsys, "prune", f"s3://{bucket}/run", "--keep", "2")
    assert code == 0
    remaining = {key.split("/")[1] for key in list_keys(s3, bucket)}
    assert remaining == {"step_3", "step_10", "step_11"}  # the running save is younger than the grace period

    code, out, _ = run(capsys, "prune", f"s3://{bucket}/run", "--keep", "2", "--grace-hours", "0")
    assert code == 0 and {key.split("/")[1] for key in list_keys(s3, bucket)} == {"step_3", "step_10"}


def test_gc_aborts_only_stale_uploads(s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    s3.create_multipart_upload(Bucket=bucket, Key="run/step_5/__0_0.distcp")
    s3.create_multipart_upload(Bucket=bucket, Key="elsewhere/__0_0.distcp")

    # moto reports every upload as started on 2010-11-10, so "young" here means
    # younger than the age asked for: 200,000 hours (~23 years) leaves it alone
    code, out, _ = run(capsys, "gc", f"s3://{bucket}/run", "--older-than-hours", "200000")
    assert code == 0 and "aborted 0 " in out
    code, out, _ = run(capsys, "gc", f"s3://{bucket}/run", "--older-than-hours", "0", "--dry-run")
    assert code == 0 and "would abort 1 " in out
    code, out, _ = run(capsys, "gc", f"s3://{bucket}/run", "--older-than-hours", "0")
    assert code == 0 and "aborted 1 " in out
    left = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == ["elsewhere/__0_0.distcp"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["ls", "not-a-uri"], 2, "s3://"),  # a malformed URI is a bad argument
        (["info", "s3://{bucket}/missing"], 1, "no complete checkpoint"),
        (["rm", "s3://{bucket}/missing"], 1, "nothing to delete"),
        (["ls", "s3://no-such-bucket-here/run"], 1, "does not exist"),
        (["prune", "s3://{bucket}/run"], 2, "--keep"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_the_installed_command_fails_with_one_line_and_a_reliable_code(
    s3_env: Any, bucket: str, argv: list[str], code: int, message: str
) -> None:
    command = [sys.executable, "-m", "s3dcp", *(arg.format(bucket=bucket) for arg in argv)]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    if code == 1:
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("s3dcp: error: ")
