"""``s3dcp cp`` checks its source before the destination changes, and copies only what the checkpoint is."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import CheckpointDamagedError, CheckpointNotFoundError, S3StorageReader, S3StorageWriter
from s3dcp._cli import human_bytes
from s3dcp._copy import copy_checkpoint
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION, list_keys
from tests.helpers import assert_same, blank_like
from tests.helpers import run_cli as run

pytestmark = pytest.mark.s3

OLD = {"w": torch.arange(32, dtype=torch.float32), "step": 1}
NEW = {"w": torch.arange(64, dtype=torch.float32) * -1, "step": 2}


def save(uri: str, state: dict[str, Any]) -> None:
    dcp.save(state, storage_writer=S3StorageWriter(REGION, uri))


def snapshot(s3: Any, bucket: str) -> dict[str, bytes]:
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in list_keys(s3, bucket)}


def lose(s3: Any, bucket: str, key: str) -> None:
    s3.delete_object(Bucket=bucket, Key=key)


def cut(s3: Any, bucket: str, key: str) -> None:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2])


def scramble(s3: Any, bucket: str, key: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=b"not a pickle at all")


@pytest.mark.parametrize(
    ("damage", "key", "said"),
    [
        (lose, "src/__0_0.distcp", "__0_0.distcp, which is missing"),
        (cut, "src/__0_0.distcp", "__0_0.distcp holds"),
        (scramble, "src/.metadata", "does not unpickle"),
    ],
)
def test_a_damaged_source_is_refused_before_the_destination_changes(
    s3_env: Any,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Any,
    key: str,
    said: str,
) -> None:
    save(f"s3://{bucket}/src", NEW)
    save(f"s3://{bucket}/dst", OLD)
    damage(s3, bucket, key)
    before = snapshot(s3, bucket)

    code, out, err = run(capsys, "cp", "--overwrite", f"s3://{bucket}/src", f"s3://{bucket}/dst")
    assert code == 1 and out == "" and said in err and "damaged" in err
    assert snapshot(s3, bucket) == before
    loaded = blank_like(OLD)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/dst"))
    assert_same(OLD, loaded)

    with pytest.raises(CheckpointDamagedError):
        copy_checkpoint(f"s3://{bucket}/src", tmp_path / "local")
    assert not (tmp_path / "local").exists()


def test_a_local_source_with_a_short_file_is_refused(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "src"
    dcp.save(NEW, storage_writer=dcp.FileSystemWriter(source))
    shard = source / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:10])
    code, _, err = run(capsys, "cp", str(source), f"s3://{bucket}/dst")
    assert code == 1 and "__0_0.distcp holds 10 bytes" in err
    assert list_keys(s3, bucket) == {}


def test_strays_of_the_source_are_left_behind_and_counted(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save(f"s3://{bucket}/src", NEW)
    s3.put_object(Bucket=bucket, Key="src/__1_0.distcp", Body=b"s" * 3072)  # left by a bigger, earlier save
    s3.put_object(Bucket=bucket, Key="src/0000/__0_0.distcp", Body=b"s" * 1024)
    s3.put_object(Bucket=bucket, Key="src/notes.txt", Body=b"not the checkpoint's")
    save(f"s3://{bucket}/src/nested", OLD)  # another checkpoint, not src's
    copied = {
        key: size for key, size in list_keys(s3, bucket, "src/").items() if key in ("src/.metadata", "src/__0_0.distcp")
    }

    code, out, _ = run(capsys, "cp", f"s3://{bucket}/src", f"s3://{bucket}/dst")
    assert code == 0
    assert list_keys(s3, bucket, "dst/") == {key.replace("src/", "dst/"): size for key, size in copied.items()}
    summary, strays = out.splitlines()
    assert summary.endswith(f": 2 objects, {human_bytes(sum(copied.values()))}")
    assert strays.startswith("left behind 2 stray object(s), 4.0 KiB")

    code, out, _ = run(capsys, "cp", f"s3://{bucket}/src", str(tmp_path / "local"))
    assert code == 0 and "left behind 2 stray object(s)" in out
    assert sorted(p.name for p in (tmp_path / "local").rglob("*")) == [".metadata", "__0_0.distcp"]


def test_the_api_reports_what_was_copied_and_left(s3_env: Any, s3: Any, bucket: str) -> None:
    save(f"s3://{bucket}/src", NEW)
    s3.put_object(Bucket=bucket, Key="src/__1_0.distcp", Body=b"s" * 100)
    report = copy_checkpoint(f"s3://{bucket}/src", f"s3://{bucket}/dst")
    assert report.bytes_copied == sum(list_keys(s3, bucket, "dst/").values())
    assert (report.objects, report.strays_left, report.stray_bytes_left) == (2, 1, 100)
    assert (report.strays_removed, report.stray_bytes_removed) == (0, 0)


def test_a_source_whose_save_has_not_committed_is_named_so(s3_env: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    s3.put_object(Bucket=bucket, Key="src/.s3dcp-saving", Body=b'{"save_id": "x"}\n')
    s3.put_object(Bucket=bucket, Key="src/__0_0.distcp", Body=b"partial")
    with pytest.raises(CheckpointNotFoundError, match=r"has not committed \(\.s3dcp-saving is there"):
        copy_checkpoint(f"s3://{bucket}/src", str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()


def test_a_metadata_removed_while_the_copy_plans_is_not_found_not_a_bare_404(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """The source is listed, then a save un-commits it before its .metadata is read."""
    save(f"s3://{bucket}/src", OLD)
    hold = proxy.add_rule("hold", method="GET", key_pattern=r"src/\.metadata$", count=1)
    with ThreadPoolExecutor(1) as pool:
        copying = pool.submit(copy_checkpoint, f"s3://{bucket}/src", str(tmp_path / "dst"))
        assert hold.hit.wait(60), "the copy never read the source's .metadata"
        lose(s3, bucket, "src/.metadata")
        hold.release()
        with pytest.raises(CheckpointNotFoundError, match="was removed while the copy was being planned"):
            copying.result(timeout=60)
    assert not (tmp_path / "dst").exists()
