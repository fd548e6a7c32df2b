"""When the body's SHA-256 goes into the signature."""

from __future__ import annotations

import pytest

from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._s3.client import _signs_payload


@pytest.mark.parametrize(
    "endpoint, upload_checksum, sign_payload, signed",
    [
        ("http://127.0.0.1:9000", "crc32", None, True),  # plain HTTP: always, by default
        ("https://s3.example.com", "crc32", None, False),  # TLS + checksum: not needed
        (None, "crc32", None, False),  # AWS itself is HTTPS
        ("https://s3.example.com", None, None, True),  # TLS but no checksum: sign
        ("http://127.0.0.1:9000", "crc32", False, False),  # asked not to
        ("https://s3.example.com", "crc32", True, True),  # asked to
    ],
)
def test_signing_rule(
    endpoint: str | None, upload_checksum: str | None, sign_payload: bool | None, signed: bool
) -> None:
    config = S3ClientConfig(endpoint_url=endpoint, upload_checksum=upload_checksum, sign_payload=sign_payload)
    assert _signs_payload(resolve_settings("us-east-1", config, environ={})) is signed
