"""The local tier's bookkeeping: which checkpoints are complete, what retention removes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from s3dcp._tiered.local import (
    complete_local_checkpoints,
    mark_uploading,
    prune_local,
    read_local_metadata,
    uploading_names,
    write_local_metadata,
)


def make_checkpoint(root: Path, name: str, ranks: int = 2, complete: bool = True) -> None:
    directory = root / name
    directory.mkdir(parents=True)
    for rank in range(ranks):
        (directory / f"__{rank}_0.distcp").write_bytes(b"x" * 10)
    if complete:
        (directory / ".metadata").write_bytes(b"not parsed here")


def test_complete_checkpoints_in_step_order(tmp_path: Path) -> None:
    for name in ("step_10", "step_9", "final", "step_100"):
        make_checkpoint(tmp_path, name)
    make_checkpoint(tmp_path, "step_200", complete=False)
    (tmp_path / ".s3dcp-uploading").mkdir()
    assert complete_local_checkpoints(tmp_path) == ["final", "step_9", "step_10", "step_100"]
    assert complete_local_checkpoints(tmp_path / "absent") == []


def test_coordinator_prunes_all_but_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        make_checkpoint(tmp_path, f"step_{step}")
    removed = prune_local(tmp_path, 2, current="step_4", own_stem="__0_", coordinator=True)
    assert removed == ["step_1", "step_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_3", "step_4"]


def test_other_ranks_remove_only_their_own_files(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        make_checkpoint(tmp_path, f"step_{step}")
    prune_local(tmp_path, 1, current="step_3", own_stem="__1_", coordinator=False)
    assert sorted(p.name for p in (tmp_path / "step_1").iterdir()) == [".metadata", "__0_0.distcp"]
    assert sorted(p.name for p in (tmp_path / "step_3").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]


def test_current_and_uploading_checkpoints_are_spared(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        make_checkpoint(tmp_path, f"step_{step}")
    mark = mark_uploading(tmp_path, "step_1", rank=0)
    # an older save of a lower step going on now (a restart from an older checkpoint) is "current"
    removed = prune_local(tmp_path, 1, current="step_2", own_stem="__0_", coordinator=True)
    assert removed == ["step_3"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["step_1", "step_2", "step_4"]
    mark.unlink()
    assert prune_local(tmp_path, 1, current="step_4", own_stem="__0_", coordinator=True) == ["step_1", "step_2"]


def test_marks_of_dead_processes_do_not_count(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(child.stdout)
    live = mark_uploading(tmp_path, "step_1", rank=0)
    dead = live.with_name(live.name.replace(f"@{os.getpid()}@", f"@{dead_pid}@").replace("step_1", "step_2"))
    dead.touch()
    assert uploading_names(tmp_path) == {"step_1"}


def test_local_metadata_is_replaced_whole(tmp_path: Path) -> None:
    write_local_metadata(tmp_path, b"first", sync=True)
    write_local_metadata(tmp_path, b"second", sync=False)
    assert (tmp_path / ".metadata").read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".metadata"]


def test_damaged_local_metadata_reads_as_absent(tmp_path: Path) -> None:
    assert read_local_metadata(tmp_path) is None
    (tmp_path / ".metadata").write_bytes(b"\x80\x04 not a pickle")
    assert read_local_metadata(tmp_path) is None


def test_local_reads_fill_the_whole_item_even_when_the_os_returns_less(tmp_path: Path) -> None:
    """read() returns at most about 2 GiB at once: big items need several reads, not a fallback."""
    from s3dcp._tiered.reader import _read_at

    class ShortReads:
        def __init__(self, data: bytes) -> None:
            self.data, self.position = data, 0

        def seek(self, offset: int) -> int:
            self.position = offset
            return offset

        def readinto(self, into: memoryview) -> int:
            count = min(3, len(into), len(self.data) - self.position)  # never more than 3 bytes
            into[:count] = self.data[self.position : self.position + count]
            self.position += count
            return count

    stream = ShortReads(b"0123456789abcdef")
    into = memoryview(bytearray(10))
    assert _read_at(stream, 4, into) == 10 and bytes(into) == b"456789abcd"
    assert _read_at(stream, 12, memoryview(bytearray(10))) == 4  # cut short at end of file
