"""What a save and a load report: phase stats to a callback, key=value log lines, silence by default."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3StorageReader, S3StorageWriter
from s3dcp._stats import PhaseStats
from tests.conftest import REGION, list_keys
from tests.helpers import blank_like

pytestmark = pytest.mark.s3


def test_phases_reach_the_callback_with_true_sizes(s3_env: Any, s3: Any, bucket: str) -> None:
    state = {"a": torch.randn(300, 300), "b": torch.arange(1000), "step": 42}
    seen: list[PhaseStats] = []
    writer = S3StorageWriter(REGION, f"s3://{bucket}/run/step_42", thread_count=2, on_phase=seen.append)
    dcp.save(state, storage_writer=writer)

    assert [s.phase for s in seen] == ["save.write", "save.commit"]
    assert writer.last_stats == seen
    write, commit = seen
    sizes = list_keys(s3, bucket, "run/step_42/")
    assert write.bytes == sum(size for key, size in sizes.items() if key.endswith(".distcp"))
    assert write.objects == 2 and write.items == 3 and write.requests == 2  # one small PUT per object
    assert commit.bytes == sizes["run/step_42/.metadata"]
    assert all(s.step == 42 and s.rank == 0 and s.checkpoint == f"s3://{bucket}/run/step_42" for s in seen)
    assert write.seconds > 0 and write.mb_per_s == pytest.approx(write.bytes / 1e6 / write.seconds)

    loaded_stats: list[PhaseStats] = []
    reader = S3StorageReader(REGION, f"s3://{bucket}/run/step_42", on_phase=loaded_stats.append)
    dcp.load(blank_like(state), storage_reader=reader)
    assert [s.phase for s in loaded_stats] == ["load.metadata", "load.read"]
    metadata, read = loaded_stats
    assert metadata.bytes == commit.bytes
    assert read.items == 3 and read.bytes == write.bytes and read.objects == 2


def test_each_phase_logs_one_parseable_info_line(s3_env: Any, bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="s3dcp"):
        dcp.save({"w": torch.ones(10)}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/ckpt"))
    lines = [r for r in caplog.records if r.name == "s3dcp" and r.levelno == logging.INFO]
    assert [r.getMessage().split()[0] for r in lines] == ["save.write", "save.commit"]
    fields = dict(pair.split("=", 1) for pair in lines[0].getMessage().split()[1:])
    assert set(fields) == {"rank", "checkpoint", "step", "items", "objects", "requests", "bytes", "seconds", "mb_per_s"}
    assert fields["checkpoint"] == f"s3://{bucket}/ckpt" and fields["step"] == "-"
    assert lines[0].s3dcp["bytes"] == int(fields["bytes"])  # type: ignore[attr-defined]


def test_nothing_is_printed_by_default(s3_env: Any, bucket: str) -> None:
    script = (
        "import torch, torch.distributed.checkpoint as dcp, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from s3dcp import S3StorageWriter, S3StorageReader\n"
        f"uri = 's3://{bucket}/quiet'\n"
        "state = {'w': torch.ones(10)}\n"
        f"dcp.save(state, storage_writer=S3StorageWriter('{REGION}', uri))\n"
        f"dcp.load(state, storage_reader=S3StorageReader('{REGION}', uri))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
