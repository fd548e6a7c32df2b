"""Same bytes as DCP's own format: checkpoints move between S3 and a directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import RoundRobinPrefixStrategy, S3StorageReader, S3StorageWriter
from s3dcp._format.integrity import get_checksum
from tests.conftest import REGION, list_keys
from tests.helpers import assert_same, blank_like, needs_stream_transforms
from tests.integration.test_roundtrip import mixed_state_dict

pytestmark = pytest.mark.s3


def download_tree(s3: Any, bucket: str, prefix: str, target: Path) -> None:
    """What ``aws s3 sync s3://bucket/prefix target`` does."""
    for key in list_keys(s3, bucket, prefix + "/"):
        path = target / key[len(prefix) + 1 :]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def upload_tree(s3: Any, source: Path, bucket: str, prefix: str) -> None:
    for path in source.rglob("*"):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(source).as_posix()}"
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


@pytest.mark.parametrize("thread_count", [1, 2])
def test_s3dcp_checkpoint_loads_with_filesystem_reader(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, thread_count: int
) -> None:
    state = mixed_state_dict()
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/ckpt", thread_count=thread_count))
    download_tree(s3, bucket, "ckpt", tmp_path)
    reader = dcp.FileSystemReader(tmp_path)
    # the checksums s3dcp adds ride along in the metadata FileSystemReader reads
    assert all(get_checksum(info) for info in reader.read_metadata().storage_data.values())
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=reader)
    assert_same(state, loaded)


def test_prefixed_layout_loads_with_filesystem_reader(s3_env: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    state = {"w": torch.randn(8, 8), "step": 4}
    writer = S3StorageWriter(
        REGION, f"s3://{bucket}/ckpt", prefix_strategy=RoundRobinPrefixStrategy(["a", "b"], epoch_num=2)
    )
    dcp.save(state, storage_writer=writer)
    assert "ckpt/a/epoch_2/__0_0.distcp" in list_keys(s3, bucket)
    download_tree(s3, bucket, "ckpt", tmp_path)
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=dcp.FileSystemReader(tmp_path))
    assert_same(state, loaded)


@pytest.mark.parametrize("thread_count", [1, 3])
def test_filesystem_writer_checkpoint_loads_from_s3(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, thread_count: int
) -> None:
    state = mixed_state_dict()
    dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp_path, thread_count=thread_count, sync_files=False))
    upload_tree(s3, tmp_path, bucket, "from-disk")
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/from-disk"))
    assert_same(state, loaded)


@pytest.mark.parametrize(
    "compress", [pytest.param(False, id="plain"), pytest.param(True, id="zstd", marks=needs_stream_transforms)]
)
@pytest.mark.parametrize("thread_count", [1, 2])
@pytest.mark.parametrize("kind", ["tensors", "mixed"])
def test_shard_bytes_equal_filesystem_writer_bytes(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path, kind: str, thread_count: int, compress: bool
) -> None:
    """Not just loadable: every shard object is byte-identical to DCP's file.

    ``mixed`` holds plain values too, which both writers store before the tensors.
    """
    if kind == "tensors":
        state: dict[str, Any] = {
            "a": torch.arange(1000, dtype=torch.float32),
            "b": torch.ones(3, 3, dtype=torch.bfloat16),
        }
    else:
        state = mixed_state_dict()
    extensions: list[Any] = []
    compression: dict[str, Any] = {}  # a torch without stream transforms has no _extensions keyword
    if compress:
        from torch.distributed.checkpoint._extension import ZStandard

        extensions = [ZStandard()]
        compression = {"_extensions": extensions}
    dcp.save(
        state,
        storage_writer=dcp.FileSystemWriter(tmp_path, thread_count=thread_count, sync_files=False, **compression),
    )
    dcp.save(
        state,
        storage_writer=S3StorageWriter(
            REGION, f"s3://{bucket}/same", thread_count=thread_count, extensions=extensions or None
        ),
    )
    shards = sorted(path.name for path in tmp_path.glob("*.distcp"))
    assert shards == [f"__0_{i}.distcp" for i in range(thread_count)]
    for name in shards:
        ours = s3.get_object(Bucket=bucket, Key=f"same/{name}")["Body"].read()
        assert ours == (tmp_path / name).read_bytes(), name
