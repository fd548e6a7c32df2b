"""The private names of botocore, urllib3, http.client and ssl: a missing one means a plain path, never a failure.

Also the botocore floor: one older than 1.36 is refused with what to install.
"""

from __future__ import annotations

import http.client
import io
import logging
import socket
from collections.abc import Iterator
from typing import Any

import botocore
import botocore.config
import pytest
import urllib3
from botocore.response import StreamingBody

from s3dcp import S3DCPError
from s3dcp._compat import _missing
from s3dcp._compat import botocore as compat_botocore
from s3dcp._compat import http_client as compat_http_client
from s3dcp._compat import ssl as compat_ssl
from s3dcp._compat import urllib3 as compat_urllib3
from s3dcp._config import resolve_settings
from s3dcp._s3.client import S3Client, _create_client
from tests.botocore_doubles import unshared_context

ENVIRON = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}


@pytest.fixture
def fresh_reports(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """DEBUG lines captured, with the memory of what was already reported in this process emptied."""
    monkeypatch.setattr(_missing, "_reported", set())
    with caplog.at_level(logging.DEBUG, logger="s3dcp"):
        yield


def test_a_streaming_body_without_its_raw_stream_is_read_through_botocore(fresh_reports: None) -> None:
    class Renamed(StreamingBody):
        def __init__(self) -> None:
            pass  # as if a release kept its stream under another name

    assert compat_botocore.raw_stream(Renamed()) is None
    assert compat_botocore.raw_stream(Renamed()) is None
    assert compat_botocore.raw_stream(io.BytesIO()) is None  # not a StreamingBody: nothing to report


def test_each_missing_name_is_reported_once(fresh_reports: None, caplog: pytest.LogCaptureFixture) -> None:
    class Renamed(StreamingBody):
        def __init__(self) -> None:
            pass

    for _ in range(3):
        assert compat_botocore.raw_stream(Renamed()) is None
        assert compat_urllib3.connection_socket(object()) is None
    lines = [r.getMessage() for r in caplog.records]
    assert sum("StreamingBody._raw_stream" in line for line in lines) == 1
    assert sum("connection.sock" in line for line in lines) == 1


def test_a_urllib3_response_without_an_http_client_response_below_is_read_through_urllib3(
    fresh_reports: None, caplog: pytest.LogCaptureFixture
) -> None:
    response = urllib3.HTTPResponse(body=io.BytesIO(b"abc"), preload_content=False)  # _fp is a BytesIO
    assert compat_urllib3.http_client_response(response) is None
    assert compat_urllib3.http_client_response(object()) is None
    assert any("HTTPResponse._fp" in r.getMessage() for r in caplog.records)


def test_http_client_attributes_of_another_shape_give_the_readinto_path(caplog: pytest.LogCaptureFixture) -> None:
    response = http.client.HTTPResponse(socket.socket())
    response.chunked, response.length = False, 10
    assert compat_http_client.known_length(response) == 10
    response.chunked = True
    assert compat_http_client.known_length(response) is None
    response.chunked = "no"  # type: ignore[assignment]
    assert compat_http_client.known_length(response) is None
    response.fp = None
    assert compat_http_client.buffered_reader(response) is None
    response.close()


def test_a_tls_socket_without_its_c_object_gets_no_direct_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat_ssl.SWITCH, "on", True)
    monkeypatch.setattr(compat_ssl, "_tls_object", lambda sock: object())
    assert compat_ssl.record_reader(None) is None  # type: ignore[arg-type]
    monkeypatch.setattr(compat_ssl, "_tls_object", lambda sock: io.BytesIO())  # has a read
    assert compat_ssl.record_reader(None) is not None  # type: ignore[arg-type]
    compat_ssl.retire_record_reader(TypeError("changed"))
    assert compat_ssl.record_reader(None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["1.35.99", "1.20.0", "0.9"])
def test_a_botocore_older_than_1_36_is_refused_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(botocore, "__version__", version)
    with pytest.raises(S3DCPError) as raised:
        S3Client(resolve_settings("us-east-1", None, ENVIRON)).call("head_object", "bucket", "key")
    assert str(raised.value) == (
        f"s3dcp needs botocore>=1.36.0; this environment has {version}: pip install -U 'botocore>=1.36'"
    )


def test_a_botocore_whose_config_lacks_the_checksum_option_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class OldConfig(botocore.config.Config):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if "request_checksum_calculation" in kwargs:
                raise TypeError("Got unexpected keyword argument 'request_checksum_calculation'")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(botocore.config, "Config", OldConfig)
    with pytest.raises(S3DCPError, match=r"s3dcp needs botocore>=1\.36\.0; this environment has "):
        _create_client(resolve_settings("us-east-1", None, ENVIRON))


@pytest.mark.parametrize("shared", [True, False])
def test_a_memoryview_body_arrives_intact_whether_or_not_the_context_is_shared(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_reports: None, shared: bool
) -> None:
    if not shared:
        unshared_context(monkeypatch)
    client = _create_client(resolve_settings("us-east-1", None, ENVIRON))
    assert compat_botocore._probe_body(client) == compat_botocore._PROBE
    reported = [r.getMessage() for r in caplog.records if "request context" in r.getMessage()]
    assert len(reported) == (0 if shared else 1)
    assert shared or "arrived as 0 bytes" in reported[0]
