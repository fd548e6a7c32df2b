"""Shared fixtures: a real S3 server (moto) on 127.0.0.1 and a clean environment.

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

from tests.servers.fault_proxy import FaultProxy
from tests.servers.moto_server import ACCESS_KEY, SECRET_KEY, MotoServer

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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_env(clean_aws_env: pytest.MonkeyPatch, s3_server: MotoServer) -> pytest.MonkeyPatch:
    """The standard AWS variables pointing at the local server, as a user would set them."""
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    clean_aws_env.setenv("AWS_REGION", REGION)
    clean_aws_env.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    return clean_aws_env


@pytest.fixture
def s3(s3_server: MotoServer) -> Any:
    """A plain boto3 client for the local server, for arranging and inspecting."""
    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
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
def proxy(s3_server: MotoServer) -> Iterator[FaultProxy]:
    """A fault-injecting, request-counting proxy in front of the S3 server."""
    with FaultProxy(s3_server.endpoint_url) as running:
        yield running


@pytest.fixture
def proxied_env(s3_env: pytest.MonkeyPatch, proxy: FaultProxy) -> pytest.MonkeyPatch:
    """Like ``s3_env``, but every request goes through ``proxy``."""
    s3_env.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
    return s3_env
