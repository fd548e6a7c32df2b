"""Integrity and safe loading: flipped bits are caught, hostile checkpoints run nothing."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import (
    ChecksumMismatchError,
    S3ClientConfig,
    S3StorageReader,
    S3StorageWriter,
    UnsafeCheckpointError,
)
from s3dcp._format.integrity import get_checksum
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION
from tests.helpers import MIB, assert_same, blank_like, s3dcp_error

pytestmark = pytest.mark.s3


def stored_metadata(s3: Any, bucket: str, prefix: str) -> Any:
    """The test reads its own checkpoint's metadata with plain pickle (it wrote it)."""
    return pickle.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/.metadata")["Body"].read())


def store_metadata(s3: Any, bucket: str, prefix: str, metadata: Any) -> None:
    s3.put_object(Bucket=bucket, Key=f"{prefix}/.metadata", Body=pickle.dumps(metadata))


def flip_byte(s3: Any, bucket: str, key: str, position: int) -> None:
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[position] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))


def test_every_item_gets_a_checksum(s3_env: Any, s3: Any, bucket: str) -> None:
    state = {"w": torch.randn(100), "b": torch.zeros(3), "step": 7}
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/sums"))
    infos = stored_metadata(s3, bucket, "sums").storage_data.values()
    assert len(infos) == 3
    assert all((get_checksum(info) or "").startswith("xxh3_64:") for info in infos)


def test_a_flipped_byte_is_caught_and_named(s3_env: Any, s3: Any, bucket: str) -> None:
    g = torch.Generator().manual_seed(5)
    state = {"w": torch.randn(16 * 1024, generator=g), "other": torch.randn(100, generator=g)}
    path = f"s3://{bucket}/flip"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    info = next(i for index, i in stored_metadata(s3, bucket, "flip").storage_data.items() if index.fqn == "w")
    middle = info.offset + info.length // 2  # inside the tensor's 64 KiB of data
    flip_byte(s3, bucket, f"flip/{info.relative_path}", middle)

    with pytest.raises(CheckpointException) as raised:
        dcp.load(blank_like(state), storage_reader=S3StorageReader(REGION, path))
    error = s3dcp_error(raised.value)
    assert isinstance(error, ChecksumMismatchError)
    assert error.key == f"flip/{info.relative_path}" and error.item == "w"
    assert f"flip/{info.relative_path}" in str(error) and "'w'" in str(error)
    assert f"bytes {info.offset}-{info.offset + info.length - 1}" in str(error)

    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, verify=False))
    assert torch.equal(loaded["other"], state["other"])
    assert (loaded["w"] != state["w"]).sum() == 1  # the flipped bit, loaded as asked


