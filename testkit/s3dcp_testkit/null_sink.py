"""A null S3 server for benchmarks: it takes every upload and keeps nothing.

It answers just enough of the S3 API for a checkpoint save to succeed
(PutObject, CopyObject, the multipart calls, DeleteObject, CreateBucket /
HeadBucket, an empty ListObjectsV2) and says 404 NoSuchKey to a GET or HEAD
of any key it was never sent, so "does this checkpoint exist?" checks pass.
Request bodies are read into one reusable buffer and dropped: no hashing, no
storing, no signature checks. It remembers only the size of each key written
(and not deleted since), because some writers "rename" their
``.metadata.tmp`` by HEAD + CopyObject + DeleteObject; a GET of such a key
returns that many zero bytes (a ranged GET, 206 and the range's length of
zeros: the WAN emulator's ceiling check reads through it). A save against it therefore measures the
client's ceiling on this machine (serialization, copying, HTTP/TLS), not a
store.

It counts requests and bytes, so a benchmark can report how many HTTP
requests a client sent. HTTP/1.1 keep-alive, ``Expect: 100-continue``,
``Transfer-Encoding: chunked`` and ``aws-chunked`` bodies (the latter are
just ``Content-Length`` bytes to consume) are handled. With ``tls=(cert,
key)`` it speaks HTTPS.

    python -m s3dcp_testkit.null_sink            # prints the endpoint; Ctrl-C stops
    python -m s3dcp_testkit.null_sink --tls-cert cert.pem --tls-key key.pem
"""

from __future__ import annotations

import argparse
import socket
import ssl
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from s3dcp_testkit.http_framing import Body, header, is_chunked
from s3dcp_testkit.loopback import BackgroundServer, ConnectionHandler, LoopbackServer, read_request

READ_CHUNK = 1024 * 1024  # bytes consumed per readinto

_XML = '<?xml version="1.0" encoding="UTF-8"?>\n'
_NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def s3_operation(method: str, target: str, headers: list[tuple[str, str]]) -> str:
    """The S3 operation a request is (``PutObject``, ``UploadPart``, ``GetObject``, ...), from its method, target and headers."""
    url = urlsplit(target)
    bucket, _, key = unquote(url.path).lstrip("/").partition("/")
    if not bucket and method == "GET":
        return "ListBuckets"
    return _operation(method, key, parse_qs(url.query, keep_blank_values=True), headers)


def _operation(method: str, key: str, query: dict[str, list[str]], headers: list[tuple[str, str]]) -> str:
    if not key:
        return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "POST": "DeleteObjects"}.get(
            method, "GetBucketLocation" if "location" in query else "ListObjects"
        )
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPartCopy" if header(headers, "x-amz-copy-source") else "UploadPart"
        return "CopyObject" if header(headers, "x-amz-copy-source") else "PutObject"
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    return {"GET": "GetObject", "HEAD": "HeadObject"}.get(method, method)


def _etag() -> str:
    return f'"{uuid.uuid4().hex}"'


