"""A GET larger than ``max_read_size`` is made as several ranged GETs in parallel, still in place and verified."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

import s3dcp._format.in_place
from s3dcp import (
    AccessDeniedError,
    CheckpointDamagedError,
    ChecksumMismatchError,
    S3ClientConfig,
    S3StorageReader,
    S3StorageWriter,
)
from s3dcp._load import MIN_PIECE_SIZE
from s3dcp_testkit.fault_proxy import FaultProxy, Record
from s3dcp_testkit.memory_store import MemoryStore
from s3dcp_testkit.wan import WanEmulator, WanSettings
from tests.conftest import REGION, use_loopback_store
from tests.helpers import (
    FAST_RETRIES,
    HAS_STREAM_TRANSFORMS,
    MIB,
    assert_same,
    blank_like,
    needs_stream_transforms,
    s3dcp_error,
)
from tests.integration.test_interop import upload_tree

if HAS_STREAM_TRANSFORMS:
    from torch.distributed.checkpoint._extension import ZStandard

pytestmark = pytest.mark.s3

PIECE = MIN_PIECE_SIZE  # the smallest piece there is: max_read_size below it is read as it
CONFIG = S3ClientConfig(max_read_size=PIECE, max_concurrency=3, **FAST_RETRIES)
SHARD = "__0_0.distcp"


def big_state() -> dict[str, Any]:
    """One tensor of 4.5 MiB (five pieces of about 0.9 MiB), and small items around it."""
    g = torch.Generator().manual_seed(21)
    return {
        "big": torch.randn(1536, 768, generator=g),
        "small": torch.randn(100, generator=g),
        "step": 3,
    }


def save(bucket: str, name: str, state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Save ``state``; its URI and each item's storage record by name."""
    uri = f"s3://{bucket}/{name}"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, uri, CONFIG))
    records = S3StorageReader(REGION, uri, CONFIG).read_metadata().storage_data
    return uri, {index.fqn: info for index, info in records.items()}


def served(record: Record) -> tuple[int, int]:
    """The ``[start, end)`` a GET asked for."""
    assert record.range is not None
    first, last = (int(x) for x in record.range.removeprefix("bytes=").split("-"))
    return first, last + 1