class _RunsCode:
    """Pickles as a call to ``os.mkdir(marker)``: proof of execution if the directory appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def test_metadata_that_would_run_code_is_refused_before_it_runs(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    marker = tmp_path / "metadata-ran"
    dcp.save({"w": torch.ones(3)}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/evil"))
    store_metadata(s3, bucket, "evil", _RunsCode(marker))
    with pytest.raises(CheckpointException) as raised:
        dcp.load({"w": torch.zeros(3)}, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/evil"))
    error = s3dcp_error(raised.value)
    assert isinstance(error, UnsafeCheckpointError)
    assert "mkdir" in str(error) and "evil/.metadata" in str(error)
    assert not marker.exists()


def test_a_non_tensor_item_that_would_run_code_is_refused(s3_env: Any, bucket: str, tmp_path: Path) -> None:
    marker = tmp_path / "item-ran"
    path = f"s3://{bucket}/evil-item"
    dcp.save({"w": torch.ones(3), "extra": _RunsCode(marker)}, storage_writer=S3StorageWriter(REGION, path))
    assert not marker.exists()
    with pytest.raises(CheckpointException) as raised:
        dcp.load({"w": torch.zeros(3), "extra": None}, storage_reader=S3StorageReader(REGION, path))
    error = s3dcp_error(raised.value)
    assert isinstance(error, UnsafeCheckpointError) and "'extra'" in str(error)
    assert "add_safe_globals" in str(error)
    assert not marker.exists()


@pytest.mark.parametrize(
    "bad_path", ["../other/__0_0.distcp", "/abs/__0_0.distcp", "s3://other-bucket/x.distcp", "a/../../x"]
)
def test_object_paths_that_leave_the_checkpoint_are_refused(s3_env: Any, s3: Any, bucket: str, bad_path: str) -> None:
    dcp.save({"w": torch.ones(3)}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/escape/ckpt"))
    s3.put_object(Bucket=bucket, Key="escape/other/__0_0.distcp", Body=b"not yours")
    metadata = stored_metadata(s3, bucket, "escape/ckpt")
    for info in metadata.storage_data.values():
        info.relative_path = bad_path
    store_metadata(s3, bucket, "escape/ckpt", metadata)
    with pytest.raises(CheckpointException) as raised:
        dcp.load({"w": torch.zeros(3)}, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/escape/ckpt"))
    error = s3dcp_error(raised.value)
    assert isinstance(error, UnsafeCheckpointError) and bad_path in str(error)


def test_plain_values_and_registered_types_still_load(s3_env: Any, bucket: str) -> None:
    state = {"w": torch.ones(2), "meta": {"step": 3, "lr": 1e-3, "betas": (0.9, 0.95), "name": "x"}}
    path = f"s3://{bucket}/plain"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state, loaded)


def test_the_secret_key_never_shows(s3_env: Any, s3_server: Any, bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    """Not in repr, not in a failed save's error text or traceback, not in debug logs."""
    import traceback

    writer = S3StorageWriter(REGION, "s3://no-such-bucket-for-secrets/c", S3ClientConfig(max_attempts=2))
    reader = S3StorageReader(REGION, f"s3://{bucket}/nothing-here")
    texts = [repr(writer), repr(reader), repr(writer._client), repr(writer._client.settings)]
    with caplog.at_level(logging.DEBUG):
        for run in (
            lambda: dcp.save({"w": torch.ones(2)}, storage_writer=writer),
            lambda: dcp.load({"w": torch.ones(2)}, storage_reader=reader),
        ):
            with pytest.raises(CheckpointException) as raised:
                run()
            texts.append(str(raised.value))
            texts.append("".join(traceback.format_exception(raised.value)))
            error = s3dcp_error(raised.value)
            texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
    texts.append(caplog.text)
    assert caplog.text  # debug logging really was on
    assert not [text for text in texts if s3_server.secret_key in text]


@pytest.mark.parametrize(
    "upload_checksum, header, field",
    [("crc32", "x-amz-checksum-crc32", "body_crc32"), ("md5", "content-md5", "body_md5")],
)
def test_every_put_and_part_carries_a_checksum_of_its_bytes(
    proxied_env: Any, proxy: FaultProxy, bucket: str, upload_checksum: str, header: str, field: str
) -> None:
    """The store can refuse damaged uploads: the header matches the bytes the proxy received.

    12 MiB in 5 MiB parts: part 2 is sent straight from the tensor's memory, parts 1 and 3
    from part buffers.
    """
    config = S3ClientConfig(upload_checksum=upload_checksum, part_size=5 * MIB)
    state = {"big": torch.randn(12 * MIB // 4), "small": torch.ones(10)}
    dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/sent", config, thread_count=2))
    uploads = [r for r in proxy.requests("PUT") if r.request_bytes]
    assert len(uploads) >= 5  # three parts, one small shard, .metadata
    assert all(r.headers.get(header) == getattr(r, field) for r in uploads), [
        (r.path, r.headers.get(header)) for r in uploads
    ]


def test_upload_checksums_can_be_turned_off(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    config = S3ClientConfig(upload_checksum=None)
    dcp.save({"w": torch.ones(10)}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/none", config))
    sent = {name for r in proxy.requests("PUT") for name in r.headers}
    assert not {name for name in sent if name.startswith("x-amz-checksum-") or name == "content-md5"}
