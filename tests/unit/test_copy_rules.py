"""The pure rules of ``cp``: which objects are strays, which destinations overlap the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3dcp._copy import _overlap
from s3dcp._format.layout import find_strays


def test_strays_are_unreferenced_shards_outside_nested_checkpoints() -> None:
    objects = {
        ".metadata": 10,
        "__0_0.distcp": 100,  # referenced
        "__1_0.distcp": 50,  # stray
        "0000/__3_2.distcp": 7,  # stray below a strategy prefix
        "notes.txt": 1,  # not a shard
        ".s3dcp-saving": 0,  # bookkeeping, not a shard
        ".s3dcp-uploads/id/__0_0.distcp": 0,  # bookkeeping with a shard's name
        "step_2/.metadata": 1,  # a nested checkpoint ...
        "step_2/__0_0.distcp": 5,  # ... owns this
        "step_3/.s3dcp-saving": 0,  # a nested save in progress ...
        "step_3/deep/__0_0.distcp": 5,  # ... owns this
        "step_2x/__0_0.distcp": 9,  # only shares text with step_2: a stray
    }
    assert find_strays(objects, {"__0_0.distcp"}) == {
        "__1_0.distcp": 50,
        "0000/__3_2.distcp": 7,
        "step_2x/__0_0.distcp": 9,
    }


@pytest.mark.parametrize(
    ("source", "destination", "why"),
    [
        ("s3://b/run/x", "s3://b/run/x", "is the source itself"),
        ("s3://b/run/x", "s3://b/run/x/", "is the source itself"),
        ("s3://b/run/x", "s3://b/run/x/y", "inside the source"),
        ("s3://b/run/x", "s3://b/run", "source lies inside"),
        ("s3://b/run/x", "s3://b", "source lies inside"),
        ("s3://b", "s3://b/run", "inside the source"),
        ("s3://b/run/x", "s3://b/run/x2", None),
        ("s3://b/run/x", "s3://other/run/x", None),
        ("s3://b/run/x", "/tmp/run/x", None),
    ],
)
def test_overlap_of_s3_paths(source: str, destination: str, why: str | None) -> None:
    found = _overlap(source, destination)
    assert (found is None) if why is None else (found is not None and why in found)


def test_overlap_of_local_paths_follows_dots_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "x" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "x")
    assert _overlap(tmp_path / "x" / "sub" / "..", tmp_path / "x") == "the destination is the source itself"
    assert _overlap(tmp_path / "link", tmp_path / "x" / "sub") == "the destination lies inside the source"
    assert _overlap(tmp_path / "x", tmp_path / "y") is None
