"""The demo on a user's own bucket works in a prefix of its own and deletes nothing else."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3StorageWriter
from tests.conftest import REGION, list_keys

pytestmark = pytest.mark.s3

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "dcp"


def _example(name: str) -> ModuleType:
    """``examples/dcp/<name>.py`` imported as the module ``name``, as running the example imports it.

    Registered in ``sys.modules`` so that ``demo``'s own ``from _s3_target import ...`` finds it.
    """
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


s3_target = _example("_s3_target").s3_target
demo = _example("demo")


def save(uri: str) -> None:
    dcp.save({"w": torch.ones(16), "uri": uri}, storage_writer=S3StorageWriter(REGION, uri))


def test_demo_on_your_own_bucket_leaves_what_was_there(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for step in (100, 200):
        save(f"s3://{bucket}/prod-run/step_{step}")
    s3.put_object(Bucket=bucket, Key="datasets/train.csv", Body=b"a,b\n1,2\n")
    running = s3.create_multipart_upload(Bucket=bucket, Key="prod-run/step_300/__0_0.distcp")  # another job's save
    before = list_keys(s3, bucket)

    with s3_target(f"s3://{bucket}") as base:
        assert base.startswith(f"s3://{bucket}/s3dcp-demo-") and base.count("/") == 3
        with s3_target(f"s3://{bucket}/") as other:
            assert other != base
        for step in (3, 6, 9):
            save(f"{base}/step_{step}")
        demo.housekeeping(base, f"{base}/step_9")

    out = capsys.readouterr().out
    assert f"a new prefix of its own under s3://{bucket}" in out
    demo_prefix = base.split("/", 3)[3] + "/"
    assert {key.split("/")[1] for key in list_keys(s3, bucket, demo_prefix)} == {"step_6", "step_9"}
    assert {k: v for k, v in list_keys(s3, bucket).items() if not k.startswith(demo_prefix)} == before
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [running["UploadId"]]
