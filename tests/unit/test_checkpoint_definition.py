"""Which prefixes are checkpoints, when an unfinished one is settled, which uploads gc may abort."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from s3dcp._catalog import checkpoint_roots, is_checkpoint_object, is_settled


@pytest.mark.parametrize(
    ("keys", "roots"),
    [
        ([".metadata", "__0_0.distcp"], [""]),
        (["__0_0.distcp"], [""]),  # shards and no commit: incomplete
        ([".s3dcp-saving"], [""]),  # a save that has written nothing yet
        ([".s3dcp-uploads/abc/rank_0"], [""]),
        (["train.csv", "logs/train.log"], []),
        # prefix strategies put shards in sub-prefixes: still one checkpoint
        ([".metadata", "0000/__0_0.distcp", "1000/__1_0.distcp"], [""]),
        # a bucket of runs: the runs are not checkpoints, their step_N are
        (
            ["run-a/step_1/.metadata", "run-a/step_1/__0_0.distcp", "run-b/step_5/__0_0.distcp", "run-a/logs/x.log"],
            ["run-a/step_1", "run-b/step_5"],
        ),
        # shards beside a deeper checkpoint: the prefix holds a run, it is not one
        (["__0_0.distcp", "step_1/.metadata"], ["step_1"]),
        (["__0_0.distcp", "step_1/.s3dcp-saving"], ["step_1"]),
        # a complete checkpoint may hold another one
        ([".metadata", "__0_0.distcp", "inner/.metadata", "inner/__0_0.distcp"], ["", "inner"]),
        # a marker with a committed checkpoint below is a run, not a checkpoint
        ([".s3dcp-saving", "step_1/.metadata"], ["step_1"]),
        (["a/__0_0.distcp", "a/0000/__0_1.distcp"], ["a"]),
    ],
)
def test_checkpoint_roots(keys: list[str], roots: list[str]) -> None:
    assert checkpoint_roots(keys) == roots


NOW = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)


def test_settled_only_when_every_write_is_older_than_the_cutoff() -> None:
    old, recent = NOW - timedelta(hours=10), NOW - timedelta(minutes=5)
    cutoff = NOW - timedelta(hours=6)
    assert is_settled([old, old], cutoff)
    assert not is_settled([old, recent], cutoff)  # e.g. a part uploaded five minutes ago
    assert not is_settled([old, None, recent], cutoff)
    assert not is_settled([], cutoff) and not is_settled([None], cutoff)


@pytest.mark.parametrize(
    ("key", "ours"),
    [
        ("run/step_1/__0_0.distcp", True),
        ("run/step_1/0000/__3_2.distcp", True),
        ("run/step_1/.metadata", True),
        ("run/step_1/.s3dcp-saving", True),
        ("run/step_1/.s3dcp-uploads/abc/rank_0", True),
        ("run/datasets/shard-0001.tar", False),
        ("run/model.safetensors", False),
        ("run/notes.distcp.bak", False),
    ],
)
def test_gc_recognizes_checkpoint_objects_by_name(key: str, ours: bool) -> None:
    assert is_checkpoint_object(key) is ours
