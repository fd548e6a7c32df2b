"""A bucket in another region: the answer AWS gives, served over real HTTP.

moto does not enforce regions, so a small loopback server plays AWS's part
and answers every request the way S3 answers a request signed for the wrong
region (400 AuthorizationHeaderMalformed naming the bucket's region).
"""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter, WrongRegionError
from tests.helpers import s3dcp_error, serve_on_loopback

pytestmark = [pytest.mark.s3, pytest.mark.moto_only("uses its own loopback server, not the store under test")]

WRONG_REGION_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AuthorizationHeaderMalformed</Code>'
    b"<Message>The authorization header is malformed; the region 'us-east-1' is wrong; "
    b"expecting 'eu-west-1'</Message><Region>eu-west-1</Region><RequestId>4442587FB7D0A2F9</RequestId>"
    b"<HostId>host</HostId></Error>"
)


class WrongRegionHandler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(400)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-bucket-region", "eu-west-1")
        body = b"" if self.command == "HEAD" else WRONG_REGION_BODY
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def wrong_region_endpoint() -> Iterator[str]:
    with serve_on_loopback(WrongRegionHandler) as url:
        yield url


def test_wrong_region_says_which_region_to_use(s3_env: Any, wrong_region_endpoint: str) -> None:
    config = S3ClientConfig(endpoint_url=wrong_region_endpoint, force_path_style=True)
    reader = S3StorageReader("us-east-1", "s3://eu-bucket/ckpt", config)
    with pytest.raises(WrongRegionError) as raised:
        reader.read_metadata()
    assert "region='eu-west-1'" in str(raised.value)
    writer = S3StorageWriter("us-east-1", "s3://eu-bucket/ckpt", config)
    with pytest.raises(CheckpointException) as wrapped:
        dcp.save({"w": torch.ones(2)}, storage_writer=writer)
    assert isinstance(s3dcp_error(wrapped.value), WrongRegionError)