class _Sizes:
    """The size of every object "stored" and of every part of open multipart uploads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.objects: dict[str, int] = {}
        self.uploads: dict[str, dict[int, int]] = {}

    def put(self, path: str, size: int) -> None:
        with self._lock:
            self.objects[path] = size

    def get(self, path: str) -> int | None:
        with self._lock:
            return self.objects.get(path)

    def delete(self, path: str) -> None:
        with self._lock:
            self.objects.pop(path, None)

    def part(self, upload_id: str, number: int, size: int) -> None:
        with self._lock:
            self.uploads.setdefault(upload_id, {})[number] = size

    def finish(self, upload_id: str, path: str | None) -> None:
        with self._lock:
            parts = self.uploads.pop(upload_id, {})
            if path is not None:
                self.objects[path] = sum(parts.values())


def _payload_size(headers: list[tuple[str, str]], received: int) -> int:
    decoded = header(headers, "x-amz-decoded-content-length")  # aws-chunked bodies
    return int(decoded) if decoded is not None else received


def _copy_source(headers: list[tuple[str, str]]) -> str:
    return unquote((header(headers, "x-amz-copy-source") or "").split("?", 1)[0]).lstrip("/")


def _answer(
    operation: str,
    bucket: str,
    key: str,
    query: dict[str, list[str]],
    headers: list[tuple[str, str]],
    size: int,
    sizes: _Sizes,
) -> tuple[int, dict[str, str], bytes | int]:
    """Status, extra headers and body (bytes, or a number of zero bytes) for one S3 operation."""
    path = f"{bucket}/{key}"
    upload_id = query.get("uploadId", [""])[0]
    if operation == "PutObject":
        sizes.put(path, size)
        return 200, {"ETag": _etag()}, b""
    if operation == "UploadPart":
        sizes.part(upload_id, int(query["partNumber"][0]), size)
        return 200, {"ETag": _etag()}, b""
    if operation in ("CopyObject", "UploadPartCopy"):
        source = sizes.get(_copy_source(headers))
        if source is None:
            return _no_such_key(key)
        if operation == "CopyObject":
            sizes.put(path, source)
        else:
            sizes.part(upload_id, int(query["partNumber"][0]), source)
        tag = "CopyObjectResult" if operation == "CopyObject" else "CopyPartResult"
        body = f"{_XML}<{tag} {_NS}><LastModified>2000-01-01T00:00:00.000Z</LastModified><ETag>{_etag()}</ETag></{tag}>"
        return 200, {}, body.encode()
    if operation == "CreateMultipartUpload":
        body = (
            f"{_XML}<InitiateMultipartUploadResult {_NS}><Bucket>{bucket}</Bucket><Key>{_escape(key)}</Key>"
            f"<UploadId>{uuid.uuid4().hex}</UploadId></InitiateMultipartUploadResult>"
        )
        return 200, {}, body.encode()
    if operation == "CompleteMultipartUpload":
        sizes.finish(upload_id, path)
        body = (
            f"{_XML}<CompleteMultipartUploadResult {_NS}><Location>/{bucket}/{_escape(key)}</Location>"
            f'<Bucket>{bucket}</Bucket><Key>{_escape(key)}</Key><ETag>"{uuid.uuid4().hex}-1"</ETag>'
            "</CompleteMultipartUploadResult>"
        )
        return 200, {}, body.encode()
    if operation == "AbortMultipartUpload":
        sizes.finish(upload_id, None)
        return 204, {}, b""
    if operation == "DeleteObject":
        sizes.delete(path)
        return 204, {}, b""
    if operation == "DeleteObjects":
        return 200, {}, f"{_XML}<DeleteResult {_NS}></DeleteResult>".encode()
    if operation in ("CreateBucket", "HeadBucket"):
        return 200, {"x-amz-bucket-region": "us-east-1", "Location": f"/{bucket}"}, b""
    if operation == "GetBucketLocation":
        return 200, {}, f"{_XML}<LocationConstraint {_NS}></LocationConstraint>".encode()
    if operation == "ListObjects":
        prefix = query.get("prefix", [""])[0]
        body = (
            f"{_XML}<ListBucketResult {_NS}><Name>{bucket}</Name><Prefix>{_escape(prefix)}</Prefix>"
            "<KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>"
        )
        return 200, {}, body.encode()
    if operation == "ListBuckets":
        body = f"{_XML}<ListAllMyBucketsResult {_NS}><Buckets></Buckets></ListAllMyBucketsResult>"
        return 200, {}, body.encode()
    known = sizes.get(path) if operation in ("GetObject", "HeadObject") else None
    if known is None:
        return _no_such_key(key)
    stored = {"ETag": '"00000000000000000000000000000000"', "Last-Modified": "Sat, 01 Jan 2000 00:00:00 GMT"}
    wanted = _range(header(headers, "range"), known) if operation == "GetObject" else None
    if wanted is not None:
        first, last = wanted
        return 206, dict(stored, **{"Content-Range": f"bytes {first}-{last}/{known}"}), last - first + 1
    return 200, stored, known


def _range(value: str | None, size: int) -> tuple[int, int] | None:
    """First and last byte of a ``bytes=A-B``, ``bytes=A-`` or ``bytes=-N`` range within ``size`` bytes; None for the whole."""
    if not value or not value.startswith("bytes=") or "," in value or size == 0:
        return None
    start, _, end = value[len("bytes=") :].partition("-")
    if not start:
        return max(0, size - int(end)), size - 1
    return int(start), min(size - 1, int(end)) if end else size - 1


def _no_such_key(key: str) -> tuple[int, dict[str, str], bytes]:
    body = (
        f"{_XML}<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message>"
        f"<Key>{_escape(key)}</Key><RequestId>0</RequestId></Error>"
    )
    return 404, {}, body.encode()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_REASONS = {100: "Continue", 200: "OK", 204: "No Content", 206: "Partial Content", 400: "Bad Request", 404: "Not Found"}


class _Handler(ConnectionHandler):
    server: _Server

    def setup(self) -> None:
        self._buffer = memoryview(bytearray(READ_CHUNK))  # request bodies are read into it and dropped

    def answer(self, conn: socket.socket, rfile: Any) -> bool:
        request = read_request(conn, rfile)
        if request is None:
            return False
        method, headers = request.method, request.headers
        operation = s3_operation(method, request.target, headers)
        received = Body.of(rfile, is_chunked(headers), header(headers, "content-length")).drain(self._buffer)
        size = _payload_size(headers, received)
        status, extra, body = _answer(
            operation, request.bucket, request.key, request.query, headers, size, self.server.sizes
        )
        length = body if isinstance(body, int) else len(body)
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}", "Server: null-sink", "x-amz-request-id: 0"]
        lines += [f"{name}: {value}" for name, value in extra.items()]
        lines.append(f"Content-Type: {'application/octet-stream' if isinstance(body, int) else 'application/xml'}")
        lines.append(f"Content-Length: {length}")
        if request.closes:
            lines.append("Connection: close")
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # counted before answering, so a count taken right after the client is done includes it
        self.server.counts.add(operation, received, 0 if method == "HEAD" else length)
        if method == "HEAD":
            conn.sendall(payload)
        elif isinstance(body, bytes):
            conn.sendall(payload + body)
        else:  # zeros for a key that was written
            conn.sendall(payload)
            zeros = bytes(min(length, READ_CHUNK)) if length else b""
            sent = 0
            while sent < length:
                conn.sendall(zeros[: length - sent])
                sent += min(len(zeros), length - sent)
        return not request.closes


class _Server(LoopbackServer):
    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.sizes = _Sizes()
        super().__init__(_Handler, tls)


class NullSink(BackgroundServer):
    """The null S3 server in a background thread of this process; a context manager."""

    thread_name = "null-sink"

    def _make_server(self) -> _Server:
        return _Server(self._tls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args()
    tls = (args.tls_cert, args.tls_key) if args.tls_cert and args.tls_key else None
    with NullSink(tls) as sink:
        print(sink.endpoint_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        print(sink.counts.take())


if __name__ == "__main__":
    main()
