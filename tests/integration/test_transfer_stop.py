"""A stopped transfer stops: retries end when asked, and a shard that fails stops its rank's other shards."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import AccessDeniedError, S3ClientConfig, S3StorageWriter
from s3dcp._config import resolve_settings
from s3dcp._s3.client import S3Client
from s3dcp._s3.retry import TransferStopped
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION, list_keys
from tests.helpers import s3dcp_error

pytestmark = pytest.mark.s3


def test_setting_stop_ends_the_retries_of_a_throttled_request(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    # waits of up to minutes between attempts: without the stop this request would run for an hour
    config = S3ClientConfig(max_attempts=50, retry_initial_backoff=30.0, retry_max_backoff=120.0, retry_deadline=3600.0)
    client = S3Client(resolve_settings(REGION, config))
    rule = proxy.add_rule("slowdown", method="PUT")
    stop = threading.Event()
    outcome: list[BaseException] = []

    def put() -> None:
        try:
            client.call_stoppable(stop, "put_object", bucket, "k", Body=b"x")
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=put)
    worker.start()
    assert rule.hit.wait(60)
    stop.set()
    worker.join(60)
    assert not worker.is_alive(), "the request went on retrying after its stop was set"
    assert len(outcome) == 1 and isinstance(outcome[0], TransferStopped)
    assert "s3://" in str(outcome[0]) and "/k" in str(outcome[0])


def test_a_failing_shard_stops_the_other_shards_of_its_rank(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    mib = 1024 * 1024
    state = {"a": torch.randn(7 * mib // 4), "b": torch.randn(7 * mib // 4)}
    writer = S3StorageWriter(REGION, f"s3://{bucket}/two", S3ClientConfig(part_size=5 * mib), thread_count=2)
    # shard 0's parts are held (it would take minutes); once one of them is on the wire, shard 1 is
    # let go and refused (its upload is held at creation until then, so the order is certain)
    hold = proxy.add_rule("hold", method="PUT", key_pattern=r"__0_0\.distcp$", query_contains="partNumber=")
    start_1 = proxy.add_rule("hold", method="POST", key_pattern=r"__0_1\.distcp$", query_contains="uploads")
    try:
        with ThreadPoolExecutor(1) as runner:
            saving = runner.submit(dcp.save, state, storage_writer=writer)
            assert hold.hit.wait(60) and start_1.hit.wait(60)
            proxy.add_rule("access_denied", method="PUT", key_pattern=r"__0_1\.distcp$")
            start_1.release()
            with pytest.raises(CheckpointException) as raised:
                saving.result(timeout=60)  # well before the held parts would be let go
            assert isinstance(s3dcp_error(raised.value), AccessDeniedError)
            assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
            assert "two/.metadata" not in list_keys(s3, bucket)
    finally:
        hold.release()
        start_1.release()