def test_a_tensor_larger_than_max_read_size_loads_in_place_from_parallel_pieces(
    proxied_env: Any, proxy: FaultProxy, bucket: str, mocker: Any
) -> None:
    state = big_state()
    uri, records = save(bucket, "pieces", state)
    big = records["big"]
    pieces = -(-big.length // PIECE)
    assert pieces == 5
    loaded = blank_like(state)
    destination = loaded["big"].data_ptr()
    spy = mocker.spy(s3dcp._format.in_place, "destination_bytes")
    proxy.clear()
    reader = S3StorageReader(REGION, uri, CONFIG)
    dcp.load(loaded, storage_reader=reader)

    assert_same(state, loaded)
    assert loaded["big"].data_ptr() == destination
    assert [call.args[0].data_ptr() for call in spy.call_args_list] == [destination]  # read straight into it
    spans = sorted(served(r) for r in proxy.requests("GET", SHARD + "$"))
    inside = [(a, b) for a, b in spans if big.offset <= a and b <= big.offset + big.length]
    assert len(inside) == pieces  # consecutive, near equal, none over max_read_size
    assert inside[0][0] == big.offset and inside[-1][1] == big.offset + big.length
    assert all(a == b for (_, a), (b, _) in zip(inside, inside[1:]))
    assert all(PIECE // 2 < b - a <= PIECE for a, b in inside)
    (read,) = [stats for stats in reader.last_stats if stats.phase == "load.read"]
    assert read.requests == len(spans) >= pieces + 1  # the small items: one GET of their own


def test_damage_inside_one_piece_is_caught_and_named(s3_env: Any, s3: Any, bucket: str) -> None:
    state = big_state()
    uri, records = save(bucket, "damaged", state)
    big = records["big"]
    key = f"damaged/{big.relative_path}"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[big.offset + big.length * 3 // 5 + 100] ^= 0x01  # inside the fourth piece of five
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))

    with pytest.raises(CheckpointException) as raised:
        dcp.load(blank_like(state), storage_reader=S3StorageReader(REGION, uri, CONFIG))
    error = s3dcp_error(raised.value)
    assert isinstance(error, ChecksumMismatchError) and error.item == "big"
    assert f"bytes {big.offset}-{big.offset + big.length - 1}" in str(error)


def test_an_object_cut_inside_a_split_item_is_damage(s3_env: Any, s3: Any, bucket: str) -> None:
    """Pieces past the end (416) and the piece the object ends in (fewer bytes) are both damage."""
    state = {"big": big_state()["big"]}
    uri, records = save(bucket, "cut", state)
    big = records["big"]
    key = f"cut/{big.relative_path}"
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body[: big.offset + big.length // 2])

    with pytest.raises(CheckpointException) as raised:
        dcp.load(blank_like(state), storage_reader=S3StorageReader(REGION, uri, CONFIG))
    error = s3dcp_error(raised.value)
    assert type(error) is CheckpointDamagedError, repr(error)
    assert f"ends before byte {big.offset + big.length}" in str(error) and "'big'" in str(error)


def test_a_split_item_laid_out_otherwise_is_read_again_in_pieces(
    s3_env: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A transposed tensor (stored with its strides) goes in place first, then again through a buffer."""
    source = torch.randn(1024, 768, generator=torch.Generator().manual_seed(5))  # 3 MiB
    uri, _ = save(bucket, "strided", {"t": source.t()})
    loaded = {"t": torch.zeros(768, 1024)}
    reader = S3StorageReader(REGION, uri, CONFIG)
    with caplog.at_level(logging.DEBUG, logger="s3dcp"):
        dcp.load(loaded, storage_reader=reader)
    assert_same({"t": source.t().contiguous()}, loaded)
    assert "item 't' is not laid out as expected" in caplog.text
    (read,) = [stats for stats in reader.last_stats if stats.phase == "load.read"]
    assert read.requests == 2 * 4  # four pieces, twice


def test_broken_bodies_resume_within_their_piece(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    """A body cut in the middle of a piece, and a connection reset, are retried for that piece's bytes only."""
    state = {"big": big_state()["big"]}  # every GET is a piece
    uri, _ = save(bucket, "broken", state)
    proxy.clear()
    proxy.add_rule("truncate", method="GET", key_pattern=SHARD + "$", count=1, keep_fraction=0.5)
    proxy.add_rule("reset", method="GET", key_pattern=SHARD + "$", count=1)
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, uri, CONFIG))

    assert_same(state, loaded)
    gets = proxy.requests("GET", SHARD + "$")
    assert [r.action for r in gets].count("truncate") == 1 and [r.action for r in gets].count("reset") == 1
    (cut,) = [r for r in gets if r.action == "truncate"]
    start, end = served(cut)
    assert end - start <= PIECE and all(b - a <= PIECE for a, b in map(served, gets))
    again = [served(r) for r in gets if r.action is None and served(r)[1] == end and served(r) != (start, end)]
    (resumed,) = again  # the rest of the cut piece, asked for once
    assert start < resumed[0] <= start + cut.response_bytes


class _Said(logging.Handler):
    """Sets ``event`` once the ``s3dcp`` logger emits a line containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_the_first_failed_piece_fails_the_load_and_sends_no_more(
    proxied_env: Any, proxy: FaultProxy, bucket: str
) -> None:
    """One piece held, the other denied: the denial ends the load, and the queued pieces are never sent.

    The held piece is let go only once the load says it has stopped: let go
    sooner, it would free a slot before the denial is seen, and a piece sent
    then is not one sent after the failure.
    """
    state = {"big": torch.randn(6 * MIB // 4)}  # seven pieces
    uri, _ = save(bucket, "denied", state)
    proxy.clear()
    hold = proxy.add_rule("hold", method="GET", key_pattern=SHARD + "$", count=1)
    deny = proxy.add_rule("access_denied", method="GET", key_pattern=SHARD + "$", count=1)
    config = S3ClientConfig(max_read_size=PIECE, max_concurrency=2, **FAST_RETRIES)
    stopped = _Said("reading stopped on AccessDeniedError; waiting for 1 request(s) already sent")
    logger = logging.getLogger("s3dcp")
    level = logger.level
    logger.addHandler(stopped)
    logger.setLevel(logging.DEBUG)
    try:
        with ThreadPoolExecutor(1) as pool:
            loading = pool.submit(dcp.load, blank_like(state), storage_reader=S3StorageReader(REGION, uri, config))
            try:
                assert deny.hit.wait(60), "the second piece never reached the store"
                assert stopped.event.wait(60), "the load did not stop on the denial"
            finally:
                hold.release()  # a load that went on after the denial would send the other five pieces
            with pytest.raises(CheckpointException) as raised:
                loading.result(timeout=120)
    finally:
        logger.removeHandler(stopped)
        logger.setLevel(level)
    assert isinstance(s3dcp_error(raised.value), AccessDeniedError)
    assert [r.action for r in proxy.requests("GET", SHARD + "$")] == ["access_denied", "hold"]


@pytest.mark.parametrize("concurrency", [2, 3])
def test_pieces_and_whole_gets_together_stay_within_max_concurrency(clean_aws_env: Any, concurrency: int) -> None:
    """Counted where the requests arrive, behind a 20 ms first byte that keeps each of them in flight a while."""
    g = torch.Generator().manual_seed(4)
    state = {"big": torch.randn(6 * MIB // 4, generator=g), **{f"w{i}": torch.randn(60_000) for i in range(4)}}
    with MemoryStore() as store, WanEmulator(store.endpoint_url, WanSettings(first_byte_ms=20)) as wan:
        use_loopback_store(clean_aws_env, wan.endpoint_url)
        boto3.client("s3").create_bucket(Bucket="wan")
        config = S3ClientConfig(max_read_size=PIECE, max_concurrency=concurrency, coalesce_gap=0)
        dcp.save(state, storage_writer=S3StorageWriter(REGION, "s3://wan/ckpt", config))
        loaded = blank_like(state)
        reader = S3StorageReader(REGION, "s3://wan/ckpt", config)
        reader.read_metadata()
        assert wan.in_flight.wait_idle(timeout=30)
        wan.counts.take()
        wan.in_flight.take()
        dcp.load(loaded, storage_reader=reader)
        assert wan.in_flight.wait_idle(timeout=30)
        counts = wan.counts.take()
        in_flight = wan.in_flight.take()

    assert_same(state, loaded)
    assert counts["op:GetObject"] >= 7 + 1  # seven pieces, the small tensors' GET
    assert in_flight["in_flight_max"] <= concurrency
    assert in_flight["in_flight_max"] >= 2  # the pieces did go in parallel


@needs_stream_transforms
def test_a_compressed_item_larger_than_max_read_size_loads_from_pieces(
    s3_env: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """Transformed items are decoded after all their pieces are in, in order."""
    g = torch.Generator().manual_seed(8)
    state = {"noise": torch.randn(1024, 768, generator=g), "ramp": torch.arange(1000.0)}  # 3 MiB, barely compressible
    dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp_path, sync_files=False, _extensions=[ZStandard()]))
    upload_tree(s3, tmp_path, bucket, "zstd")
    reader = S3StorageReader(REGION, f"s3://{bucket}/zstd", CONFIG)
    stored = {index.fqn: info for index, info in reader.read_metadata().storage_data.items()}
    assert stored["noise"].length > 2 * PIECE
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=reader)
    assert_same(state, loaded)
    (read,) = [stats for stats in reader.last_stats if stats.phase == "load.read"]
    assert read.requests >= 3
