"""Tiered checkpoints: a local copy first, S3 in the background, loads that fall back item by item."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from s3dcp import (
    CheckpointDamagedError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    S3ClientConfig,
    S3StorageReader,
    TieredStorageReader,
    TieredStorageWriter,
    UploadFailedError,
    find_s3dcp_error,
    latest_checkpoint,
    latest_tiered_checkpoint,
)
from tests.conftest import REGION, list_keys
from tests.helpers import FAST_RETRIES, assert_same, async_save_options

pytestmark = pytest.mark.s3


def state(seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(64, 32, generator=g), "b": torch.randn(32, generator=g)},
        "optim": {"m": torch.randn(2048, generator=g, dtype=torch.float64)},
        "step": seed,
    }


def blank() -> dict[str, Any]:
    return {
        "model": {"w": torch.zeros(64, 32), "b": torch.zeros(32)},
        "optim": {"m": torch.zeros(2048, dtype=torch.float64)},
        "step": -1,
    }


@pytest.fixture
def local(tmp_path: Path) -> Path:
    """The local tier's root (tmp_path also holds the test's AWS config files)."""
    return tmp_path / "tier"


def writer(local: Path, bucket: str, **options: Any) -> TieredStorageWriter:
    return TieredStorageWriter(local, f"s3://{bucket}/run", region=REGION, **options)


def reader(local: Path, bucket: str, **options: Any) -> TieredStorageReader:
    return TieredStorageReader(local, f"s3://{bucket}/run", region=REGION, **options)


def checkpoint_dirs(root: Path) -> list[str]:
    """The checkpoints in a local tier (its hidden bookkeeping folder aside)."""
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def phases(stats: list[Any]) -> dict[str, Any]:
    return {s.phase: s for s in stats}


def test_background_upload_commits_a_copy_that_s3_storage_reader_loads(
    s3_env: Any, s3: Any, bucket: str, local: Path
) -> None:
    seen: list[tuple[str, str]] = []
    w = writer(local, bucket, on_upload=lambda s: seen.append((s.checkpoint, s.state)))
    want = state(7)
    dcp.save(want, checkpoint_id="step_7", storage_writer=w)
    statuses = w.wait_for_uploads(timeout=120)

    assert [(s.checkpoint, s.state) for s in statuses] == [("step_7", "uploaded"), ("step_7", "committed")]
    assert ("step_7", "queued") in seen and seen[-1] == ("step_7", "committed")
    keys = list_keys(s3, bucket, "run/")
    assert sorted(keys) == ["run/step_7/.metadata", "run/step_7/__0_0.distcp"]  # no markers left behind
    assert keys["run/step_7/__0_0.distcp"] == (local / "step_7" / "__0_0.distcp").stat().st_size
    assert (
        s3.get_object(Bucket=bucket, Key="run/step_7/.metadata")["Body"].read()
        == (local / "step_7" / ".metadata").read_bytes()
    )

    from_s3 = blank()
    dcp.load(from_s3, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/run/step_7"))
    assert_same(want, from_s3)
    from_local = blank()  # the local tier is DCP's own layout
    dcp.load(from_local, storage_reader=FileSystemReader(local / "step_7"))
    assert_same(want, from_local)


def test_local_hit_needs_no_s3_at_all(s3_env: Any, bucket: str, local: Path) -> None:
    """With s3_every=0 nothing goes to S3; the load must not touch the (unreachable) endpoint."""
    want = state(3)
    dcp.save(want, checkpoint_id="step_3", storage_writer=writer(local, bucket, s3_every=0))
    s3_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    r = reader(local, bucket)
    got = blank()
    dcp.load(got, checkpoint_id="step_3", storage_reader=r)
    assert_same(want, got)
    assert r.source == "local" and list(phases(r.last_stats)) == ["load.local"]
    assert phases(r.last_stats)["load.local"].items == 4


def test_local_missing_loads_from_s3(s3_env: Any, bucket: str, local: Path) -> None:
    want = state(4)
    w = writer(local / "node-a", bucket)
    dcp.save(want, checkpoint_id="step_4", storage_writer=w)
    w.wait_for_uploads(timeout=120)

    r = reader(local / "node-b", bucket)  # another node: an empty local tier
    got = blank()
    dcp.load(got, checkpoint_id="step_4", storage_reader=r)
    assert_same(want, got)
    assert r.source == "s3"
    assert phases(r.last_stats)["load.read"].items == 4


def test_damaged_local_item_is_read_from_s3_with_a_warning(
    s3_env: Any, bucket: str, local: Path, caplog: pytest.LogCaptureFixture
) -> None:
    want = state(5)
    w = writer(local, bucket)
    dcp.save(want, checkpoint_id="step_5", storage_writer=w)
    w.wait_for_uploads(timeout=120)
    shard = local / "step_5" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the largest item, optim.m
    shard.write_bytes(bytes(data))

    r = reader(local, bucket)
    got = blank()
    with caplog.at_level(logging.WARNING, logger="s3dcp"):
        dcp.load(got, checkpoint_id="step_5", storage_reader=r)
    assert_same(want, got)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "__0_0.distcp" in warnings[0] and "'optim.m'" in warnings[0], warnings
    # only the damaged item came from S3
    assert phases(r.last_stats)["load.local"].items == 3
    assert phases(r.last_stats)["load.read"].items == 1


def test_missing_local_file_is_read_from_s3(s3_env: Any, bucket: str, local: Path) -> None:
    want = state(6)
    w = writer(local, bucket, thread_count=2)  # two shard files
    dcp.save(want, checkpoint_id="step_6", storage_writer=w)
    w.wait_for_uploads(timeout=120)
    (local / "step_6" / "__0_1.distcp").unlink()

    r = reader(local, bucket)
    got = blank()
    dcp.load(got, checkpoint_id="step_6", storage_reader=r)
    assert_same(want, got)
    assert r.source == "local" and phases(r.last_stats)["load.read"].items >= 1


def test_damaged_local_item_with_no_s3_copy_fails_loudly(s3_env: Any, bucket: str, local: Path) -> None:
    dcp.save(state(8), checkpoint_id="step_8", storage_writer=writer(local, bucket, s3_every=0))
    shard = local / "step_8" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(BaseException) as caught:
        dcp.load(blank(), checkpoint_id="step_8", storage_reader=reader(local, bucket))
    error = find_s3dcp_error(caught.value)
    assert isinstance(error, CheckpointDamagedError), caught.value  # committed locally: damaged, not absent
    assert "step_8" in str(error)


def test_s3_copy_of_another_save_never_fills_in(s3_env: Any, bucket: str, local: Path) -> None:
    """Same name, different saves in the two tiers: damaged local items must not come from S3."""
    first = writer(local / "a", bucket)
    dcp.save(state(1), checkpoint_id="step_9", storage_writer=first)
    first.wait_for_uploads(timeout=120)
    dcp.save(state(2), checkpoint_id="step_9", storage_writer=writer(local / "b", bucket, s3_every=0))
    shard = local / "b" / "step_9" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(BaseException) as caught:
        dcp.load(blank(), checkpoint_id="step_9", storage_reader=reader(local / "b", bucket))
    error = find_s3dcp_error(caught.value)
    assert isinstance(error, CheckpointDamagedError) and "another save" in str(error), caught.value


def test_checkpoint_in_neither_tier(s3_env: Any, bucket: str, local: Path) -> None:
    with pytest.raises(BaseException) as caught:
        dcp.load(blank(), checkpoint_id="step_1", storage_reader=reader(local, bucket))
    error = find_s3dcp_error(caught.value)
    assert isinstance(error, CheckpointNotFoundError)
    assert str(local / "step_1" / ".metadata") in str(error) and f"s3://{bucket}/run/step_1" in str(error)


def test_s3_every_and_synchronous_uploads(s3_env: Any, s3: Any, bucket: str, local: Path) -> None:
    w = writer(local, bucket, s3_every=2, background=False)
    for step in range(1, 6):
        dcp.save(state(step), checkpoint_id=f"step_{step}", storage_writer=w)
        # synchronous: the S3 copy is committed when save returns, nothing is left queued
        assert w.upload_statuses() == [s for s in w.upload_statuses() if s.state in ("uploaded", "committed")]
    committed = sorted(k.split("/")[1] for k in list_keys(s3, bucket, "run/") if k.endswith("/.metadata"))
    assert committed == ["step_1", "step_3", "step_5"]
    assert checkpoint_dirs(local) == [f"step_{n}" for n in range(1, 6)]
    assert latest_checkpoint(f"s3://{bucket}/run") == f"s3://{bucket}/run/step_5"


def test_local_retention_keeps_the_newest(s3_env: Any, s3: Any, bucket: str, local: Path) -> None:
    w = writer(local, bucket, keep_local=2)
    for step in range(1, 5):
        dcp.save(state(step), checkpoint_id=f"step_{step}", storage_writer=w)
    w.wait_for_uploads(timeout=120)
    assert checkpoint_dirs(local) == ["step_3", "step_4"]
    committed = sorted(k.split("/")[1] for k in list_keys(s3, bucket, "run/") if k.endswith("/.metadata"))
    assert committed == ["step_1", "step_2", "step_3", "step_4"]  # S3 keeps its own retention
    got = blank()
    dcp.load(got, checkpoint_id="step_1", storage_reader=reader(local, bucket))
    assert_same(state(1), got)


def test_latest_across_tiers(s3_env: Any, bucket: str, local: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = f"s3://{bucket}/run"
    assert latest_tiered_checkpoint(local, root, region=REGION) is None
    w = writer(local / "node", bucket, s3_every=2)
    for step in (10, 20, 30):  # 10 and 30 go to S3
        dcp.save(state(step), checkpoint_id=f"step_{step}", storage_writer=w)
    w.wait_for_uploads(timeout=120)
    dcp.save(state(40), checkpoint_id="step_40", storage_writer=w)  # local only
    assert latest_tiered_checkpoint(local / "node", root, region=REGION) == "step_40"
    assert latest_tiered_checkpoint(local / "fresh-node", root, region=REGION) == "step_30"
    # an unfinished local save is not a checkpoint
    (local / "node" / "step_50").mkdir()
    assert latest_tiered_checkpoint(local / "node", root, region=REGION) == "step_40"

    caplog.set_level(logging.WARNING, logger="s3dcp")
    dead = S3ClientConfig(endpoint_url="http://127.0.0.1:9", max_attempts=1, connect_attempts=1, connect_timeout=0.5)
    assert latest_tiered_checkpoint(local / "node", root, s3client_config=dead) == "step_40"
    assert any("cannot list" in r.getMessage() for r in caplog.records)


def test_failed_background_upload_is_reported_and_local_copy_kept(
    s3_env: Any, bucket: str, local: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    w = TieredStorageWriter(
        local, f"s3://{bucket}-missing/run", region=REGION, on_upload=lambda s: seen.append(s.state)
    )
    want = state(2)
    with caplog.at_level(logging.ERROR, logger="s3dcp"):
        dcp.save(want, checkpoint_id="step_2", storage_writer=w)  # the save itself succeeds
        with pytest.raises(UploadFailedError) as caught:
            w.wait_for_uploads(timeout=120)
    assert "step_2" in str(caught.value) and "BucketNotFoundError" in str(caught.value)
    assert "failed" in seen
    assert any("upload failed" in r.getMessage() for r in caplog.records)
    got = blank()
    dcp.load(got, storage_reader=FileSystemReader(local / "step_2"))
    assert_same(want, got)


def test_background_upload_retries_through_faults(
    proxied_env: Any, proxy: Any, s3: Any, bucket: str, local: Path
) -> None:
    # the first shard PUT is reset twice, longer than the client's own retries allow
    proxy.add_rule("reset", method="PUT", key_pattern=r"/run/step_1/__0_0\.distcp$", count=3)
    config = S3ClientConfig(max_attempts=3, **FAST_RETRIES)
    w = TieredStorageWriter(local, f"s3://{bucket}/run", config, region=REGION, upload_attempts=3)
    dcp.save(state(1), checkpoint_id="step_1", storage_writer=w)
    w_statuses = w.wait_for_uploads(timeout=120)
    assert [(s.state, s.attempts) for s in w_statuses] == [("uploaded", 2), ("committed", 1)]
    got = blank()
    dcp.load(got, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/run/step_1"))
    assert_same(state(1), got)


def test_refuses_to_replace_a_complete_checkpoint(s3_env: Any, s3: Any, bucket: str, local: Path) -> None:
    w = writer(local, bucket, background=False)
    dcp.save(state(1), checkpoint_id="step_1", storage_writer=w)
    with pytest.raises(BaseException) as caught:
        dcp.save(state(2), checkpoint_id="step_1", storage_writer=w)
    assert isinstance(find_s3dcp_error(caught.value), CheckpointExistsError)
    # another node's local tier does not know, but S3 refuses the upload
    other = writer(local / "other", bucket, background=False)
    with pytest.raises(BaseException) as caught:
        dcp.save(state(3), checkpoint_id="step_1", storage_writer=other)
    assert isinstance(find_s3dcp_error(caught.value), UploadFailedError)
    assert "already holds a complete checkpoint" in str(find_s3dcp_error(caught.value))
    got = blank()
    dcp.load(got, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/run/step_1"))
    assert_same(state(1), got)
    # overwrite=True replaces both copies
    dcp.save(state(4), checkpoint_id="step_1", storage_writer=writer(local, bucket, background=False, overwrite=True))
    got = blank()
    dcp.load(got, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/run/step_1"))
    assert_same(state(4), got)


def test_works_with_async_save(s3_env: Any, bucket: str, local: Path) -> None:
    w = writer(local, bucket)
    want = state(11)
    future = dcp.async_save(want, checkpoint_id="step_11", storage_writer=w, **async_save_options("thread"))
    future.result(timeout=120)
    w.wait_for_uploads(timeout=120)
    got = blank()
    dcp.load(got, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/run/step_11"))
    assert_same(want, got)


@pytest.mark.parametrize("bad", ["s3://bucket/x", "/abs/step_1", "a/b", "..", ".hidden", ""])
def test_bad_names_and_arguments(local: Path, bad: str) -> None:
    assert not TieredStorageWriter.validate_checkpoint_id(bad)
    w = TieredStorageWriter(local, "s3://bucket/run", region=REGION)
    if bad:
        with pytest.raises(ValueError, match="name of one checkpoint"):
            w.reset(bad)


@pytest.mark.parametrize(
    "options", [{"s3_every": -1}, {"keep_local": 0}, {"thread_count": 0}, {"upload_attempts": 0}, {"upload_timeout": 0}]
)
def test_bad_options(local: Path, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TieredStorageWriter(local, "s3://bucket/run", region=REGION, **options)


def test_save_without_a_name_says_how(s3_env: Any, bucket: str, local: Path) -> None:
    with pytest.raises(BaseException) as caught:
        dcp.save(state(1), storage_writer=writer(local, bucket))
    assert "checkpoint_id='step_100'" in str(caught.value)


_CRASH_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed.checkpoint as dcp
    from s3dcp import TieredStorageWriter
    local, root = sys.argv[1], sys.argv[2]
    sd = {"w": torch.arange(4096, dtype=torch.float32), "step": 1}
    dcp.save(sd, checkpoint_id="step_1", storage_writer=TieredStorageWriter(local, root, region="us-east-1"))
    print("local copy done", flush=True)
    sys.stdin.read()  # keep the process (and its upload thread) alive until killed
""")


