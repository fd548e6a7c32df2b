"""DCP stream transforms (``ZStandard``): checkpoints FileSystemWriter compresses load from S3."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._extension import ZStandard
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import S3ClientConfig, S3StorageReader
from s3dcp.errors import CheckpointDamagedError, UnsafeCheckpointError
from tests.conftest import REGION
from tests.helpers import assert_same, blank_like, s3dcp_error
from tests.integration.test_interop import upload_tree
from tests.integration.test_roundtrip import mixed_state_dict

pytestmark = pytest.mark.s3


def compressible_state() -> dict[str, Any]:
    return {
        "zeros": torch.zeros(64, 64),
        "ramp": torch.arange(4096, dtype=torch.float32).reshape(64, 64),
        "noise": torch.randn(32, 32, generator=torch.Generator().manual_seed(1)),
        "step": 7,
        "names": ["a", "b"],
    }


def save_compressed(state: dict[str, Any], directory: Path) -> None:
    dcp.save(state, storage_writer=dcp.FileSystemWriter(directory, sync_files=False, _extensions=[ZStandard()]))


def test_zstd_checkpoint_from_filesystem_writer_loads_bit_exact(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    state = mixed_state_dict()
    save_compressed(state, tmp_path)
    metadata = dcp.FileSystemReader(tmp_path).read_metadata()
    assert all(info.transform_descriptors == ["stream.zstd/1"] for info in metadata.storage_data.values())
    upload_tree(s3, tmp_path, bucket, "zstd")
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/zstd"))
    assert_same(state, loaded)


def test_partial_load_fetches_only_the_items_it_needs(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    state = compressible_state()
    save_compressed(state, tmp_path)
    stored = dcp.FileSystemReader(tmp_path).read_metadata().storage_data
    upload_tree(s3, tmp_path, bucket, "zstd")
    wanted = {"ramp": torch.empty(64, 64)}
    reader = S3StorageReader(REGION, f"s3://{bucket}/zstd", S3ClientConfig(coalesce_gap=0))
    dcp.load(wanted, storage_reader=reader)
    assert torch.equal(wanted["ramp"], state["ramp"])
    (read,) = [stats for stats in reader.last_stats if stats.phase == "load.read"]
    ramp = [info for index, info in stored.items() if index.fqn == "ramp"]
    assert read.requests == 1 and read.bytes == sum(info.length for info in ramp)


def test_unknown_transform_is_refused_naming_it(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    state = {"w": torch.ones(4)}
    save_compressed(state, tmp_path)
    metadata = pickle.loads((tmp_path / ".metadata").read_bytes())
    for info in metadata.storage_data.values():
        info.transform_descriptors = ["stream.rot13/1"]
    (tmp_path / ".metadata").write_bytes(pickle.dumps(metadata))
    upload_tree(s3, tmp_path, bucket, "odd")
    with pytest.raises(CheckpointException) as raised:
        dcp.load(blank_like(state), storage_reader=S3StorageReader(REGION, f"s3://{bucket}/odd"))
    error = s3dcp_error(raised.value)
    assert isinstance(error, UnsafeCheckpointError)
    assert "stream.rot13/1" in str(error) and "install" in str(error)


def test_damaged_compressed_bytes_are_reported_as_damage(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    state = {"w": torch.arange(256, dtype=torch.float32)}
    save_compressed(state, tmp_path)
    (info,) = dcp.FileSystemReader(tmp_path).read_metadata().storage_data.values()
    shard = tmp_path / info.relative_path
    data = bytearray(shard.read_bytes())
    data[info.offset : info.offset + 8] = b"\xff" * 8  # the zstd frame header
    shard.write_bytes(bytes(data))
    upload_tree(s3, tmp_path, bucket, "bad")
    with pytest.raises(CheckpointException) as raised:
        dcp.load(blank_like(state), storage_reader=S3StorageReader(REGION, f"s3://{bucket}/bad"))
    assert isinstance(s3dcp_error(raised.value), CheckpointDamagedError)
