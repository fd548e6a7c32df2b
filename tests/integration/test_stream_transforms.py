"""DCP stream transforms (``ZStandard``): checkpoints FileSystemWriter compresses load from S3."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter
from s3dcp._errors import CheckpointDamagedError, ChecksumMismatchError, UnsafeCheckpointError
from s3dcp._format.integrity import get_checksum
from tests.conftest import REGION
from tests.helpers import HAS_STREAM_TRANSFORMS, assert_same, blank_like, needs_stream_transforms, s3dcp_error
from tests.integration.test_interop import download_tree, upload_tree
from tests.integration.test_roundtrip import mixed_state_dict

if HAS_STREAM_TRANSFORMS:
    from torch.distributed.checkpoint._extension import ZStandard

pytestmark = [pytest.mark.s3, needs_stream_transforms]


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


def test_partial_load_fetches_only_the_items_it_needs(s3_env: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
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


@pytest.mark.parametrize(
    ("descriptors", "said"),
    [(["stream.rot13/1"], ("stream.rot13/1", "install")), ([["stream.zstd/1"]], ("not a string",))],
    ids=["unknown", "not-a-string"],
)
def test_unknown_or_malformed_transforms_are_refused_naming_them(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, descriptors: list[Any], said: tuple[str, ...]
) -> None:
    state = {"w": torch.ones(4)}
    save_compressed(state, tmp_path)
    metadata = pickle.loads((tmp_path / ".metadata").read_bytes())
    for info in metadata.storage_data.values():
        info.transform_descriptors = descriptors
    (tmp_path / ".metadata").write_bytes(pickle.dumps(metadata))
    upload_tree(s3, tmp_path, bucket, "odd")
    with pytest.raises(CheckpointException) as raised:
        dcp.load(blank_like(state), storage_reader=S3StorageReader(REGION, f"s3://{bucket}/odd"))
    error = s3dcp_error(raised.value)
    assert isinstance(error, UnsafeCheckpointError)
    assert all(words in str(error) for words in said), str(error)


def test_damaged_compressed_bytes_are_reported_as_damage(s3_env: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
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


@pytest.mark.parametrize("thread_count", [1, 2])
def test_s3dcp_writes_zstd_that_filesystem_reader_and_s3dcp_load(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, thread_count: int
) -> None:
    state = mixed_state_dict()
    writer = S3StorageWriter(REGION, f"s3://{bucket}/ours", thread_count=thread_count, extensions=[ZStandard()])
    dcp.save(state, storage_writer=writer)
    download_tree(s3, bucket, "ours", tmp_path)
    reader = dcp.FileSystemReader(tmp_path)
    stored = reader.read_metadata().storage_data
    assert all(info.transform_descriptors == ["stream.zstd/1"] and get_checksum(info) for info in stored.values())
    from_disk = blank_like(state)
    dcp.load(from_disk, storage_reader=reader)
    assert_same(state, from_disk)
    from_s3 = blank_like(state)
    dcp.load(from_s3, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/ours"))
    assert_same(state, from_s3)


def test_zstd_shards_are_smaller_and_plain_saves_record_no_transforms(s3_env: Any, s3: Any, bucket: str) -> None:
    state = compressible_state()
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/zstd", extensions=[ZStandard()]))
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/plain"))
    zstd = s3.get_object(Bucket=bucket, Key="zstd/__0_0.distcp")["Body"].read()
    plain = s3.get_object(Bucket=bucket, Key="plain/__0_0.distcp")["Body"].read()
    assert len(zstd) < len(plain) // 2
    metadata = S3StorageReader(REGION, f"s3://{bucket}/plain").read_metadata()
    assert all(info.transform_descriptors is None for info in metadata.storage_data.values())


def test_damaged_s3dcp_zstd_item_fails_its_checksum_before_decoding(s3_env: Any, s3: Any, bucket: str) -> None:
    state = {"w": torch.arange(256, dtype=torch.float32)}
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/c", extensions=[ZStandard()]))
    key = "c/__0_0.distcp"
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-1] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    with pytest.raises(CheckpointException) as raised:
        dcp.load(blank_like(state), storage_reader=S3StorageReader(REGION, f"s3://{bucket}/c"))
    assert isinstance(s3dcp_error(raised.value), ChecksumMismatchError)


@pytest.mark.parametrize("extensions", [ZStandard() if HAS_STREAM_TRANSFORMS else None, ["zstd"], [object()]])
def test_extensions_must_be_stream_transforms(s3_env: Any, bucket: str, extensions: Any) -> None:
    with pytest.raises(TypeError, match="StreamTransformExtension"):
        S3StorageWriter(REGION, f"s3://{bucket}/x", extensions=extensions)


def _spy_decoders(mocker: Any) -> tuple[Any, Any]:
    from s3dcp._format import transforms

    return mocker.spy(transforms, "decode_into"), mocker.spy(transforms, "decode")


def test_whole_tensors_decode_straight_into_their_destinations(s3_env: Any, s3: Any, bucket: str, mocker: Any) -> None:
    """A big tensor goes from the decoder into the caller's tensor, with no buffer of its own."""
    state = {"big": torch.arange(40_000, dtype=torch.float32), "small": torch.ones(8), "step": 3}
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/z", extensions=[ZStandard()]))
    decode_into, decode = _spy_decoders(mocker)
    loaded = blank_like(state)
    destination = loaded["big"].data_ptr()
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/z"))
    assert_same(state, loaded)
    assert loaded["big"].data_ptr() == destination
    assert decode_into.call_count == 1 and decode_into.spy_return is not None
    assert decode.call_count == 2  # "small" and "step": too small to be worth it, not tensors


def test_archive_laid_out_otherwise_is_decoded_the_ordinary_way(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, mocker: Any
) -> None:
    """A transposed tensor's archive records other strides: its framing is not the expected one."""
    state = {"t": torch.randn(128, 256, generator=torch.Generator().manual_seed(3)).t()}
    save_compressed(state, tmp_path)
    upload_tree(s3, tmp_path, bucket, "zt")
    decode_into, decode = _spy_decoders(mocker)
    loaded = {"t": torch.zeros(256, 128)}
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/zt"))
    assert torch.equal(loaded["t"], state["t"])
    assert decode_into.call_count == 1 and decode_into.spy_return is None
    assert decode.call_count == 1


def test_damaged_compressed_tensor_decoded_in_place_is_reported_as_damage(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """FileSystemWriter records no digest, so the decoder is the first to see the damage."""
    state = {"w": torch.arange(40_000, dtype=torch.float32)}
    save_compressed(state, tmp_path)
    (info,) = dcp.FileSystemReader(tmp_path).read_metadata().storage_data.values()
    shard = tmp_path / info.relative_path
    data = bytearray(shard.read_bytes())
    middle = info.offset + info.length // 2
    data[middle : middle + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    upload_tree(s3, tmp_path, bucket, "bad")
    with pytest.raises(CheckpointException) as raised:
        dcp.load(blank_like(state), storage_reader=S3StorageReader(REGION, f"s3://{bucket}/bad"))
    error = s3dcp_error(raised.value)
    assert isinstance(error, CheckpointDamagedError) and "stream.zstd/1" in str(error), str(error)
