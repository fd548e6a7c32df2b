"""A stopped transfer stops retrying: a request the store keeps throttling ends as soon as its stop is set."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from s3dcp import S3ClientConfig
from s3dcp.client import S3Client
from s3dcp.config import resolve_settings
from s3dcp.retry import TransferStopped
from tests.conftest import REGION
from tests.servers.fault_proxy import FaultProxy

pytestmark = pytest.mark.s3


def test_setting_stop_ends_the_retries_of_a_throttled_request(
    proxied_env: Any, proxy: FaultProxy, bucket: str
) -> None:
    # waits of up to minutes between attempts: without the stop this request would run for an hour
    config = S3ClientConfig(max_attempts=50, retry_initial_backoff=30.0, retry_max_backoff=120.0,
                            retry_deadline=3600.0)
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
