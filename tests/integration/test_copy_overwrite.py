"""``s3dcp cp --overwrite``: the checkpoint being replaced stays loadable as long as it can, and only its strays go.

The fault proxy refuses one chosen transfer, so each test can stop a copy at
a known point and check what a crash there would leave behind.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import RoundRobinPrefixStrategy, S3StorageReader, S3StorageWriter
from s3dcp._cli import cmd_cp, human_bytes
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION, list_keys
from tests.helpers import assert_same, blank_like
from tests.helpers import run_cli as run

pytestmark = pytest.mark.s3

OLD = {"w": torch.arange(32, dtype=torch.float32), "step": 1}
NEW = {"w": torch.arange(32, dtype=torch.float32) * -1, "step": 2}


def save(uri: str, state: dict[str, Any], group: str | None = None) -> None:
    strategy = RoundRobinPrefixStrategy([group]) if group else None
    dcp.save(state, storage_writer=S3StorageWriter(REGION, uri, prefix_strategy=strategy))


def loads_as(state: dict[str, Any], reader: Any) -> None:
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=reader)
    assert_same(state, loaded)


def keys_in_order(proxy: FaultProxy) -> list[tuple[str, str]]:
    return [(record.method, record.path) for record in proxy.requests() if record.method in ("PUT", "DELETE")]


def test_s3_overwrite_without_replaced_objects_keeps_the_old_commit_until_the_new_one_replaces_it(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    save(f"s3://{bucket}/src", NEW)
    save(f"s3://{bucket}/dst", OLD, group="old")  # dst/old/__0_0.distcp: no name in common with src
    save(f"s3://{bucket}/dst/nested", OLD)  # another checkpoint inside dst: not dst's
    s3.put_object(Bucket=bucket, Key="dst/notes.txt", Body=b"the user's")

    proxy.clear()
    refusal = proxy.add_rule("access_denied", method="PUT", key_pattern=rf"/{bucket}/dst/__0_0\.distcp$")
    code, _, err = run(capsys, "cp", "--overwrite", f"s3://{bucket}/src", f"s3://{bucket}/dst")
    assert code == 1 and refusal.hits == 1 and "Traceback" not in err
    loads_as(OLD, S3StorageReader(REGION, f"s3://{bucket}/dst"))  # a crash here harms nothing

    proxy.clear()
    code, out, _ = run(capsys, "cp", "--overwrite", f"s3://{bucket}/src", f"s3://{bucket}/dst")
    assert code == 0
    writes = keys_in_order(proxy)
    assert ("DELETE", f"/{bucket}/dst/.metadata") not in writes
    assert writes.index(("PUT", f"/{bucket}/dst/__0_0.distcp")) < writes.index(("PUT", f"/{bucket}/dst/.metadata"))
    loads_as(NEW, S3StorageReader(REGION, f"s3://{bucket}/dst"))
    loads_as(OLD, S3StorageReader(REGION, f"s3://{bucket}/dst/nested"))
    assert sorted(list_keys(s3, bucket, "dst/")) == [
        "dst/.metadata",
        "dst/__0_0.distcp",
        "dst/nested/.metadata",
        "dst/nested/__0_0.distcp",
        "dst/notes.txt",
    ]
    assert "removed 1 stray object(s)" in out


def test_s3_overwrite_uncommits_right_before_the_first_replacement_and_never_earlier(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "src"
    dcp.save(NEW | {"more": torch.ones(16)}, storage_writer=dcp.FileSystemWriter(source, thread_count=2))
    assert sorted(p.name for p in source.iterdir()) == [".metadata", "__0_0.distcp", "__0_1.distcp"]
    save(f"s3://{bucket}/dst", OLD)  # dst/__0_0.distcp will be replaced, __0_1 is new
    destination = f"s3://{bucket}/dst"

    proxy.clear()
    proxy.add_rule("access_denied", method="PUT", key_pattern=rf"/{bucket}/dst/__0_1\.distcp$")
    assert run(capsys, "cp", "--overwrite", str(source), destination)[0] == 1
    loads_as(OLD, S3StorageReader(REGION, destination))  # failed before anything was replaced

    proxy.clear()
    proxy.add_rule("access_denied", method="PUT", key_pattern=rf"/{bucket}/dst/__0_0\.distcp$")
    assert run(capsys, "cp", "--overwrite", str(source), destination)[0] == 1
    writes = keys_in_order(proxy)
    uncommit = writes.index(("DELETE", f"/{bucket}/dst/.metadata"))
    assert writes.index(("PUT", f"/{bucket}/dst/__0_1.distcp")) < uncommit
    assert uncommit < writes.index(("PUT", f"/{bucket}/dst/__0_0.distcp"))
    assert "dst/.metadata" not in list_keys(s3, bucket)  # no old commit over a mix of old and new

    proxy.clear()
    assert run(capsys, "cp", "--overwrite", str(source), destination)[0] == 0
    loads_as(NEW | {"more": torch.ones(16)}, S3StorageReader(REGION, destination))


def test_local_overwrite_keeps_the_old_commit_removes_only_strays(
    proxied_env: Any, proxy: FaultProxy, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save(f"s3://{bucket}/src", NEW, group="new")  # src/new/__0_0.distcp
    destination = tmp_path / "dst"
    dcp.save(OLD | {"more": torch.ones(16)}, storage_writer=dcp.FileSystemWriter(destination, thread_count=2))
    (destination / "notes.txt").write_text("the user's")
    dcp.save(OLD, storage_writer=dcp.FileSystemWriter(destination / "nested"))

    proxy.clear()
    proxy.add_rule("access_denied", method="GET", key_pattern=rf"/{bucket}/src/new/__0_0\.distcp$")
    assert run(capsys, "cp", "--overwrite", f"s3://{bucket}/src", str(destination))[0] == 1
    loads_as(OLD | {"more": torch.ones(16)}, dcp.FileSystemReader(destination))
    assert not (destination / "new").exists() or not any((destination / "new").iterdir())

    proxy.clear()
    code, out, _ = run(capsys, "cp", "--overwrite", f"s3://{bucket}/src", str(destination))
    assert code == 0 and "removed 2 stray object(s)" in out
    loads_as(NEW, dcp.FileSystemReader(destination))
    loads_as(OLD, dcp.FileSystemReader(destination / "nested"))
    left = sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*") if p.is_file())
    assert left == [".metadata", "nested/.metadata", "nested/__0_0.distcp", "new/__0_0.distcp", "notes.txt"]


def test_local_overwrite_with_replaced_files_uncommits_first(
    proxied_env: Any, proxy: FaultProxy, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save(f"s3://{bucket}/src", NEW)
    destination = tmp_path / "dst"
    dcp.save(OLD, storage_writer=dcp.FileSystemWriter(destination))

    proxy.clear()
    proxy.add_rule("access_denied", method="GET", key_pattern=rf"/{bucket}/src/__0_0\.distcp$")
    assert run(capsys, "cp", "--overwrite", f"s3://{bucket}/src", str(destination))[0] == 1
    assert not (destination / ".metadata").exists()
    assert sorted(p.name for p in destination.iterdir()) == ["__0_0.distcp"]  # no temporary file left

    proxy.clear()
    assert run(capsys, "cp", "--overwrite", f"s3://{bucket}/src", str(destination))[0] == 0
    loads_as(NEW, dcp.FileSystemReader(destination))


def test_an_unfinished_save_at_the_destination_is_replaced_only_with_overwrite(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    save(f"s3://{bucket}/src", NEW)
    s3.put_object(Bucket=bucket, Key="dst/.s3dcp-saving", Body=b"a save that died, or is running")
    s3.put_object(Bucket=bucket, Key="dst/__3_0.distcp", Body=b"its shard")
    before = list_keys(s3, bucket, "dst/")

    code, out, err = run(capsys, "cp", f"s3://{bucket}/src", f"s3://{bucket}/dst")
    assert code == 1 and out == "" and "unfinished save" in err and "add --overwrite" in err
    assert list_keys(s3, bucket, "dst/") == before

    code, out, _ = run(capsys, "cp", "--overwrite", f"s3://{bucket}/src", f"s3://{bucket}/dst")
    assert code == 0 and "removed 1 stray object(s)" in out
    assert sorted(list_keys(s3, bucket, "dst/")) == ["dst/.metadata", "dst/__0_0.distcp"]
    loads_as(NEW, S3StorageReader(REGION, f"s3://{bucket}/dst"))


def test_a_dry_run_says_what_would_be_copied_replaced_and_removed_and_changes_nothing(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    save(f"s3://{bucket}/src", NEW)
    s3.put_object(Bucket=bucket, Key="src/__1_0.distcp", Body=b"s" * 2048)
    save(f"s3://{bucket}/dst", OLD, group="old")
    before = {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in list_keys(s3, bucket)}
    args = argparse.Namespace(
        source=f"s3://{bucket}/src",
        destination=f"s3://{bucket}/dst",
        overwrite=True,
        dry_run=True,
        region=None,
        endpoint_url=None,
        profile=None,
    )
    assert cmd_cp(args) == 0
    lines = capsys.readouterr().out.splitlines()
    stray = human_bytes(list_keys(s3, bucket)["dst/old/__0_0.distcp"])
    assert lines[0].startswith("would copy 2 objects (") and lines[0].endswith(f"to s3://{bucket}/dst")
    assert lines[1:] == [
        f"would replace the complete checkpoint at s3://{bucket}/dst (its .metadata replaced last, in one write)",
        f"would leave behind 1 stray object(s) (2.0 KiB) under s3://{bucket}/src",
        f"would remove s3://{bucket}/dst/old/__0_0.distcp ({stray})",
    ]
    assert {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in list_keys(s3, bucket)} == before


class Terminal(io.StringIO):
    """A stdin that says it is a terminal, with the user's answer typed in."""

    def isatty(self) -> bool:
        return True


def test_replacing_a_checkpoint_asks_on_a_terminal_and_no_keeps_it(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    save(f"s3://{bucket}/src", NEW)
    save(f"s3://{bucket}/dst", OLD)
    before = {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in list_keys(s3, bucket)}

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    code, out, err = run(capsys, "cp", "--overwrite", f"s3://{bucket}/src", f"s3://{bucket}/dst")
    assert code == 1 and out == ""
    assert f"replace the checkpoint at s3://{bucket}/dst? [y/N]" in err and "nothing was deleted" in err
    assert {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in list_keys(s3, bucket)} == before

    monkeypatch.setattr("sys.stdin", Terminal(""))
    code, _, _ = run(capsys, "cp", "--overwrite", "--yes", f"s3://{bucket}/src", f"s3://{bucket}/dst")
    assert code == 0
    loads_as(NEW, S3StorageReader(REGION, f"s3://{bucket}/dst"))
