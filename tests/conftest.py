"""Shared fixtures: a real S3 server on 127.0.0.1 and a clean environment.

The server is moto's, or a running Ceph RGW with ``S3DCP_TEST_SERVER=rgw-http``
or ``rgw-https`` (see ``s3dcp_testkit.target``). Tests that need what
only moto offers carry ``@pytest.mark.moto_only("why")`` and are skipped,
with that reason, on RGW.

Every fixture that changes the environment does it through ``monkeypatch``,
which restores it after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from s3dcp_testkit.fault_proxy import FaultProxy
from s3dcp_testkit.target import TestServer, test_server

REGION = "us-east-1"

AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CA_BUNDLE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


@pytest.fixture
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AWS settings from the machine: empty config files, no instance metadata."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "empty-aws-config"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


@pytest.fixture(autouse=True)
def _fresh_levels() -> Iterator[None]:
    """Each test starts where a fresh process would: no request levels settled by an earlier test."""
    from s3dcp._s3.concurrency import SETTLED

    SETTLED.clear()
    yield
    SETTLED.clear()


@pytest.fixture(autouse=True)
def _ranks_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Let tests/distributed.py's run_ranks run only in tests marked ``ranks``."""
    from tests import distributed

    distributed.marked_for_ranks = request.node.get_closest_marker("ranks") is not None
    yield
    distributed.marked_for_ranks = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from s3dcp_testkit.target import selected_kind

    if selected_kind() == "moto":
        return
    for item in items:
        marker = item.get_closest_marker("moto_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else "needs moto"
            item.add_marker(pytest.mark.skip(reason=f"moto only: {reason}"))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[TestServer]:
    with test_server() as server:
        yield server


def use_loopback_store(env: pytest.MonkeyPatch, endpoint_url: str) -> None:
    """Point the AWS environment at a store on 127.0.0.1 that checks no signatures
    (the in-memory store, or the WAN emulator in front of it): any keys do."""
    for name, value in (
        ("AWS_ENDPOINT_URL", endpoint_url),
        ("AWS_ACCESS_KEY_ID", "key"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_REGION", REGION),
    ):
        env.setenv(name, value)


@pytest.fixture
def s3_env(clean_aws_env: pytest.MonkeyPatch, s3_server: TestServer) -> pytest.MonkeyPatch:
    """The standard AWS variables pointing at the test server, as a user would set them."""
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    clean_aws_env.setenv("AWS_REGION", REGION)
    clean_aws_env.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    if s3_server.ca_bundle:
        clean_aws_env.setenv("AWS_CA_BUNDLE", s3_server.ca_bundle)
    return clean_aws_env


@pytest.fixture
def s3(s3_server: TestServer) -> Any:
    """A plain boto3 client for the test server, for arranging and inspecting."""
    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name=REGION,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        verify=s3_server.ca_bundle or True,
        config=botocore.config.Config(
            retries={"total_max_attempts": 1},
            # boto3's default aws-chunked uploads get 411 from RGW over HTTPS
            request_checksum_calculation="when_required",
            s3={"addressing_style": "path"},
        ),
    )


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    """A new, empty bucket; emptied and deleted afterwards to keep the server small."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3.create_bucket(Bucket=name)
    yield name
    for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


def list_keys(s3: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every key under ``prefix`` with its size."""
    keys: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = obj["Size"]
    return keys


@pytest.fixture
def proxy(s3_server: TestServer) -> Iterator[FaultProxy]:
    """A fault-injecting, request-counting proxy in front of the S3 server (plain HTTP on both sides)."""
    with FaultProxy(s3_server.http_endpoint_url) as running:
        yield running


@pytest.fixture
def proxied_env(s3_env: pytest.MonkeyPatch, proxy: FaultProxy) -> pytest.MonkeyPatch:
    """Like ``s3_env``, but every request goes through ``proxy``."""
    s3_env.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
    s3_env.delenv("AWS_CA_BUNDLE", raising=False)
    return s3_env
