"""Reading which objects a .metadata references, without torch's classes and without running code."""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp._errors import CheckpointDamagedError
from s3dcp._format.references import referenced_objects


def _saved_metadata(tmp_path: Path) -> bytes:
    state = {"a": torch.arange(10.0), "b": torch.ones(3, 4, dtype=torch.bfloat16), "step": 7}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp_path)))  # one process: no process group
    return (tmp_path / ".metadata").read_bytes()


def test_reads_the_objects_and_extents_of_a_file_system_checkpoint(tmp_path: Path) -> None:
    body = _saved_metadata(tmp_path)
    needed = referenced_objects(body, "ckpt/.metadata")
    files = {p.name: p.stat().st_size for p in tmp_path.glob("*.distcp")}
    assert set(needed) == set(files)
    for name, size in needed.items():
        assert 0 < size <= files[name]


def test_runs_nothing_the_pickle_names(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self) -> object:
            return (subprocess.check_call, (["touch", str(tmp_path / "ran")],))

    with pytest.raises(CheckpointDamagedError, match="storage records"):
        referenced_objects(pickle.dumps(Boom()), "x/.metadata")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("body", [b"", b"not a pickle", pickle.dumps({"storage_data": 1})[:5]])
def test_unreadable_bytes_are_damage(body: bytes) -> None:
    with pytest.raises(CheckpointDamagedError, match="x/.metadata"):
        referenced_objects(body, "x/.metadata")