def test_crash_during_background_upload(proxied_env: Any, proxy: Any, s3: Any, bucket: str, local: Path) -> None:
    """Killed while its upload is held mid-way: S3 stays uncommitted, the local copy loads."""
    hold = proxy.add_rule("hold", method="PUT", key_pattern=r"/run/step_1/__0_0\.distcp$", count=1)
    process = subprocess.Popen(
        [sys.executable, "-c", _CRASH_SCRIPT, str(local), f"s3://{bucket}/run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"local copy done"
        assert hold.hit.wait(120), "the background upload never started"
        process.send_signal(signal.SIGKILL)
        process.wait(60)
    finally:
        hold.release()
        if process.poll() is None:
            process.kill()
    assert f"s3://{bucket}/run/step_1/.metadata" not in {f"s3://{bucket}/{k}" for k in list_keys(s3, bucket)}
    assert latest_checkpoint(f"s3://{bucket}/run") is None
    assert latest_tiered_checkpoint(local, f"s3://{bucket}/run", region=REGION) == "step_1"
    got = {"w": torch.zeros(4096), "step": 0}
    dcp.load(got, checkpoint_id="step_1", storage_reader=reader(local, bucket))
    assert torch.equal(got["w"], torch.arange(4096, dtype=torch.float32)) and got["step"] == 1


def test_prefix_strategy_shapes_both_tiers(s3_env: Any, s3: Any, bucket: str, local: Path) -> None:
    from s3dcp import HexPrefixStrategy

    w = writer(local, bucket, prefix_strategy=HexPrefixStrategy(min_prefix_length=2), thread_count=2)
    want = state(12)
    dcp.save(want, checkpoint_id="step_12", storage_writer=w)
    w.wait_for_uploads(timeout=120)
    local_files = sorted(
        p.relative_to(local / "step_12").as_posix() for p in (local / "step_12").rglob("*") if p.is_file()
    )
    assert local_files == [".metadata", "00/__0_0.distcp", "00/__0_1.distcp"]
    assert sorted(list_keys(s3, bucket, "run/")) == [f"run/step_12/{name}" for name in local_files]
    for r in (reader(local, bucket), reader(local / "elsewhere", bucket)):
        got = blank()
        dcp.load(got, checkpoint_id="step_12", storage_reader=r)
        assert_same(want, got)
