"""Request bodies sent a piece per ``sendall`` (``s3dcp._s3.send``), and what a timed-out send is reported as.

The sends themselves over real sockets, slow and stalled, are in
tests/integration/test_slow_links.py.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import botocore.awsrequest
import botocore.exceptions
import pytest
import urllib3.exceptions

from s3dcp import EndpointError, S3ClientConfig
from s3dcp._compat import _missing
from s3dcp._compat import botocore as compat_botocore
from s3dcp._config import resolve_settings
from s3dcp._s3 import send
from s3dcp._s3.client import _create_client
from s3dcp._s3.retry import FailureKind, classify, timed_out
from s3dcp._s3.translate import translate_error

ENVIRON = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
SETTINGS = resolve_settings("us-east-1", S3ClientConfig(endpoint_url="http://store:9000"), {})


@pytest.fixture
def stack_checked_again(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The once-per-process check of the HTTP stack forgotten before and after, its report captured."""
    monkeypatch.setattr(_missing, "_reported", set())
    compat_botocore.sends_iterable_bodies.cache_clear()
    with caplog.at_level(logging.DEBUG, logger="s3dcp"):
        yield
    compat_botocore.sends_iterable_bodies.cache_clear()


def test_a_body_has_its_length_and_gives_its_pieces_from_the_first_byte_each_time() -> None:
    data = bytearray(range(250))
    body = send.PiecewiseBody(memoryview(data), piece=100)
    assert len(body) == 250
    for _ in range(2):  # a retried request sends it again from the start
        pieces = [bytes(piece) for piece in body]
        assert [len(piece) for piece in pieces] == [100, 100, 50]
        assert b"".join(pieces) == data
    assert [bytes(piece) for piece in send.PiecewiseBody(b"", 10)] == []
    assert body.seek(0) == 0  # botocore rewinds a body it sends again
    with pytest.raises(io.UnsupportedOperation):
        body.seek(10)
    assert not hasattr(body, "read") and not hasattr(body, "tell")  # else it would be taken for a file


def test_piece_size_is_what_the_slowest_rate_moves_in_connect_timeout_within_bounds() -> None:
    assert send.piece_size(5) == 5 * send.SLOWEST_SEND
    assert send.piece_size(0.01) == send.MIN_PIECE
    assert send.piece_size(float("inf")) == send.MAX_PIECE


def test_a_send_that_fails_says_how_far_it_got_and_lets_go_of_the_buffer() -> None:
    data = bytearray(300)
    body = send.PiecewiseBody(data, piece=100)
    seen: list[send.SendProgress | None] = []
    with pytest.raises(TimeoutError), send.watch_sends(seen):
        pieces = iter(body)
        next(pieces), next(pieces)  # the first piece went, the second did not
        raise TimeoutError("timed out")
    assert seen == [send.SendProgress(sent=100, total=300, piece=100)]
    del data[200:]  # no view of it is left: a buffer kept for reuse can be resized
    assert "100 KiB did not go in 0.5 s: under 205 KB/s" in send.SendProgress(0, 1, 100 * 1024).describe(0.5)
    assert send.describe_rate(1_500_000) == "1.50 MB/s"


def test_an_attempt_that_sent_no_body_has_no_progress() -> None:
    seen: list[send.SendProgress | None] = []
    with pytest.raises(ConnectionError), send.watch_sends(seen):
        raise ConnectionError("reset")
    assert seen == [None]


def test_this_http_stack_sends_an_iterable_body_piece_by_piece(stack_checked_again: None) -> None:
    assert compat_botocore.sends_iterable_bodies() is True


def _wrapped(client: Any, body: Any) -> Any:
    request = SimpleNamespace(body=body)
    client.meta.events.emit("before-send.s3.UploadPart", request=request)
    return request.body


def test_parts_are_wrapped_after_signing_and_small_bodies_are_left_alone() -> None:
    client = _create_client(resolve_settings("us-east-1", S3ClientConfig(connect_timeout=1), ENVIRON))
    part = memoryview(bytearray(5 * 1024 * 1024))
    wrapped = _wrapped(client, part)
    assert isinstance(wrapped, send.PiecewiseBody) and len(wrapped) == part.nbytes
    assert wrapped.piece == send.piece_size(1)
    assert _wrapped(client, b"small") == b"small"


def test_a_stack_that_refuses_such_a_body_gets_parts_as_they_are(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stack_checked_again: None
) -> None:
    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise TypeError("body must be bytes-like")  # as some future urllib3 might

    monkeypatch.setattr(botocore.awsrequest.AWSConnection, "request", refuse)
    assert compat_botocore.sends_iterable_bodies() is False
    client = _create_client(resolve_settings("us-east-1", S3ClientConfig(connect_timeout=2), ENVIRON))
    part = memoryview(bytearray(5 * 1024 * 1024))
    assert _wrapped(client, part) is part
    reported = [r.getMessage() for r in caplog.records if "piece by piece" in r.getMessage()]
    assert len(reported) == 1 and "parts go in one sendall" in reported[0]


def _send_timed_out() -> botocore.exceptions.ConnectionClosedError:
    """What botocore raises when a body's ``sendall`` hits the socket timeout."""
    cause = urllib3.exceptions.ProtocolError("Connection aborted.", TimeoutError("timed out"))
    return botocore.exceptions.ConnectionClosedError(error=cause, endpoint_url="http://store:9000")


@pytest.mark.parametrize(
    "error, slow",
    [
        (_send_timed_out(), True),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://store:9000"), True),
        (urllib3.exceptions.ReadTimeoutError(None, "/k", "read timed out"), True),  # a body read
        (TimeoutError("timed out"), True),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://store:9000"), False),  # never connected
        (botocore.exceptions.ConnectionClosedError(endpoint_url="http://store:9000"), False),  # a reset
        (ConnectionResetError(), False),
    ],
)
def test_timeouts_on_an_open_connection_are_told_apart_from_other_connection_failures(
    error: BaseException, slow: bool
) -> None:
    assert timed_out(error) is slow
    assert classify(error) in (FailureKind.CONNECTION, FailureKind.UNREACHABLE)


def test_a_timed_out_send_is_reported_as_a_slow_link_with_what_it_saw_and_what_to_change() -> None:
    progress = send.SendProgress(sent=4_000_000, total=16_777_216, piece=send.piece_size(5))
    error = translate_error(_send_timed_out(), "upload_part", "bkt", "k", SETTINGS, attempts=10, last_send=progress)
    message = str(error)
    assert type(error) is EndpointError
    assert "the connection to http://store:9000 was too slow or stalled" in message
    assert "10 attempts" in message and "4.0 of 16.8 MB had gone when a piece of 320 KiB did not go in 5 s" in message
    assert "under 66 KB/s" in message and "moves less than 66 KB/s over connect_timeout (5 s)" in message
    assert "read_timeout (60 s)" in message and "raise connect_timeout / read_timeout, or lower part_size" in message


def test_a_connection_never_opened_is_still_reported_as_unreachable() -> None:
    error = botocore.exceptions.ConnectTimeoutError(endpoint_url="http://store:9000")
    message = str(translate_error(error, "get_object", "bkt", "k", SETTINGS, attempts=3))
    assert "could not talk to http://store:9000" in message and "too slow" not in message
