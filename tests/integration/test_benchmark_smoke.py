"""The side-by-side benchmark runs end to end at 4 MiB, so a change that breaks it shows here, not at the next `make bench`.

It measures nothing here: timings on a shared test machine mean nothing, and
timings never decide a test. It checks that every requested measurement was
made and recorded (compare.py itself checks every load bit for bit).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.s3, pytest.mark.moto_only("the benchmark starts its own moto server")]

REPO = Path(__file__).resolve().parents[2]


def test_compare_saves_and_loads_through_s3dcp_at_4_mib(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "compare.py"),
        "--server",
        "moto",
        "--scheme",
        "http",
        "--methods",
        "s3dcp",
        "--ops",
        "save,load",
        "--runs",
        "1",
        "--size-mib",
        "4",
        "--no-partial",
        "--out",
        str(out),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(row["method"], row["op"]): row for row in report["rows"]}
    assert set(rows) == {("s3dcp", "save"), ("s3dcp", "load")}
    for row in rows.values():
        assert row["runs"] == 1 and row["size_mib"] == 4 and row["requests"] > 0
        assert row["wall_s"] > 0 and row["cpu_s_per_gib"] > 0
    assert (tmp_path / "smoke.md").read_text().count("| s3dcp |") == 2
