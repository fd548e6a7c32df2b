"""Large tensor items are read straight into their destination tensors, never trusted blindly."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

import s3dcp._format.in_place
from s3dcp import ChecksumMismatchError, S3ClientConfig, S3StorageReader, S3StorageWriter
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION
from tests.helpers import assert_same, blank_like, s3dcp_error

pytestmark = pytest.mark.s3

KIB = 1024
# every tensor of 64 KiB or more goes in place, whether it shares its GET with other items
# (the default coalescing) or has one of its own (reads of at most 64 KiB)
CONFIGS = [S3ClientConfig(), S3ClientConfig(max_read_size=64 * KIB)]
IDS = ["coalesced", "own-get"]
CONFIG = CONFIGS[1]


def mixed_state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(11)
    return {
        "f32": torch.randn(300, 100, generator=g),
        "bf16": torch.randn(70_000, generator=g).to(torch.bfloat16),
        "i64": torch.randint(-(2**40), 2**40, (20_000,), generator=g),
        "flags": torch.randint(0, 2, (100_000,), generator=g).bool(),
        "small": torch.randn(10, generator=g),  # one read: the ordinary way
        "step": 7,
    }


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_large_items_land_in_place_bit_for_bit(s3_env: Any, bucket: str, mocker: Any, config: S3ClientConfig) -> None:
    state = mixed_state()
    path = f"s3://{bucket}/in-place"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config, thread_count=2))
    spy = mocker.spy(s3dcp._format.in_place, "destination_bytes")
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)
    assert sorted({call.args[0].numel() for call in spy.call_args_list}) == sorted(
        state[name].numel() for name in ("f32", "bf16", "i64", "flags")
    )


def test_a_destination_of_another_dtype_goes_the_ordinary_way(s3_env: Any, bucket: str, mocker: Any) -> None:
    state = {"w": torch.randn(40_000)}
    path = f"s3://{bucket}/other-dtype"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, CONFIG))
    spy = mocker.spy(s3dcp._format.in_place, "destination_bytes")
    loaded = {"w": torch.zeros(40_000, dtype=torch.float64)}  # DCP converts on copy
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, CONFIG))
    assert spy.call_count == 0
    assert torch.equal(loaded["w"], state["w"].double())


def test_damage_inside_a_tensor_read_in_place_is_refused(s3_env: Any, s3: Any, bucket: str) -> None:
    state = {"w": torch.randn(40_000)}
    path = f"s3://{bucket}/damaged"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, CONFIG))
    key = "damaged/__0_0.distcp"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01  # in the middle of the tensor's bytes
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    with pytest.raises(CheckpointException) as raised:
        dcp.load(blank_like(state), storage_reader=S3StorageReader(REGION, path, CONFIG))
    error = s3dcp_error(raised.value)
    assert isinstance(error, ChecksumMismatchError) and error.item == "w"


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_an_archive_laid_out_otherwise_is_read_again_the_ordinary_way(
    s3_env: Any, bucket: str, caplog: pytest.LogCaptureFixture, config: S3ClientConfig
) -> None:
    """A transposed tensor is stored by torch.save with its strides: same length, other framing."""
    source = torch.randn(200, 100)
    state = {"before": torch.randn(30_000), "t": source.t(), "after": torch.randn(30_000)}
    path = f"s3://{bucket}/strided"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config))
    loaded = {"before": torch.zeros(30_000), "t": torch.zeros(100, 200), "after": torch.zeros(30_000)}
    with caplog.at_level(logging.DEBUG, logger="s3dcp"):
        dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same({"before": state["before"], "t": source.t().contiguous(), "after": state["after"]}, loaded)
    assert "item 't' is not laid out as expected" in caplog.text


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_a_body_cut_short_resumes_into_the_right_piece(
    proxied_env: Any, proxy: FaultProxy, bucket: str, config: S3ClientConfig
) -> None:
    """The retries ask for the bytes still missing, which land where they belong."""
    state = {"w": torch.randn(250_000)}  # 1 MB; the first GET is cut after 10%, the retry after 60%
    path = f"s3://{bucket}/resumed"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config))
    proxy.clear()
    proxy.add_rule("truncate", method="GET", key_pattern=r"distcp$", count=1, keep_fraction=0.1)
    proxy.add_rule("truncate", method="GET", key_pattern=r"distcp$", count=1, keep_fraction=0.6)
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)
    gets = proxy.requests("GET", r"distcp$")
    assert [r.action for r in gets].count("truncate") == 2
    assert len(gets) == 3
