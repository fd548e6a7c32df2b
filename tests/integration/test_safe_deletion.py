"""rm, prune and gc delete checkpoints only, and only what the user asked for.

A shared bucket as people really have it: several runs, data and logs beside
them, named checkpoints (``best``, ``final``), an incomplete save.
"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3StorageWriter, list_checkpoints
from s3dcp._catalog import delete_checkpoint, gc, prune
from s3dcp._cli import human_bytes
from tests.conftest import REGION, list_keys
from tests.helpers import run_cli as run

pytestmark = pytest.mark.s3

UNRELATED = ("datasets/train.csv", "run-a/logs/train.log")


def save(bucket: str, path: str) -> None:
    dcp.save(
        {"w": torch.arange(16, dtype=torch.float32), "path": path},
        storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/{path}"),
    )


def runs_and_data(s3: Any, bucket: str) -> dict[str, int]:
    """Two runs of complete checkpoints plus objects that belong to no checkpoint; returns every key."""
    for path in ("run-a/step_1", "run-a/step_2", "run-b/step_5"):
        save(bucket, path)
    for key in UNRELATED:
        s3.put_object(Bucket=bucket, Key=key, Body=b"not a checkpoint")
    return list_keys(s3, bucket)


class Terminal(io.StringIO):
    """A stdin that says it is a terminal, with the user's answer typed in."""

    def isatty(self) -> bool:
        return True


