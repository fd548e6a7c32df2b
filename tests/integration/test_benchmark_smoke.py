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
        assert row["parallel"] == 1 and row["aggregate_mb_per_s"] > 0
    assert report["settings"]["workload"] == "mixed" and report["settings"]["parallel"] == 1
    assert (tmp_path / "smoke.md").read_text().count("| s3dcp |") == 2


def test_one_tensor_workload_and_parallel_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workload one-tensor`` and ``--parallel`` without starting anything (an end-to-end
    ``--parallel 2`` run would cost three more worker processes, over 10 s of CPU)."""
    import torch

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    names = ("compare", "transfer", "workload", "methods")
    try:
        import compare
        import workload
        from transfer import check_loaded

        state = workload.build("one-tensor", 1)
        assert list(state) == ["model.weight"] and state["model.weight"].dtype == torch.float32
        assert workload.tensor_bytes(state) == 1024 * 1024
        check_loaded(state, 1, "one-tensor", "one-tensor")  # the same bytes from the same seed
        state["model.weight"][0] += 1
        with pytest.raises(SystemExit, match="wrong bytes"):
            check_loaded(state, 1, "one-tensor", "one-tensor")

        run = {  # what compare._workers makes of two workers at once
            "method": "s3dcp",
            "op": "save",
            "bytes": 1024 * 1024,
            "wall_s": 1.0,
            "cpu_s": 0.5,
            "peak_rss_growth_mib": 10.0,
            "parallel": 2,
            "mb_per_s": 1.2,
            "aggregate_mb_per_s": 1.9,
            "workers": [{"wall_s": 0.9}, {"wall_s": 1.1}],
            "requests": 8,
            "request_body_bytes": 2 * 1024 * 1024,
            "response_body_bytes": 0,
            "requests_by_op": {"PutObject": 8},
        }
        row = compare.summarize([run], compare.Target("sink", "http"), 1)
        assert row["parallel"] == 2 and row["mb_per_s"] == 1.2 and row["aggregate_mb_per_s"] == 1.9
        assert (row["wall_min_s"], row["wall_max_s"]) == (0.9, 1.1)
        table = "\n".join(compare._main_table([row]))
        assert "MB/s per worker (median of 2)" in table and "aggregate MB/s (2 at once)" in table
        assert "| save | s3dcp | 1.00 (0.90-1.10) | 1 | 2 |" in table
    finally:
        for name in names:
            sys.modules.pop(name, None)


@pytest.mark.ranks
def test_shared_reads_benchmark_runs_on_two_ranks(tmp_path: Path) -> None:
    out = tmp_path / "shared.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "shared_reads.py"),
        *("--ranks", "2", "--layouts", "replicated,sharded", "--methods", "s3dcp,s3dcp-no-sharing"),
        *("--size-mib", "1", "--latency-ms", "0", "--conn-mbps", "0", "--out", str(out)),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    rows = {(row["layout"], row["method"]): row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == {
        (layout, method) for layout in ("replicated", "sharded") for method in ("s3dcp", "s3dcp-no-sharing")
    }
    assert rows["replicated", "s3dcp"]["times_stored"] <= 1.25  # each byte from the store about once
    assert rows["replicated", "s3dcp-no-sharing"]["times_stored"] >= 2  # once per rank
    assert (tmp_path / "shared.md").read_text().count("| replicated |") == 2
