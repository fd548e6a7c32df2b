"""Wrong credentials against a server that checks signatures (moto with IAM auth)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import AccessDeniedError, S3StorageReader, S3StorageWriter
from s3dcp_testkit.moto_server import MotoServer
from tests.conftest import REGION
from tests.helpers import assert_same, blank_like, s3dcp_error

pytestmark = [pytest.mark.s3, pytest.mark.moto_only("a second moto server with IAM auth creates users and keys")]

SETUP_REQUESTS = 3  # create user, attach policy, create key: then auth is enforced
SECRET_MARKER = "sEcReT-do-not-print-0123456789abcdef"


@pytest.fixture(scope="module")
def auth_server() -> Iterator[tuple[MotoServer, dict[str, str]]]:
    with MotoServer(unauthenticated_requests=SETUP_REQUESTS) as server:
        iam = boto3.client(
            "iam",
            endpoint_url=server.endpoint_url,
            region_name=REGION,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="trainer")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        creds = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        s3 = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name=REGION,
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        )
        s3.create_bucket(Bucket="auth-bucket")
        yield server, creds


@pytest.fixture
def auth_env(clean_aws_env: Any, auth_server: tuple[MotoServer, dict[str, str]]) -> Any:
    server, creds = auth_server
    clean_aws_env.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
    clean_aws_env.setenv("AWS_REGION", REGION)
    for name, value in creds.items():
        clean_aws_env.setenv(name, value)
    return clean_aws_env


def test_valid_credentials_round_trip(auth_env: Any) -> None:
    state = {"w": torch.randn(5)}
    uri = "s3://auth-bucket/good"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, uri, overwrite=True))
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, uri))
    assert_same(state, loaded)


def test_wrong_secret_is_access_denied_and_secret_is_never_shown(auth_env: Any) -> None:
    auth_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_MARKER)
    writer = S3StorageWriter(REGION, "s3://auth-bucket/bad-secret")
    assert SECRET_MARKER not in repr(writer)
    with pytest.raises(CheckpointException) as raised:
        dcp.save({"w": torch.ones(3)}, storage_writer=writer)
    error = s3dcp_error(raised.value)
    assert isinstance(error, AccessDeniedError)
    assert error.code == "SignatureDoesNotMatch"
    assert "secret access key is wrong" in str(error)
    assert SECRET_MARKER not in str(raised.value)
    assert SECRET_MARKER not in repr(error)


def test_unknown_access_key_is_access_denied(auth_env: Any) -> None:
    auth_env.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")
    reader = S3StorageReader(REGION, "s3://auth-bucket/good")
    with pytest.raises(AccessDeniedError) as raised:
        reader.read_metadata()
    assert raised.value.code == "InvalidAccessKeyId"
    assert "auth-bucket" in str(raised.value)


def test_credentials_are_taken_when_the_writer_is_built(auth_env: Any) -> None:
    """A writer keeps the environment it was built in, even if it changes later."""
    writer = S3StorageWriter(REGION, "s3://auth-bucket/snapshot", overwrite=True)
    auth_env.setenv("AWS_SECRET_ACCESS_KEY", "changed-later")
    dcp.save({"w": torch.ones(3)}, storage_writer=writer)
    writer.reset()  # reset re-reads the environment: now the wrong secret
    with pytest.raises(CheckpointException) as raised:
        dcp.save({"w": torch.ones(3)}, storage_writer=writer)
    assert isinstance(s3dcp_error(raised.value), AccessDeniedError)
