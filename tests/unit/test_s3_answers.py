"""Which HTTP answers could come from an S3 store: the rule behind "this endpoint does not look like S3"."""

from __future__ import annotations

from typing import Any

import botocore.exceptions
import pytest

import s3dcp
from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._s3.hooks import NotS3AnswerError, non_s3_answer, refuse_non_s3_answer
from s3dcp._s3.translate import translate_error

SETTINGS = resolve_settings("us-east-1", S3ClientConfig(endpoint_url="http://store:9000"), {})
ERROR_DOCUMENT = b'<?xml version="1.0"?><Error><Code>NoSuchKey</Code><Message>gone</Message></Error>'
HTML = b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>"


@pytest.mark.parametrize(
    "status, headers, document",
    [
        (200, {"x-amz-request-id": "R", "content-type": "text/html"}, None),  # AWS, RGW, MinIO
        (200, {"x-amzn-RequestId": "R", "Content-Type": "text/html; charset=utf-8"}, None),  # moto
        (404, {"x-amz-id-2": "H"}, False),  # the request id alone is enough
        (416, {"content-type": "application/xml"}, True),  # moto's 416: no id, an error document
        (503, {}, True),  # an error document with no id (an injected fault)
        (404, {"content-type": "application/xml"}, None),  # HEAD: no body, labelled XML
        (200, {"ETag": '"abc"', "content-type": "binary/octet-stream"}, None),  # an object, no id
        (200, {"content-type": "application/xml"}, None),  # a listing, no id
        (204, {}, None),  # a delete
    ],
)
def test_answers_an_s3_store_gives(status: int, headers: dict[str, str], document: bool | None) -> None:
    assert non_s3_answer(status, headers, document) is None


@pytest.mark.parametrize(
    "status, headers, document",
    [
        (404, {"content-type": "text/html"}, False),  # a web server's error page
        (404, {"content-type": "text/html"}, None),  # the same for HEAD
        (404, {}, None),  # a bare 404
        (403, {"content-type": "text/plain"}, False),
        (200, {"content-type": "text/html"}, None),  # a web page where an object or listing should be
        (200, {}, None),
    ],
)
def test_answers_no_s3_store_gives(status: int, headers: dict[str, str], document: bool | None) -> None:
    assert non_s3_answer(status, headers, document) is not None


def response(status: int, body: Any, **headers: str) -> dict[str, Any]:
    return {"status_code": status, "headers": headers, "body": body}


def test_the_hook_reads_error_bodies_and_leaves_retried_statuses_alone() -> None:
    refuse_non_s3_answer(response(404, ERROR_DOCUMENT, **{"content-type": "application/xml"}))
    with pytest.raises(NotS3AnswerError) as raised:
        refuse_non_s3_answer(response(404, HTML, **{"content-type": "text/html"}))
    assert raised.value.status == 404 and raised.value.content_type == "text/html"
    with pytest.raises(NotS3AnswerError):  # an XML body that is not an S3 error document
        refuse_non_s3_answer(response(403, b"<html><body>no</body></html>", **{"content-type": "text/xml"}))
    refuse_non_s3_answer(response(503, HTML, **{"content-type": "text/html"}))  # retried first


def test_the_hook_closes_a_refused_object_body() -> None:
    class Body:
        closed = False

        def close(self) -> None:
            self.closed = True

    body = Body()
    with pytest.raises(NotS3AnswerError):
        refuse_non_s3_answer(response(200, body, **{"content-type": "text/html"}))
    assert body.closed


def test_translation_says_what_was_answered_and_what_to_check() -> None:
    error = translate_error(
        NotS3AnswerError(404, "text/html", "no S3 request id header"), "get_object", "bkt", "run/.metadata", SETTINGS
    )
    assert type(error) is s3dcp.EndpointError and error.code == "404"
    text = str(error)
    for words in (
        "does not look like S3",
        "HTTP 404",
        "text/html",
        "http://store:9000",
        "s3://bkt/run/.metadata",
        "endpoint URL",
        "proxy",
        "port",
    ):
        assert words in text, text


def test_a_server_error_stays_a_server_error_and_says_the_answer_was_not_s3() -> None:
    """A 5xx page may come from a load balancer or from the store itself crashing: not called "not S3"."""
    html_503 = botocore.exceptions.ClientError(
        {
            "Error": {"Code": "503", "Message": "Service Unavailable"},
            "ResponseMetadata": {"HTTPStatusCode": 503, "HTTPHeaders": {"content-type": "text/html"}},
        },
        "GetObject",
    )
    error = translate_error(html_503, "get_object", "bkt", "k", SETTINGS, attempts=3)
    assert type(error) is s3dcp.S3RequestError and "did not look like S3" in str(error)
    slow_down = botocore.exceptions.ClientError(
        {
            "Error": {"Code": "SlowDown", "Message": "Reduce"},
            "ResponseMetadata": {"HTTPStatusCode": 503, "HTTPHeaders": {"x-amz-request-id": "R"}},
        },
        "GetObject",
    )
    error = translate_error(slow_down, "get_object", "bkt", "k", SETTINGS, attempts=3)
    assert type(error) is s3dcp.S3RequestError and "did not look like S3" not in str(error)


def test_a_client_error_that_escaped_the_hook_is_judged_the_same() -> None:
    html_404 = botocore.exceptions.ClientError(
        {
            "Error": {"Code": "404", "Message": "Not Found"},
            "ResponseMetadata": {"HTTPStatusCode": 404, "HTTPHeaders": {"content-type": "text/html"}},
        },
        "GetObject",
    )
    assert type(translate_error(html_404, "get_object", "bkt", "k", SETTINGS)) is s3dcp.EndpointError
