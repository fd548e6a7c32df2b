"""Which objects under a checkpoint are strays that a save may remove: pure rules."""

from __future__ import annotations

from s3dcp._format.layout import find_strays


def test_only_unreferenced_shard_names_are_strays() -> None:
    objects = {
        ".metadata": 10,
        "__0_0.distcp": 100,
        "__0_1.distcp": 200,
        "0000/__3_0.distcp": 300,
        "notes.txt": 1,
        "logs/train.log": 2,
        "logs/__0_0.distcp.bak": 3,
        ".s3dcp-saving": 4,
    }
    assert find_strays(objects, {"__0_0.distcp"}) == {"__0_1.distcp": 200, "0000/__3_0.distcp": 300}


def test_nothing_inside_a_nested_checkpoint_is_a_stray() -> None:
    objects = {
        "sub/.metadata": 10,
        "sub/__0_0.distcp": 100,
        "sub/0000/__1_0.distcp": 100,
        "saving/.s3dcp-saving": 1,
        "saving/deep/__0_0.distcp": 100,
        "subway/__0_0.distcp": 7,
    }
    assert find_strays(objects, set()) == {"subway/__0_0.distcp": 7}


def test_s3dcp_bookkeeping_objects_are_never_strays() -> None:
    objects = {".s3dcp-uploads/abc/__0_0.distcp": 5, ".s3dcp-saving": 1}
    assert find_strays(objects, set()) == {}


def test_empty_shard_objects_are_layout_not_strays() -> None:
    # what a rank or writer thread with nothing to store writes; a non-empty one stays a stray
    objects = {".metadata": 10, "__0_0.distcp": 100, "__0_1.distcp": 0, "__1_0.distcp": 0, "__2_0.distcp": 5}
    assert find_strays(objects, {"__0_0.distcp"}) == {"__2_0.distcp": 5}


def test_empty_shards_to_copy_leave_out_nested_checkpoints_and_bookkeeping() -> None:
    from s3dcp._format.layout import empty_shards

    objects = {
        "__0_0.distcp": 9,
        "__0_1.distcp": 0,
        "0000/__1_0.distcp": 0,
        "sub/.metadata": 3,
        "sub/__0_1.distcp": 0,
        ".s3dcp-uploads/x/__0_0.distcp": 0,
        "notes.distcp": 0,
    }
    assert empty_shards(objects) == ["0000/__1_0.distcp", "__0_1.distcp"]
