"""Bad input gets a clear s3dcp error, raised fast, with nothing lost."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import (
    BucketNotFoundError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CredentialsError,
    EndpointError,
    S3ClientConfig,
    S3StorageReader,
    S3StorageWriter,
)
from s3dcp_testkit.certificates import make_certificate, server_context
from s3dcp_testkit.ports import free_port
from tests.conftest import REGION, list_keys
from tests.helpers import s3dcp_error

pytestmark = pytest.mark.s3

BAD_URIS = [
    "/tmp/x",
    "relative/dir",
    "s3:/bucket/key",
    "s3://",
    "s3:///key",
    "http://bucket/key",
    "S3://bucket/key",
    "s3://ab/key",
    "s3://Upper_Case/key",
    "s3://-leading-dash/key",
    "s3://192.168.1.1/key",
    "s3://bucket/a//b",
    "s3://bucket/a/../b",
]


@pytest.mark.parametrize("uri", BAD_URIS)
@pytest.mark.parametrize("cls", [S3StorageWriter, S3StorageReader])
def test_malformed_uri_raises_value_error_at_construction(cls: Any, uri: str) -> None:
    with pytest.raises(ValueError):
        cls(REGION, uri)
    assert cls.validate_checkpoint_id(uri) is False


@pytest.mark.parametrize("cls", [S3StorageWriter, S3StorageReader])
def test_non_string_path_raises_type_error(cls: Any) -> None:
    with pytest.raises(TypeError):
        cls(REGION, 123)


@pytest.mark.parametrize("uri", ["s3://bucket/run/step_1", "s3://my.bucket-1/x", "s3://name--usw2-az1--x-s3/ckpt"])
def test_valid_uris_are_accepted(uri: str, clean_aws_env: Any) -> None:
    assert S3StorageWriter.validate_checkpoint_id(uri)
    assert S3StorageReader(REGION, uri).checkpoint_id == uri


def test_reset_to_a_bad_uri_raises_value_error(clean_aws_env: Any) -> None:
    writer = S3StorageWriter(REGION, "s3://bucket/a")
    with pytest.raises(ValueError):
        writer.reset("/local/dir")


def test_bad_constructor_arguments(clean_aws_env: Any) -> None:
    with pytest.raises(ValueError):
        S3StorageWriter(REGION, "s3://bucket/a", thread_count=0)
    with pytest.raises(ValueError):
        S3StorageWriter(REGION, "s3://bucket/a", part_size=1024)
    with pytest.raises(TypeError):
        S3StorageWriter(REGION, "s3://bucket/a", prefix_strategy="hex")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        S3StorageReader(REGION, "s3://bucket/a", s3client_config={"endpoint_url": "x"})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        S3StorageReader("", "s3://bucket/a")


def test_save_to_missing_bucket_names_the_bucket(s3_env: Any) -> None:
    writer = S3StorageWriter(REGION, "s3://no-such-bucket-here/ckpt")
    with pytest.raises(CheckpointException) as raised:
        dcp.save({"w": torch.ones(2)}, storage_writer=writer)
    error = s3dcp_error(raised.value)
    assert isinstance(error, BucketNotFoundError)
    assert "no-such-bucket-here" in str(error)
    assert error.bucket == "no-such-bucket-here"


def test_load_from_missing_bucket_names_the_bucket(s3_env: Any) -> None:
    reader = S3StorageReader(REGION, "s3://no-such-bucket-here/ckpt")
    with pytest.raises(CheckpointException) as raised:
        dcp.load({"w": torch.ones(2)}, storage_reader=reader)
    assert isinstance(s3dcp_error(raised.value), BucketNotFoundError)


def test_load_of_missing_checkpoint_raises_not_found_through_dcp(s3_env: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/run/step_404"
    with pytest.raises(CheckpointException) as raised:
        dcp.load({"w": torch.ones(2)}, storage_reader=S3StorageReader(REGION, uri))
    error = s3dcp_error(raised.value)
    assert type(error) is CheckpointNotFoundError
    assert uri in str(error)
    # DCP keeps it per rank, type and message intact
    assert raised.value.failures[0][0] is error


def test_direct_read_metadata_raises_at_once(s3_env: Any, bucket: str) -> None:
    reader = S3StorageReader(REGION, f"s3://{bucket}/nothing")
    with pytest.raises(CheckpointNotFoundError, match="nothing"):
        reader.read_metadata()


def test_unfinished_save_is_not_a_checkpoint(s3_env: Any, s3: Any, bucket: str) -> None:
    """Shards without .metadata (a save that died) load as 'not found'."""
    s3.put_object(Bucket=bucket, Key="run/step_5/__0_0.distcp", Body=b"partial")
    with pytest.raises(CheckpointException) as raised:
        dcp.load({"w": torch.ones(2)}, storage_reader=S3StorageReader(REGION, f"s3://{bucket}/run/step_5"))
    assert isinstance(s3dcp_error(raised.value), CheckpointNotFoundError)


def test_saving_over_a_complete_checkpoint_is_refused_and_changes_nothing(s3_env: Any, s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/run/step_1"
    dcp.save({"w": torch.zeros(4)}, storage_writer=S3StorageWriter(REGION, uri))
    before = {k: s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in list_keys(s3, bucket)}
    with pytest.raises(CheckpointException) as raised:
        dcp.save({"w": torch.ones(4)}, storage_writer=S3StorageWriter(REGION, uri))
    error = s3dcp_error(raised.value)
    assert isinstance(error, CheckpointExistsError)
    assert "overwrite=True" in str(error)
    after = {k: s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in list_keys(s3, bucket)}
    assert after == before
    loaded = {"w": torch.full((4,), 3.0)}
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, uri))
    assert torch.equal(loaded["w"], torch.zeros(4))


def test_no_credentials_anywhere(clean_aws_env: Any, s3_server: Any, bucket: str) -> None:
    clean_aws_env.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    reader = S3StorageReader(REGION, f"s3://{bucket}/ckpt")
    with pytest.raises(CredentialsError, match="AWS_ACCESS_KEY_ID"):
        reader.read_metadata()
    with pytest.raises(CheckpointException) as raised:
        dcp.save({"w": torch.ones(2)}, storage_writer=S3StorageWriter(REGION, f"s3://{bucket}/ckpt"))
    assert isinstance(s3dcp_error(raised.value), CredentialsError)


def test_unreachable_endpoint(s3_env: Any) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    config = S3ClientConfig(endpoint_url=endpoint, retry_initial_backoff=0.01)
    reader = S3StorageReader(REGION, "s3://some-bucket/ckpt", config)
    with pytest.raises(EndpointError) as raised:
        reader.read_metadata()
    assert endpoint in str(raised.value)
    assert "3 attempts" in str(raised.value)
    with pytest.raises(CheckpointException) as wrapped:
        dcp.save({"w": torch.ones(2)}, storage_writer=S3StorageWriter(REGION, "s3://some-bucket/ckpt", config))
    assert isinstance(s3dcp_error(wrapped.value), EndpointError)


def test_endpoint_credentials_never_reach_messages(s3_env: Any) -> None:
    config = S3ClientConfig(endpoint_url=f"http://user:hunter2@127.0.0.1:{free_port()}")
    reader = S3StorageReader(REGION, "s3://some-bucket/ckpt", config)
    assert "hunter2" not in repr(reader)
    with pytest.raises(EndpointError) as raised:
        reader.read_metadata()
    assert "hunter2" not in str(raised.value)


def _untrusted_https_server(directory: Any) -> Any:
    """An HTTPS server on 127.0.0.1 whose certificate nobody trusts (signed by a fresh CA the client is not given)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    made = make_certificate(directory)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # never reached: the client refuses the handshake
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context(made.cert, made.key).wrap_socket(server.socket, server_side=True)
    server.handshakes = 0  # type: ignore[attr-defined]
    original = server.get_request

    def counting_get_request() -> Any:
        server.handshakes += 1  # type: ignore[attr-defined]
        return original()

    server.get_request = counting_get_request  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_an_untrusted_tls_certificate_fails_at_once_and_says_what_to_set(s3_env: Any, tmp_path: Any) -> None:
    server = _untrusted_https_server(tmp_path)
    try:
        s3_env.setenv("AWS_ENDPOINT_URL", f"https://127.0.0.1:{server.server_address[1]}")
        s3_env.delenv("AWS_CA_BUNDLE", raising=False)
        with pytest.raises(CheckpointException) as raised:
            dcp.save({"w": torch.ones(2)}, storage_writer=S3StorageWriter(REGION, "s3://some-bucket/ckpt"))
    finally:
        server.shutdown()
        server.server_close()
    error = s3dcp_error(raised.value)
    assert isinstance(error, EndpointError)
    assert "not trusted" in str(error) and "AWS_CA_BUNDLE" in str(error)
    assert error.attempts == 1 and server.handshakes == 1  # type: ignore[attr-defined]
