"""Which S3 server the integration suite talks to: moto (default) or a running Ceph RGW.

``S3DCP_TEST_SERVER`` picks it: ``moto`` starts moto's server for the test
session; ``rgw-http`` / ``rgw-https`` use the Ceph RGW that
``python -m s3dcp_testkit.ceph_rgw start`` left running, reading its endpoints,
keys and CA file from ``$S3DCP_RGW_DIR/env.json`` (default ``/tmp/s3dcp-rgw``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from s3dcp_testkit.moto_server import ACCESS_KEY, SECRET_KEY, MotoServer

SERVER_VARIABLE = "S3DCP_TEST_SERVER"
KINDS = ("moto", "rgw-http", "rgw-https")


@dataclass(frozen=True)
class TestServer:
    """Where the tests send S3 requests, and as whom."""

    kind: str  # moto | rgw-http | rgw-https
    endpoint_url: str
    http_endpoint_url: str  # plain HTTP to the same store: the fault proxy's upstream
    access_key: str
    secret_key: str
    ca_bundle: str | None = None  # CA file to trust, for HTTPS

    @property
    def is_moto(self) -> bool:
        return self.kind == "moto"


def selected_kind() -> str:
    kind = os.environ.get(SERVER_VARIABLE, "moto")
    if kind not in KINDS:
        raise RuntimeError(f"{SERVER_VARIABLE}={kind!r}: expected one of {', '.join(KINDS)}")
    return kind


def _rgw(kind: str) -> TestServer:
    directory = Path(os.environ.get("S3DCP_RGW_DIR", "/tmp/s3dcp-rgw"))
    env_file = directory / "env.json"
    if not env_file.exists():
        raise RuntimeError(
            f"{SERVER_VARIABLE}={kind} but {env_file} does not exist: start the server first "
            "(python -m s3dcp_testkit.ceph_rgw start, or make test-rgw)"
        )
    values = json.loads(env_file.read_text())
    https = kind == "rgw-https"
    return TestServer(
        kind=kind,
        endpoint_url=values["S3DCP_RGW_HTTPS_ENDPOINT" if https else "S3DCP_RGW_HTTP_ENDPOINT"],
        http_endpoint_url=values["S3DCP_RGW_HTTP_ENDPOINT"],
        access_key=values["S3DCP_RGW_ACCESS_KEY"],
        secret_key=values["S3DCP_RGW_SECRET_KEY"],
        ca_bundle=values["S3DCP_RGW_CA_BUNDLE"] if https else None,
    )


@contextmanager
def test_server() -> Iterator[TestServer]:
    """The selected server for a test session (moto is started and stopped here)."""
    kind = selected_kind()
    if kind != "moto":
        yield _rgw(kind)
        return
    with MotoServer() as moto:
        yield TestServer("moto", moto.endpoint_url, moto.endpoint_url, ACCESS_KEY, SECRET_KEY)