def test_prune_and_ls_above_the_runs_touch_nothing(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = runs_and_data(s3, bucket)

    code, out, err = run(capsys, "prune", f"s3://{bucket}", "--keep", "1", "--grace-hours", "0")
    assert code == 1 and out == ""
    assert "run-a/ and run-b/ hold checkpoints" in err and f"s3dcp prune s3://{bucket}/run-a" in err
    assert list_keys(s3, bucket) == before
    with pytest.raises(ValueError, match="holds runs"):
        prune(f"s3://{bucket}", 1, grace=timedelta(0))
    assert list_keys(s3, bucket) == before

    assert list_checkpoints(f"s3://{bucket}") == []
    code, out, err = run(capsys, "ls", f"s3://{bucket}")
    assert (code, out) == (0, "")
    assert err.strip() == (
        f"no checkpoints directly under s3://{bucket}; run-a/ and run-b/ hold checkpoints: s3dcp ls s3://{bucket}/run-a"
    )

    code, out, _ = run(capsys, "ls", f"s3://{bucket}/run-a")
    assert code == 0 and [line.split()[:2] for line in out.splitlines()[1:]] == [["1", "yes"], ["2", "yes"]]


def test_rm_refuses_what_is_not_a_checkpoint(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = runs_and_data(s3, bucket)

    code, _, err = run(capsys, "rm", "--yes", f"s3://{bucket}/datasets")
    assert code == 1 and "is not a checkpoint and holds none" in err and "train.csv" in err
    code, _, err = run(capsys, "rm", "--yes", f"s3://{bucket}")
    assert code == 1 and "is not a checkpoint; it holds 3 checkpoints" in err and "--recursive" in err
    code, _, err = run(capsys, "rm", "--yes", f"s3://{bucket}/run-a")
    assert code == 1 and "holds 2 checkpoints (step_1/, step_2/)" in err
    code, _, err = run(capsys, "rm", "--yes", "--recursive", f"s3://{bucket}/datasets")
    assert code == 1 and "holds none" in err
    assert list_keys(s3, bucket) == before


def test_rm_recursive_deletes_checkpoints_and_leaves_everything_else(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = runs_and_data(s3, bucket)

    code, out, _ = run(capsys, "rm", "--recursive", "--dry-run", f"s3://{bucket}/run-a")
    assert code == 0 and "would delete 4 objects (" in out and "of 2 checkpoint(s)" in out
    assert f"would delete s3://{bucket}/run-a/step_1/.metadata (" in out
    assert list_keys(s3, bucket) == before

    code, out, _ = run(capsys, "rm", "--recursive", f"s3://{bucket}/run-a")
    assert code == 0 and "deleted 4 objects" in out
    assert sorted(list_keys(s3, bucket)) == sorted([*UNRELATED, "run-b/step_5/.metadata", "run-b/step_5/__0_0.distcp"])


def test_rm_of_a_checkpoint_that_holds_more_refuses_without_recursive(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    save(bucket, "ckpt")
    save(bucket, "ckpt/inner")  # a checkpoint nested in another
    s3.put_object(Bucket=bucket, Key="ckpt/notes.txt", Body=b"mine")

    with pytest.raises(ValueError, match="1 object that is not the checkpoint's .notes.txt. and 1 nested"):
        delete_checkpoint(f"s3://{bucket}/ckpt")
    assert len(list_keys(s3, bucket)) == 5
    assert delete_checkpoint(f"s3://{bucket}/ckpt", recursive=True, dry_run=True) == 4
    assert len(list_keys(s3, bucket)) == 5
    assert delete_checkpoint(f"s3://{bucket}/ckpt", recursive=True) == 4
    assert list(list_keys(s3, bucket)) == ["ckpt/notes.txt"]


def test_rm_asks_on_a_terminal(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    save(bucket, "run/step_1")
    before = list_keys(s3, bucket)

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    code, out, err = run(capsys, "rm", f"s3://{bucket}/run/step_1")
    assert code == 1 and out == ""
    size = human_bytes(sum(before.values()))
    assert f"delete 2 objects ({size}) of 1 checkpoint(s) under s3://{bucket}/run/step_1? [y/N]" in err
    assert "nothing was deleted" in err and list_keys(s3, bucket) == before

    monkeypatch.setattr("sys.stdin", Terminal(""))  # end of input is no
    assert run(capsys, "rm", f"s3://{bucket}/run/step_1")[0] == 1 and list_keys(s3, bucket) == before

    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    code, out, err = run(capsys, "rm", f"s3://{bucket}/run/step_1")
    assert code == 0 and "[y/N]" in err and "deleted 2 objects" in out and list_keys(s3, bucket) == {}

    save(bucket, "run/step_1")
    monkeypatch.setattr("sys.stdin", Terminal(""))  # --yes: not asked, so no answer is read
    code, out, err = run(capsys, "rm", "--yes", f"s3://{bucket}/run/step_1")
    assert code == 0 and "[y/N]" not in err and list_keys(s3, bucket) == {}


def test_prune_and_gc_ask_on_a_terminal(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in (1, 2):
        save(bucket, f"run/step_{step}")
    s3.create_multipart_upload(Bucket=bucket, Key="run/step_3/__0_0.distcp")
    before = list_keys(s3, bucket)

    monkeypatch.setattr("sys.stdin", Terminal("no\n"))
    code, out, err = run(capsys, "prune", f"s3://{bucket}/run", "--keep", "1")
    assert code == 1 and "delete 2 objects (" in err and "of 1 checkpoint(s) under" in err and "[y/N]" in err
    assert f"  s3://{bucket}/run/step_1 (complete, 2 objects, " in err  # what would go, shown before the question
    assert list_keys(s3, bucket) == before
    code, _, err = run(capsys, "gc", f"s3://{bucket}/run", "--older-than-hours", "0")
    assert code == 1 and "abort 1 multipart upload(s)" in err
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1

    monkeypatch.setattr("sys.stdin", Terminal("yes\n"))
    assert run(capsys, "prune", f"s3://{bucket}/run", "--keep", "1")[0] == 0
    assert sorted(list_keys(s3, bucket)) == ["run/step_2/.metadata", "run/step_2/__0_0.distcp"]


def test_prune_leaves_unnumbered_checkpoints_unless_asked(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in ("run/step_1", "run/step_2", "run/best", "run/final"):  # best and final written last
        save(bucket, path)
    s3.put_object(Bucket=bucket, Key="run/scratch/__0_0.distcp", Body=b"an unnumbered save that died")

    gone = prune(f"s3://{bucket}/run", 1, grace=timedelta(0))
    assert [info.uri.rsplit("/", 1)[1] for info in gone] == ["step_1"]
    code, out, _ = run(capsys, "prune", f"s3://{bucket}/run", "--keep", "1", "--grace-hours", "0")
    assert code == 0 and "deleted 0 objects (0 B) of 0 checkpoint(s)" in out
    assert {key.split("/")[1] for key in list_keys(s3, bucket)} == {"step_2", "best", "final", "scratch"}

    # with them: ranked by when each was committed, the newest stays whatever its name
    # the listing's times, as prune sees them (HEAD's Last-Modified is whole seconds on some stores)
    listed = {obj["Key"]: obj["LastModified"] for obj in s3.list_objects_v2(Bucket=bucket, Prefix="run/")["Contents"]}
    committed = {name: listed[f"run/{name}/.metadata"] for name in ("step_2", "best", "final")}
    newest = max(committed, key=lambda name: (committed[name], 2 if name == "step_2" else -1, f"run/{name}"))
    code, out, _ = run(
        capsys, "prune", f"s3://{bucket}/run", "--keep", "1", "--grace-hours", "0", "--include-unnumbered"
    )
    assert code == 0 and "of 3 checkpoint(s)" in out
    assert {key.split("/")[1] for key in list_keys(s3, bucket)} == {newest}


def test_prune_deletes_only_the_checkpoints_own_objects(s3_env: Any, s3: Any, bucket: str) -> None:
    for step in (1, 2):
        save(bucket, f"run/step_{step}")
    s3.put_object(Bucket=bucket, Key="run/step_1/eval/results.json", Body=b"{}")
    s3.put_object(Bucket=bucket, Key="run/step_1/__7_0.distcp", Body=b"stray of an earlier save")

    gone = prune(f"s3://{bucket}/run", 1, grace=timedelta(0))
    assert [info.uri.rsplit("/", 1)[1] for info in gone] == ["step_1"]
    assert sorted(list_keys(s3, bucket)) == [
        "run/step_1/eval/results.json",
        "run/step_2/.metadata",
        "run/step_2/__0_0.distcp",
    ]


def test_gc_aborts_only_uploads_of_checkpoint_objects(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in ("run/step_5/__0_0.distcp", "run/step_5/.metadata", "run/step_6/.s3dcp-uploads/x/rank_0"):
        s3.create_multipart_upload(Bucket=bucket, Key=key)
    for key in ("run/datasets/shard-0001.tar", "run/step_5/video.mp4"):
        s3.create_multipart_upload(Bucket=bucket, Key=key)  # another program's uploads

    code, out, _ = run(capsys, "gc", f"s3://{bucket}/run", "--older-than-hours", "0", "--dry-run")
    assert code == 0 and "would abort 3 " in out
    assert "left alone: 2 upload(s) of objects that are not checkpoint objects" in out
    assert len(s3.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 5
    assert len(gc(f"s3://{bucket}/run", timedelta(0))) == 3
    left = sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"])
    assert left == ["run/datasets/shard-0001.tar", "run/step_5/video.mp4"]


def test_plan_names_every_object_with_its_size(s3_env: Any, s3: Any, bucket: str) -> None:
    from s3dcp._catalog import plan_delete

    save(bucket, "ckpt")
    s3.put_object(Bucket=bucket, Key="ckpt/.s3dcp-saving", Body=b"")
    (removal,) = plan_delete(f"s3://{bucket}/ckpt")
    listed = list_keys(s3, bucket)
    assert [obj.key for obj in removal.objects][0] == "ckpt/.metadata"
    assert {obj.key: obj.size for obj in removal.objects} == listed
    assert removal.size_bytes == sum(listed.values())


def test_prune_reads_the_uploads_open_under_an_unfinished_save(s3_env: Any, s3: Any, bucket: str) -> None:
    save(bucket, "run/step_1")
    s3.put_object(Bucket=bucket, Key="run/step_2/__0_0.distcp", Body=b"written before the kill")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="run/step_2/__0_1.distcp")
    s3.upload_part(
        Bucket=bucket, Key="run/step_2/__0_1.distcp", UploadId=upload["UploadId"], PartNumber=1, Body=b"p" * 1024
    )

    assert prune(f"s3://{bucket}/run", 1, grace=timedelta(hours=1)) == []  # everything was written just now
    gone = prune(f"s3://{bucket}/run", 1, grace=timedelta(0))  # nothing can be newer than now
    assert [(info.uri.rsplit("/", 1)[1], info.complete) for info in gone] == [("step_2", False)]
    assert sorted(list_keys(s3, bucket)) == ["run/step_1/.metadata", "run/step_1/__0_0.distcp"]


def test_a_prefix_strategys_shard_directories_are_never_taken_for_checkpoints(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from s3dcp import HexPrefixStrategy

    for step in (1, 2):
        dcp.save(
            {"w": torch.ones(16)},
            storage_writer=S3StorageWriter(
                REGION, f"s3://{bucket}/run/step_{step}", prefix_strategy=HexPrefixStrategy(min_prefix_length=2)
            ),
        )
    before = list_keys(s3, bucket)
    assert any(key.startswith("run/step_2/00/") for key in before)

    assert list_checkpoints(f"s3://{bucket}/run/step_2") == []
    code, out, err = run(capsys, "ls", f"s3://{bucket}/run/step_2")
    assert (code, out) == (0, "") and "is a checkpoint itself" in err
    code, _, err = run(capsys, "prune", "--yes", f"s3://{bucket}/run/step_2", "--keep", "1", "--grace-hours", "0")
    assert code == 1 and "is a checkpoint itself" in err and f"s3dcp prune s3://{bucket}/run " in err
    assert list_keys(s3, bucket) == before

    (step_1, step_2) = list_checkpoints(f"s3://{bucket}/run")
    assert step_2.num_objects == 2 and step_2.stray_objects == 0 and step_2.damaged is None
    assert delete_checkpoint(f"s3://{bucket}/run/step_1") == 2
    assert list_keys(s3, bucket) == {k: v for k, v in before.items() if k.startswith("run/step_2/")}


def test_rm_refuses_a_part_of_a_checkpoint(
    s3_env: Any, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from s3dcp import HexPrefixStrategy

    dcp.save(
        {"w": torch.ones(16)},
        storage_writer=S3StorageWriter(
            REGION, f"s3://{bucket}/run/step_1", prefix_strategy=HexPrefixStrategy(min_prefix_length=2)
        ),
    )
    save(bucket, "run/step_1/inner")  # a checkpoint nested in it may still be deleted on its own
    before = list_keys(s3, bucket)

    for recursive in ([], ["--recursive"]):
        code, _, err = run(capsys, "rm", "--yes", *recursive, f"s3://{bucket}/run/step_1/00")
        assert code == 1 and f"lies inside the checkpoint s3://{bucket}/run/step_1" in err
        assert f"s3dcp rm s3://{bucket}/run/step_1" in err
    assert list_keys(s3, bucket) == before
    assert delete_checkpoint(f"s3://{bucket}/run/step_1/inner") == 2


def test_prune_leaves_a_checkpoint_that_a_running_save_is_overwriting(s3_env: Any, s3: Any, bucket: str) -> None:
    for step in (1, 2):
        save(bucket, f"run/step_{step}")
    s3.put_object(Bucket=bucket, Key="run/step_1/.s3dcp-saving", Body=b"a save over step_1 started just now")

    assert prune(f"s3://{bucket}/run", 1, grace=timedelta(hours=1)) == []
    gone = prune(f"s3://{bucket}/run", 1, grace=timedelta(0))
    assert [info.uri.rsplit("/", 1)[1] for info in gone] == ["step_1"]
    assert sorted(list_keys(s3, bucket)) == ["run/step_2/.metadata", "run/step_2/__0_0.distcp"]
