"""``s3dcp cp`` end to end against the local S3 server: what it copies, what it refuses, what it never harms."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import CheckpointExistsError, RoundRobinPrefixStrategy, S3StorageReader, S3StorageWriter
from s3dcp._copy import copy_checkpoint
from tests.conftest import REGION, list_keys
from tests.helpers import assert_same, blank_like
from tests.helpers import run_cli as run
from tests.integration.test_roundtrip import mixed_state_dict

pytestmark = pytest.mark.s3


def save(uri: str, state: dict[str, Any], overwrite: bool = False) -> None:
    dcp.save(state, storage_writer=S3StorageWriter(REGION, uri, overwrite=overwrite))


def assert_loads(uri: str, state: dict[str, Any]) -> None:
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, uri))
    assert_same(state, loaded)


def test_cp_round_trip_local_s3_local_loads_with_both_readers(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = mixed_state_dict()
    local = tmp_path / "original"
    dcp.save(state, storage_writer=dcp.FileSystemWriter(local))

    assert run(capsys, "cp", str(local), f"s3://{bucket}/uploaded")[0] == 0
    assert_loads(f"s3://{bucket}/uploaded", state)

    assert run(capsys, "cp", f"s3://{bucket}/uploaded", f"s3://{bucket}/copied")[0] == 0
    assert run(capsys, "cp", f"s3://{bucket}/copied", str(tmp_path / "downloaded"))[0] == 0
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=dcp.FileSystemReader(tmp_path / "downloaded"))
    assert_same(state, loaded)
    assert sorted(p.name for p in (tmp_path / "downloaded").iterdir()) == sorted(p.name for p in local.iterdir())

    code, _, err = run(capsys, "cp", str(local), f"s3://{bucket}/uploaded")
    assert code == 1 and "already holds a complete checkpoint" in err
    assert "add --overwrite" in err and "overwrite=True" not in err
    with pytest.raises(CheckpointExistsError, match="overwrite=True"):
        copy_checkpoint(local, f"s3://{bucket}/uploaded")  # API callers get advice in API terms
    assert run(capsys, "cp", str(local), f"s3://{bucket}/uploaded", "--overwrite")[0] == 0


def test_cp_refuses_an_incomplete_source(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3.put_object(Bucket=bucket, Key="partial/__0_0.distcp", Body=b"x")
    code, _, err = run(capsys, "cp", f"s3://{bucket}/partial", str(tmp_path / "out"))
    assert code == 1 and ".metadata is missing" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("source", "destination", "why"),
    [
        ("run/x", "run/x", "is the source itself"),
        ("run/x", "run/x/", "is the source itself"),
        ("run/x", "run/x/sub", "inside the source"),
        ("run/x/nested", "run/x", "source lies inside the destination"),
        ("run/x", "", "source lies inside the destination"),
    ],
)
def test_cp_refuses_a_destination_that_overlaps_the_source_and_changes_nothing(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str], source: str, destination: str, why: str
) -> None:
    state = {"w": torch.arange(64, dtype=torch.float32), "step": 3}
    nested = {"w": torch.ones(8), "step": 4}
    save(f"s3://{bucket}/run/x", state)
    save(f"s3://{bucket}/run/x/nested", nested)
    before = {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in list_keys(s3, bucket)}

    destination_uri = f"s3://{bucket}/{destination}" if destination else f"s3://{bucket}"
    code, out, err = run(capsys, "cp", "--overwrite", f"s3://{bucket}/{source}", destination_uri)

    assert code == 1 and out == "" and why in err and "copy to a path outside the source" in err
    after = {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in list_keys(s3, bucket)}
    assert after == before
    assert_loads(f"s3://{bucket}/run/x", state)
    assert_loads(f"s3://{bucket}/run/x/nested", nested)


def test_cp_overlap_of_local_paths_is_judged_on_resolved_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x" / "sub").mkdir(parents=True)
    code, _, err = run(capsys, "cp", str(tmp_path / "x" / "sub" / ".."), str(tmp_path / "x"))
    assert code == 1 and "is the source itself" in err


def test_cp_to_a_sibling_whose_name_extends_the_source_is_not_an_overlap(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {"w": torch.arange(16, dtype=torch.float32)}
    save(f"s3://{bucket}/run/x", state)
    assert run(capsys, "cp", f"s3://{bucket}/run/x", f"s3://{bucket}/run/x2")[0] == 0
    assert_loads(f"s3://{bucket}/run/x2", state)


@pytest.fixture
def umask_027() -> Any:
    """The process umask set to 027 for the test, then put back."""
    previous = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(previous)


def test_cp_to_a_directory_creates_files_with_the_mode_of_a_plain_create(
    s3_env: Any, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], umask_027: int
) -> None:
    state = {"w": torch.arange(16, dtype=torch.float32)}
    dcp.save(
        state,
        storage_writer=S3StorageWriter(
            REGION, f"s3://{bucket}/src", prefix_strategy=RoundRobinPrefixStrategy(["group"])
        ),
    )
    assert run(capsys, "cp", f"s3://{bucket}/src", str(tmp_path / "out"))[0] == 0
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert sorted(path.relative_to(tmp_path / "out").as_posix() for path in files) == [
        ".metadata",
        "group/__0_0.distcp",
    ]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask_027, path
    # and the same as torch's own writer gives its files under this umask
    dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp_path / "torch"))
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "torch").iterdir()} == {0o640}
