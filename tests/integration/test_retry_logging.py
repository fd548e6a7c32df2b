"""Retries are visible: a WARNING once a request retries for long, an INFO line when it then succeeds.

The threshold is a config value, so these tests set it to 0 (warn at the
first retry) rather than wait; the proxy answers 503 or resets the
connection a few times, then lets the request through.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION
from tests.helpers import FAST_RETRIES, assert_same, blank_like

pytestmark = pytest.mark.s3


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "s3dcp" and r.levelno == level]


@pytest.mark.parametrize(
    "fault, hint",
    [("slowdown", "is throttling"), ("reset", "the network")],
)
def test_a_save_whose_shard_keeps_failing_for_a_while_warns_once_then_logs_success(
    proxied_env: Any, proxy: FaultProxy, bucket: str, caplog: pytest.LogCaptureFixture, fault: str, hint: str
) -> None:
    proxy.add_rule(fault, method="PUT", key_pattern=r"ckpt/__0_0\.distcp$", count=4)
    config = S3ClientConfig(retry_warning_after=0, **FAST_RETRIES)
    state = {"w": torch.arange(100.0)}
    path = f"s3://{bucket}/ckpt"
    with caplog.at_level(logging.INFO, logger="s3dcp"):
        dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config))
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"put_object s3://{bucket}/ckpt/__0_0.distcp has been retrying")
    assert "(1 attempt so far" in warnings[0] and hint in warnings[0] and proxy.endpoint_url in warnings[0]
    assert any(
        m.startswith(f"put_object s3://{bucket}/ckpt/__0_0.distcp succeeded after 5 attempts")
        for m in messages(caplog, logging.INFO)
    )
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state, loaded)


def test_retries_within_the_threshold_are_not_warned_about(
    proxied_env: Any, proxy: FaultProxy, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.add_rule("slowdown", method="PUT", key_pattern=r"__0_0\.distcp$", count=2)
    config = S3ClientConfig(retry_warning_after=3600, **FAST_RETRIES)
    with caplog.at_level(logging.DEBUG, logger="s3dcp"):
        dcp.save({"w": torch.ones(4)}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/quiet", config))
    assert messages(caplog, logging.WARNING) == []
    assert sum(m.startswith("retrying put_object") for m in messages(caplog, logging.DEBUG)) == 2
