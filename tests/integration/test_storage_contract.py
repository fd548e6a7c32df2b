"""What torch's own DCP tests expect of a storage layer, checked against S3.

Older metadata classes that torch still loads, ``io.BytesIO`` values, and
the shard objects a save writes (the same names ``FileSystemWriter`` writes).
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed._shard.sharded_tensor import metadata as sharded_metadata
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from s3dcp import S3StorageReader, S3StorageWriter, UnsafeCheckpointError
from s3dcp._copy import copy_checkpoint
from tests.conftest import REGION, list_keys
from tests.distributed import run_ranks
from tests.helpers import assert_same, aws_env, blank_like, s3dcp_error
from tests.integration.test_interop import upload_tree

pytestmark = pytest.mark.s3


def with_old_tensor_properties(metadata: Metadata) -> Metadata:
    """``metadata`` as older torch pickled it: ShardedTensor ``TensorProperties`` for every tensor."""
    entries: dict[str, Any] = {}
    for fqn, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            new = entry.properties
            old = sharded_metadata.TensorProperties(
                dtype=new.dtype,
                layout=new.layout,
                requires_grad=new.requires_grad,
                memory_format=new.memory_format,
                pin_memory=new.pin_memory,
            )
            entry = dataclasses.replace(entry, properties=old)  # type: ignore[arg-type]
        entries[fqn] = entry
    return dataclasses.replace(metadata, state_dict_metadata=entries)


def test_metadata_with_sharded_tensor_properties_loads(s3_env: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    state = {"w": torch.randn(4, 3), "h": torch.arange(5, dtype=torch.float16), "step": 7}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp_path, sync_files=False))
    metadata_file = tmp_path / ".metadata"
    old = with_old_tensor_properties(pickle.loads(metadata_file.read_bytes()))
    metadata_file.write_bytes(pickle.dumps(old))
    assert sharded_metadata.__name__.encode() in metadata_file.read_bytes()
    upload_tree(s3, tmp_path, bucket, "old")

    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/old"))
    assert_same(state, loaded)


def test_hostile_metadata_naming_the_sharded_tensor_module_stays_refused(s3_env: Any, s3: Any, bucket: str) -> None:
    # ShardMetadata is a real class in the same module, but never part of DCP metadata
    hostile = b"\x80\x04\x8c" + bytes([len(sharded_metadata.__name__)]) + sharded_metadata.__name__.encode()
    hostile += b"\x8c\x0dShardMetadata\x93)R."
    s3.put_object(Bucket=bucket, Key="bad/.metadata", Body=hostile)
    with pytest.raises(BaseException) as raised:
        dcp.load({"w": torch.zeros(1)}, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/bad"))
    error = s3dcp_error(raised.value)
    assert isinstance(error, UnsafeCheckpointError)
    assert "ShardMetadata" in str(error)


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this ran",))


def test_bytes_io_values_round_trip_bit_exact(s3_env: Any, bucket: str) -> None:
    blob = bytes(range(256)) * 3
    state = {"w": torch.arange(4.0), "blob": io.BytesIO(blob), "empty": io.BytesIO(), "nested": {"b": io.BytesIO(b"x")}}
    uri = f"s3://{bucket}/bytes-io"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, uri))
    assert io.BytesIO not in torch.serialization.get_safe_globals()

    loaded: dict[str, Any] = {"w": torch.zeros(4), "blob": None, "empty": None, "nested": {"b": None}}
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, uri))
    assert torch.equal(loaded["w"], state["w"])
    assert isinstance(loaded["blob"], io.BytesIO) and loaded["blob"].getvalue() == blob
    assert loaded["empty"].getvalue() == b"" and loaded["nested"]["b"].getvalue() == b"x"
    assert io.BytesIO not in torch.serialization.get_safe_globals()


def test_a_bytes_io_wrapping_a_hostile_pickle_is_refused(s3_env: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/hostile-bytes-io"
    dcp.save({"blob": io.BytesIO(pickle.dumps(_Payload()))}, storage_writer=S3StorageWriter(REGION, uri))
    with pytest.raises(BaseException) as raised:
        dcp.load({"blob": None}, storage_reader=S3StorageReader(REGION, uri))
    error = s3dcp_error(raised.value)
    assert isinstance(error, UnsafeCheckpointError)
    assert "builtins.print" in str(error) and "blob" in str(error)


# -- the shard objects a save writes: the files FileSystemWriter writes ----------------
def written_names(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    """Object name -> size under a checkpoint, s3dcp's own bookkeeping left out."""
    keys = list_keys(s3, bucket, prefix + "/")
    return {key[len(prefix) + 1 :]: size for key, size in keys.items() if not key.split("/")[-1].startswith(".s3dcp-")}


def file_names(directory: Path) -> dict[str, int]:
    return {
        path.relative_to(directory).as_posix(): path.stat().st_size for path in directory.rglob("*") if path.is_file()
    }


STATES: dict[str, dict[str, Any]] = {"two-items": {"a": torch.ones(5), "b": torch.zeros(2, 2)}, "nothing": {}}


@pytest.mark.parametrize(
    ("name", "thread_count", "empty_files"),
    [("two-items", 1, 0), ("two-items", 3, 1), ("nothing", 1, 1), ("nothing", 3, 3)],
)
def test_a_save_writes_the_files_filesystem_writer_writes(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, name: str, thread_count: int, empty_files: int
) -> None:
    state = STATES[name]
    directory = tmp_path / "filesystem"
    dcp.save(state, storage_writer=dcp.FileSystemWriter(directory, thread_count=thread_count, sync_files=False))
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/ckpt", thread_count=thread_count))
    expected = file_names(directory)
    assert sum(size == 0 for size in expected.values()) == empty_files
    ours = written_names(s3, bucket, "ckpt")
    assert set(ours) == set(expected)
    assert {name for name, size in ours.items() if size == 0} == {name for name, size in expected.items() if size == 0}

    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/ckpt"))
    assert_same(state, loaded)


def save_where_rank_1_has_nothing(rank: int, world_size: int, uri: str, directory: str) -> None:
    # a plain tensor is taken as replicated: DCP stores it once, from one rank
    state = {"w": torch.arange(6.0)}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(directory, sync_files=False))
    dcp.save(state, storage_writer=S3StorageWriter(REGION, uri))


@pytest.mark.ranks
def test_a_rank_with_nothing_to_store_writes_the_empty_file_filesystem_writer_writes(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    directory = tmp_path / "filesystem"
    run_ranks(2, save_where_rank_1_has_nothing, f"s3://{bucket}/two", str(directory), env=aws_env())
    expected = file_names(directory)
    assert sorted(name for name, size in expected.items() if size == 0) == ["__1_0.distcp"]
    ours = written_names(s3, bucket, "two")
    assert ours.keys() == expected.keys()
    assert ours["__1_0.distcp"] == 0


def test_cp_copies_the_empty_shard_objects_both_ways(s3_env: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    state = {"w": torch.arange(3.0)}
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/src", thread_count=3))
    saved = written_names(s3, bucket, "src")
    assert sorted(name for name, size in saved.items() if size == 0) == ["__0_1.distcp", "__0_2.distcp"]

    report = copy_checkpoint(f"s3://{bucket}/src", tmp_path / "local")
    assert file_names(tmp_path / "local") == saved
    assert report.strays_left == 0
    copy_checkpoint(tmp_path / "local", f"s3://{bucket}/back")
    assert written_names(s3, bucket, "back") == saved
