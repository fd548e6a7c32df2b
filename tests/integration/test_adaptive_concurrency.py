"""Saves and loads raise their requests in flight where that pays and go back where it does not.

Through the WAN emulator in front of the in-memory store: a link limited per
connection (a distant store) moves more with more requests at once, so the
level grows to ``max_concurrency`` and stays; a link limited in all (a
store bound by its own capacity) moves the same, so after one round at the
higher level it goes back. What the transfer decided is read from its DEBUG
log line; the emulator counts what was really in flight. The emulator and
its store run in a process of their own (:class:`WanProcess`): in the test's
process they would share the interpreter with the client, and the link would
slow down while the client fills parts, which is not the store's doing.
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter
from s3dcp._load import MIN_PIECE_SIZE
from s3dcp_testkit.fault_proxy import FaultProxy
from s3dcp_testkit.wan import WanProcess, WanSettings
from tests.conftest import REGION, use_loopback_store
from tests.helpers import FAST_RETRIES, MIB, assert_same, blank_like

pytestmark = pytest.mark.s3

PER_CONNECTION = WanSettings(first_byte_ms=5, connection_mbps=8)  # four times the requests move four times the bytes
SHARED = WanSettings(first_byte_ms=5, connection_mbps=None, total_mbps=32)  # they move the same bytes
LINKS = {"limited per connection": (PER_CONNECTION, "kept"), "limited in all": (SHARED, "back")}
# loads: 1 MiB GETs cost the client more CPU a byte than 5 MiB parts, so the link per connection is slower,
# for 16 of them to move four times what 4 move on two cores (at 8 MB/s, 16 GETs measured 45-144 MB/s)
LOAD_LINKS = {**LINKS, "limited per connection": (WanSettings(first_byte_ms=5, connection_mbps=4), "kept")}


def level_changes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split(" (")[0] for r in caplog.records if r.getMessage().startswith("requests in flight")]


def expected_changes(low: int, high: int, outcome: str) -> list[str]:
    after = high if outcome == "kept" else low
    return [f"requests in flight {low} -> {high}", f"requests in flight {high} -> {after}"]


@pytest.mark.parametrize("link", LINKS)
def test_a_save_grows_its_parts_in_flight_only_where_that_moves_more(
    clean_aws_env: Any, caplog: pytest.LogCaptureFixture, link: str
) -> None:
    settings, outcome = LINKS[link]
    state = {"weight": torch.randn(60 * MIB // 4, generator=torch.Generator().manual_seed(5))}  # twelve 5 MiB parts
    config = S3ClientConfig(part_size=5 * MIB, initial_concurrency=2, max_concurrency=8)
    with WanProcess(settings) as wan:
        use_loopback_store(clean_aws_env, wan.endpoint_url)
        boto3.client("s3").create_bucket(Bucket="wan")
        with caplog.at_level(logging.DEBUG, logger="s3dcp"):
            dcp.save(state, storage_writer=S3StorageWriter(REGION, "s3://wan/ckpt", config, thread_count=1))
        in_flight = wan.take()
        first_changes = level_changes(caplog)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="s3dcp"):  # the job's next checkpoint
            dcp.save(state, storage_writer=S3StorageWriter(REGION, "s3://wan/next", config, thread_count=1))
        in_flight_next = wan.take()
        use_loopback_store(clean_aws_env, wan.store_url)
        loaded = blank_like(state)
        dcp.load(loaded, storage_reader=S3StorageReader(REGION, "s3://wan/next"))

    assert_same(state, loaded)
    assert first_changes == expected_changes(2, 8, outcome)
    # the higher level was tried for real (how far one thread filling parts keeps up varies), and never passed
    assert 2 < in_flight["in_flight_max"] <= 8
    # the next save starts at the level the first settled on, and measures no rounds
    settled = 8 if outcome == "kept" else 2
    assert [r.getMessage() for r in caplog.records if "requests in flight" in r.getMessage()] == [
        f"starting at {settled} requests in flight, where an earlier upload settled"
    ]
    if outcome == "kept":
        assert 2 < in_flight_next["in_flight_max"] <= 8
    else:
        assert in_flight_next["in_flight_max"] <= 2


def load_through_the_emulator(
    env: Any, caplog: pytest.LogCaptureFixture, state: dict[str, Any], config: S3ClientConfig, link: WanSettings
) -> tuple[dict[str, Any], dict[str, float]]:
    """Save ``state`` straight to an in-memory store, load it through the emulator with ``config``
    and DEBUG logs captured; what was loaded, and the emulator's requests in flight during the load."""
    with WanProcess(link) as wan:
        use_loopback_store(env, wan.store_url)
        boto3.client("s3").create_bucket(Bucket="wan")
        dcp.save(state, storage_writer=S3StorageWriter(REGION, "s3://wan/ckpt"))
        use_loopback_store(env, wan.endpoint_url)
        reader = S3StorageReader(REGION, "s3://wan/ckpt", config)
        reader.read_metadata()
        wan.take()  # the metadata's GET is not the load's
        loaded = blank_like(state)
        with caplog.at_level(logging.DEBUG, logger="s3dcp"):
            dcp.load(loaded, storage_reader=reader)
        return loaded, wan.take()


@pytest.mark.parametrize("link", LOAD_LINKS)
def test_a_load_grows_its_gets_in_flight_only_where_that_moves_more(
    clean_aws_env: Any, caplog: pytest.LogCaptureFixture, link: str
) -> None:
    settings, outcome = LOAD_LINKS[link]
    state = {"weight": torch.randn(32 * MIB // 4, generator=torch.Generator().manual_seed(6))}  # 32 pieces
    config = S3ClientConfig(max_read_size=MIN_PIECE_SIZE, initial_concurrency=4, max_concurrency=16)
    loaded, in_flight = load_through_the_emulator(clean_aws_env, caplog, state, config, settings)
    assert_same(state, loaded)
    assert level_changes(caplog) == expected_changes(4, 16, outcome)
    assert 4 < in_flight["in_flight_max"] <= 16


def test_a_fixed_level_never_changes(clean_aws_env: Any, caplog: pytest.LogCaptureFixture) -> None:
    """initial_concurrency = max_concurrency: the old behaviour, every request slot used from the start."""
    state = {"weight": torch.randn(24 * MIB // 4, generator=torch.Generator().manual_seed(7))}
    config = S3ClientConfig(max_read_size=MIN_PIECE_SIZE, initial_concurrency=6, max_concurrency=6)
    loaded, in_flight = load_through_the_emulator(clean_aws_env, caplog, state, config, PER_CONNECTION)
    assert_same(state, loaded)
    assert level_changes(caplog) == []
    assert in_flight["in_flight_max"] == 6


def test_a_throttled_part_halves_the_parts_in_flight_for_the_rest_of_the_save(
    proxied_env: Any, proxy: FaultProxy, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The proxy answers one part 503 SlowDown; the round that saw it ends with half the level, for good."""
    state = {"weight": torch.randn(30 * MIB // 4, generator=torch.Generator().manual_seed(8))}  # six 5 MiB parts
    proxy.add_rule("slowdown", method="PUT", query_contains="partNumber=", count=1)
    config = S3ClientConfig(part_size=5 * MIB, initial_concurrency=4, max_concurrency=16, **FAST_RETRIES)
    with caplog.at_level(logging.DEBUG, logger="s3dcp"):
        dcp.save(state, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/busy", config, thread_count=1))
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/busy"))

    assert_same(state, loaded)
    assert [r.action for r in proxy.requests("PUT", r"\.distcp$")].count("slowdown") == 1
    assert level_changes(caplog) == ["requests in flight 4 -> 2"]
