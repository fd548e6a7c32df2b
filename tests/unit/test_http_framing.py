"""The test servers' one HTTP body parser: length-framed and chunked bodies, aws-chunked inside them."""

from __future__ import annotations

import io
import socket

import pytest

from s3dcp_testkit.http_framing import Body, BodyError, copy_chunked, read_head

CHUNKED = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-amz-checksum-crc32: AAAAAA==\r\n\r\nNEXT"


def test_a_chunked_body_is_its_payload_and_ends_before_the_next_message() -> None:
    stream = io.BytesIO(CHUNKED)
    body = Body(stream, None)
    assert body.read() == b"hello, world" and body.total == 12
    assert body.trailers == [b"x-amz-checksum-crc32: AAAAAA==\r\n"]
    assert stream.read() == b"NEXT"


def test_a_length_framed_body_reads_exactly_its_length() -> None:
    stream = io.BytesIO(b"abcdefNEXT")
    assert Body.of(stream, False, "6").read() == b"abcdef"
    assert Body.of(io.BytesIO(b"x"), False, None).read() == b""  # no length, not chunked: no body
    with pytest.raises(BodyError):
        Body(io.BytesIO(b"abc"), 6).read()
    with pytest.raises(BodyError):
        Body(io.BytesIO(b"5\r\nhel"), None).drain(memoryview(bytearray(4)))


def test_aws_chunked_framing_inside_an_http_chunked_body() -> None:
    inner = b"4;chunk-signature=x\r\nabcd\r\n2\r\nef\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    outer = (
        b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (inner[:7], inner[7:20], inner[20:])) + b"0\r\n\r\n"
    )
    payload = Body(Body(io.BytesIO(outer), None), None)
    assert payload.read() == b"abcdef"


def test_copy_chunked_reframes_the_payload_and_keeps_the_trailers() -> None:
    left, right = socket.socketpair()
    with left, right:
        sent = copy_chunked(Body(io.BytesIO(CHUNKED), None), left, memoryview(bytearray(4)))
        left.shutdown(socket.SHUT_WR)
        received = right.makefile("rb").read()
    assert sent == 12
    again = Body(io.BytesIO(received), None)
    assert again.read() == b"hello, world" and again.trailers == [b"x-amz-checksum-crc32: AAAAAA==\r\n"]


def test_read_head_skips_blank_lines_and_ends_cleanly() -> None:
    stream = io.BytesIO(b"\r\nPUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert read_head(stream) == ("PUT /b/k HTTP/1.1", [("Host", "x"), ("Content-Length", "0")])
    assert read_head(stream) is None
