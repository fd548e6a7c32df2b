"""``s3dcp verify --json``: one JSON document on stdout for scripts, the same exit codes."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3StorageWriter
from s3dcp._cli import EXIT_DAMAGED, cmd_verify
from tests.conftest import REGION, list_keys

pytestmark = pytest.mark.s3


def verify_json(capsys: pytest.CaptureFixture[str], uri: str) -> tuple[int, dict[str, Any], str]:
    args = argparse.Namespace(uri=uri, region=None, endpoint_url=None, profile=None, verbose=False, json=True)
    code = cmd_verify(args)
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_verify_json_reports_a_good_and_a_damaged_checkpoint(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {"first": torch.ones(100), "second": torch.full((100,), 2.0), "step": 3}
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/ckpt"))
    shard = list_keys(s3, bucket, "ckpt/")["ckpt/__0_0.distcp"]

    code, document, err = verify_json(capsys, f"s3://{bucket}/ckpt")
    assert code == 0 and err == ""
    assert document == {
        "uri": f"s3://{bucket}/ckpt",
        "items": 3,
        "checked": 3,
        "unchecked": 0,
        "bytes_read": shard,
        "problems": [],
        "ok": True,
    }

    s3.delete_object(Bucket=bucket, Key="ckpt/__0_0.distcp")
    code, document, _ = verify_json(capsys, f"s3://{bucket}/ckpt")
    assert code == EXIT_DAMAGED and document["ok"] is False and document["bytes_read"] == 0
    assert document["problems"] == [
        {"key": "ckpt/__0_0.distcp", "item": "", "detail": "object is missing (3 items lost)"},
    ]
