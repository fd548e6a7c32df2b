"""Progress of ``cp`` and ``verify``: bytes reported as they flow, and the line a terminal shows."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3StorageWriter
from s3dcp import _copy as copy_module
from s3dcp import _verify as verify_module
from s3dcp._cli import main
from s3dcp._copy import copy_checkpoint
from s3dcp._progress import human_bytes
from s3dcp._s3 import upload as upload_module
from s3dcp._verify import verify_checkpoint
from tests.conftest import REGION, list_keys

pytestmark = pytest.mark.s3

STATE = {"w": torch.arange(2048, dtype=torch.float32), "step": 5}  # one shard of about 8 KiB


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Events:
    """What the callbacks heard, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def on_bytes(self, nbytes: int) -> None:
        self.seen.append(("bytes", nbytes))

    def on_object(self, name: str, _size: int) -> None:
        self.seen.append(("object", name))

    def total(self) -> int:
        return sum(value for kind, value in self.seen if kind == "bytes")

    def chunks_before(self, name: str) -> int:
        done = self.seen.index(("object", name))
        return sum(1 for kind, _ in self.seen[:done] if kind == "bytes")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 KiB reads, so a KiB-sized shard takes several, as a GiB one takes many at full size."""
    monkeypatch.setattr(copy_module, "_READ_CHUNK", 1024)  # downloads
    monkeypatch.setattr(upload_module, "_FILE_CHUNK", 1024)  # uploads of local files
    monkeypatch.setattr(verify_module, "_CHUNK", 1024)


def test_cp_reports_bytes_as_they_flow_in_every_direction(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, small_chunks: None
) -> None:
    dcp.save(STATE, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/src"))
    shard = list_keys(s3, bucket, "src/")["src/__0_0.distcp"]
    assert shard > 4 * 1024

    down = Events()
    report = copy_checkpoint(f"s3://{bucket}/src", tmp_path / "local", on_bytes=down.on_bytes, on_object=down.on_object)
    assert down.chunks_before("__0_0.distcp") >= 4 and down.total() == report.bytes_copied

    up = Events()
    report = copy_checkpoint(tmp_path / "local", f"s3://{bucket}/up", on_bytes=up.on_bytes, on_object=up.on_object)
    assert up.chunks_before("__0_0.distcp") >= 4 and up.total() == report.bytes_copied

    across = Events()
    report = copy_checkpoint(f"s3://{bucket}/src", f"s3://{bucket}/across", on_bytes=across.on_bytes)
    assert across.total() == report.bytes_copied == sum(list_keys(s3, bucket, "across/").values())


def test_verify_reports_bytes_as_they_flow_and_its_totals_first(s3_env: Any, bucket: str, small_chunks: None) -> None:
    dcp.save(STATE, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/ckpt"))
    events, totals = Events(), []
    report = verify_checkpoint(
        f"s3://{bucket}/ckpt",
        on_bytes=events.on_bytes,
        on_object=events.on_object,
        on_totals=lambda objects, nbytes: totals.append((objects, nbytes)),
    )
    key = "ckpt/__0_0.distcp"
    assert report.ok and events.chunks_before(key) >= 4 and events.total() == report.bytes_read
    assert len(totals) == 1 and totals[0][0] == 1 and 0 < totals[0][1] <= report.bytes_read


def final_line(stream: io.StringIO) -> str:
    return stream.getvalue().split("\r")[-1]


def test_the_terminal_line_of_cp_and_verify_shows_objects_bytes_percentage_and_rate(
    s3_env: Any, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dcp.save(STATE, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/src"))
    total = human_bytes(sum(list_keys(s3, bucket, "src/").values()))

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["cp", f"s3://{bucket}/src", f"s3://{bucket}/dst"]) == 0
    line = final_line(terminal)
    assert line.startswith(f"copied 2/2 objects, {total} of {total} (100%), ") and line.rstrip().endswith("/s")
    assert line.endswith("\n")

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["verify", f"s3://{bucket}/dst"]) == 0
    line = final_line(terminal)
    assert line.startswith("verified 1/1 objects, ") and "(100%)" in line and line.endswith("\n")
