"""An endpoint that is not S3 says so; its 404s never read as "no checkpoint here"."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import EndpointError, S3StorageReader, latest_checkpoint, list_checkpoints
from s3dcp._config import resolve_settings
from s3dcp._s3.client import S3Client
from tests.conftest import REGION
from tests.helpers import s3dcp_error, serve_on_loopback

pytestmark = pytest.mark.s3

PAGE = b"<!DOCTYPE html>\n<html><head><title>Hello</title></head><body><p>A web server.</p></body></html>\n"


def web_server(status: int) -> type[BaseHTTPRequestHandler]:
    """A plain HTTP server answering every GET and HEAD with ``status`` and an HTML page."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def _answer(self, with_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            if with_body:
                self.wfile.write(PAGE)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class Plain404(BaseHTTPRequestHandler):
    """http.server's own error page: what a static file server says about a path it lacks."""

    def do_GET(self) -> None:
        self.send_error(404)

    def do_HEAD(self) -> None:
        self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=["plain-404", "html-200", "html-403"])
def web_endpoint(request: pytest.FixtureRequest, clean_aws_env: pytest.MonkeyPatch) -> Iterator[str]:
    handler = Plain404 if request.param == "plain-404" else web_server(int(request.param[-3:]))
    with serve_on_loopback(handler) as endpoint:
        clean_aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
        clean_aws_env.setenv("AWS_ENDPOINT_URL", endpoint)
        yield endpoint


def assert_not_s3(error: BaseException, endpoint: str) -> None:
    assert type(error) is EndpointError, repr(error)
    text = str(error)
    assert "does not look like S3" in text and endpoint in text and "text/html" in text, text
    assert "not-a-real-secret" not in text


def test_load_says_the_endpoint_is_not_s3(web_endpoint: str) -> None:
    with pytest.raises(CheckpointException) as raised:
        dcp.load({"w": torch.zeros(2)}, storage_reader=S3StorageReader(REGION, "s3://bucket/run/step_1"))
    assert_not_s3(s3dcp_error(raised.value), web_endpoint)
    with pytest.raises(EndpointError) as direct:
        S3StorageReader(REGION, "s3://bucket/run/step_1").read_metadata()
    assert_not_s3(direct.value, web_endpoint)


def test_discovery_says_the_endpoint_is_not_s3_instead_of_finding_nothing(web_endpoint: str) -> None:
    with pytest.raises(EndpointError) as latest:
        latest_checkpoint("s3://bucket/run", region=REGION)
    assert_not_s3(latest.value, web_endpoint)
    with pytest.raises(EndpointError) as listed:
        list_checkpoints("s3://bucket/run", region=REGION)
    assert_not_s3(listed.value, web_endpoint)


def test_a_head_request_says_the_endpoint_is_not_s3(web_endpoint: str) -> None:
    client = S3Client(resolve_settings(REGION, None))
    with pytest.raises(EndpointError) as raised:
        client.call("head_object", "bucket", "run/step_1/.metadata")
    assert_not_s3(raised.value, web_endpoint)
    assert raised.value.attempts == 1  # not retried: retrying cannot make it S3
