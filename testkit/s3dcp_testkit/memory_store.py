"""An S3 store in this process's memory, for the WAN emulator: it keeps the bytes, faster than moto.

moto keeps every object, but in one Python process that the benchmarks'
clients share two cores with it answers ranged GETs at a few hundred MB/s,
below what an emulated link of many connections allows. This store answers
the subset of S3 that checkpoint clients use, from dicts behind one lock:
buckets (create, head, location), PutObject (with ``If-None-Match: *``),
CopyObject, GetObject (whole or one range) and HeadObject, DeleteObject(s),
ListObjects(V2) with prefix, delimiter and pages, and multipart uploads
(create, parts, complete, abort, list uploads, list parts). No signature
or checksum checks, no versions, ETags are random. Unsigned ``aws-chunked``
bodies are decoded (the trailer is dropped).

    python -m s3dcp_testkit.memory_store      # prints the endpoint; Ctrl-C stops
"""

from __future__ import annotations

import socket
import ssl
import threading
import uuid
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from s3dcp_testkit.http_framing import Body, header, is_chunked
from s3dcp_testkit.loopback import BackgroundServer, ConnectionHandler, LoopbackServer, read_request
from s3dcp_testkit.null_sink import s3_operation

_XML = '<?xml version="1.0" encoding="UTF-8"?>\n'
_NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
_MODIFIED_XML = "2000-01-01T00:00:00.000Z"
_MODIFIED_HTTP = "Sat, 01 Jan 2000 00:00:00 GMT"
_REASONS = {200: "OK", 204: "No Content", 206: "Partial Content", 404: "Not Found", 412: "Precondition Failed"}

Answer = tuple[int, dict[str, str], bytes | memoryview]


@dataclass
class _Object:
    data: bytes | bytearray
    etag: str = field(default_factory=lambda: f'"{uuid.uuid4().hex}"')


@dataclass
class _Upload:
    bucket: str
    key: str
    parts: dict[int, _Object] = field(default_factory=dict)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _error(status: int, code: str, message: str) -> Answer:
    body = f"{_XML}<Error><Code>{code}</Code><Message>{message}</Message><RequestId>0</RequestId></Error>"
    return status, {"Content-Type": "application/xml"}, body.encode()


def _xml(text: str) -> Answer:
    return 200, {"Content-Type": "application/xml"}, (_XML + text).encode()


def _tags(body: bytes, name: str) -> list[str]:
    """The text of every element called ``name`` (any namespace) in an XML body."""
    root = ElementTree.fromstring(body)
    return [element.text or "" for element in root.iter() if element.tag.rsplit("}", 1)[-1] == name]


def byte_range(value: str | None, size: int) -> tuple[int, int] | None | str:
    """``(first, last)`` of a single ``Range`` header within ``size`` bytes; None for the whole; "invalid" if unsatisfiable."""
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    start, _, end = value[len("bytes=") :].partition("-")
    if not start:
        return (max(0, size - int(end)), size - 1) if int(end) > 0 and size else "invalid"
    if int(start) >= size:
        return "invalid"
    return int(start), min(size - 1, int(end)) if end else size - 1


class Store:
    """Buckets, objects and open multipart uploads; every method takes the lock once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.buckets: dict[str, dict[str, _Object]] = {}
        self.uploads: dict[str, _Upload] = {}

    def answer(
        self,
        operation: str,
        bucket: str,
        key: str,
        query: dict[str, list[str]],
        headers: list[tuple[str, str]],
        body: bytearray,
    ) -> Answer:
        """Status, headers and body of one S3 operation."""
        with self._lock:
            if operation == "CreateBucket":
                self.buckets.setdefault(bucket, {})
                return 200, {"Location": f"/{bucket}"}, b""
            if operation == "ListBuckets":
                names = "".join(
                    f"<Bucket><Name>{b}</Name><CreationDate>{_MODIFIED_XML}</CreationDate></Bucket>"
                    for b in sorted(self.buckets)
                )
                return _xml(f"<ListAllMyBucketsResult {_NS}><Buckets>{names}</Buckets></ListAllMyBucketsResult>")
            objects = self.buckets.get(bucket)
            if objects is None:
                return _error(404, "NoSuchBucket", "The specified bucket does not exist.")
            return self._in_bucket(operation, bucket, key, query, headers, body, objects)

    def _in_bucket(
        self,
        operation: str,
        bucket: str,
        key: str,
        query: dict[str, list[str]],
        headers: list[tuple[str, str]],
        body: bytearray,
        objects: dict[str, _Object],
    ) -> Answer:
        upload_id = query.get("uploadId", [""])[0]
        if operation == "HeadBucket":
            return 200, {"x-amz-bucket-region": "us-east-1"}, b""
        if operation == "GetBucketLocation":
            return _xml(f"<LocationConstraint {_NS}></LocationConstraint>")
        if operation == "ListObjects":
            if "uploads" in query:
                return self._list_uploads(bucket, query)
            return self._list(bucket, objects, query)
        if operation == "DeleteObjects":
            keys = _tags(bytes(body), "Key")
            for name in keys:
                objects.pop(name, None)
            quiet = "true" in [t.lower() for t in _tags(bytes(body), "Quiet")]
            deleted = "" if quiet else "".join(f"<Deleted><Key>{_escape(k)}</Key></Deleted>" for k in keys)
            return _xml(f"<DeleteResult {_NS}>{deleted}</DeleteResult>")
        if operation == "PutObject":
            if header(headers, "if-none-match") == "*" and key in objects:
                return _error(
                    412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold"
                )
            objects[key] = _Object(body)
            return 200, {"ETag": objects[key].etag}, b""
        if operation == "CopyObject":
            source_bucket, _, source_key = (
                unquote((header(headers, "x-amz-copy-source") or "").split("?", 1)[0]).lstrip("/").partition("/")
            )
            source = self.buckets.get(source_bucket, {}).get(source_key)
            if source is None:
                return _error(404, "NoSuchKey", "The specified key does not exist.")
            objects[key] = _Object(source.data)
            return _xml(
                f"<CopyObjectResult {_NS}><LastModified>{_MODIFIED_XML}</LastModified>"
                f"<ETag>{_escape(objects[key].etag)}</ETag></CopyObjectResult>"
            )
        if operation == "DeleteObject" and not upload_id:
            objects.pop(key, None)
            return 204, {}, b""
        if operation == "CreateMultipartUpload":
            new_id = uuid.uuid4().hex
            self.uploads[new_id] = _Upload(bucket, key)
            return _xml(
                f"<InitiateMultipartUploadResult {_NS}><Bucket>{bucket}</Bucket><Key>{_escape(key)}</Key>"
                f"<UploadId>{new_id}</UploadId></InitiateMultipartUploadResult>"
            )
        if upload_id:
            return self._multipart(operation, bucket, key, upload_id, query, body, objects)
        found = objects.get(key)
        if found is None:
            return _error(404, "NoSuchKey", "The specified key does not exist.")
        stored = {"ETag": found.etag, "Last-Modified": _MODIFIED_HTTP, "Content-Type": "application/octet-stream"}
        size = len(found.data)
        if operation == "HeadObject":
            return 200, dict(stored, **{"Content-Length": str(size)}), b""
        wanted = byte_range(header(headers, "range"), size)
        if wanted == "invalid":
            return _error(416, "InvalidRange", "The requested range is not satisfiable")
        if isinstance(wanted, tuple):
            first, last = wanted
            view = memoryview(found.data)[first : last + 1]
            return 206, dict(stored, **{"Content-Range": f"bytes {first}-{last}/{size}"}), view
        return 200, stored, memoryview(found.data)

    def _multipart(
        self,
        operation: str,
        bucket: str,
        key: str,
        upload_id: str,
        query: dict[str, list[str]],
        body: bytearray,
        objects: dict[str, _Object],
    ) -> Answer:
        upload = self.uploads.get(upload_id)
        if upload is None or (upload.bucket, upload.key) != (bucket, key):
            return _error(404, "NoSuchUpload", "The specified upload does not exist.")
        if operation == "UploadPart":
            part = upload.parts[int(query["partNumber"][0])] = _Object(body)
            return 200, {"ETag": part.etag}, b""
        if operation == "AbortMultipartUpload" or operation == "DeleteObject":
            del self.uploads[upload_id]
            return 204, {}, b""
        if operation == "CompleteMultipartUpload":
            numbers = [int(n) for n in _tags(bytes(body), "PartNumber")]
            if not numbers or any(n not in upload.parts for n in numbers):
                return _error(400, "InvalidPart", "One or more of the specified parts could not be found.")
            del self.uploads[upload_id]
            whole = _Object(b"".join(upload.parts[n].data for n in numbers))
            whole.etag = f'"{uuid.uuid4().hex}-{len(numbers)}"'
            objects[key] = whole
            return _xml(
                f"<CompleteMultipartUploadResult {_NS}><Location>/{bucket}/{_escape(key)}</Location>"
                f"<Bucket>{bucket}</Bucket><Key>{_escape(key)}</Key><ETag>{_escape(whole.etag)}</ETag>"
                "</CompleteMultipartUploadResult>"
            )
        # GET with an uploadId: ListParts
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><LastModified>{_MODIFIED_XML}</LastModified>"
            f"<ETag>{_escape(p.etag)}</ETag><Size>{len(p.data)}</Size></Part>"
            for n, p in sorted(upload.parts.items())
        )
        return _xml(
            f"<ListPartsResult {_NS}><Bucket>{bucket}</Bucket><Key>{_escape(key)}</Key><UploadId>{upload_id}</UploadId>"
            f"<IsTruncated>false</IsTruncated>{parts}</ListPartsResult>"
        )

    def _list_uploads(self, bucket: str, query: dict[str, list[str]]) -> Answer:
        prefix = query.get("prefix", [""])[0]
        uploads = "".join(
            f"<Upload><Key>{_escape(u.key)}</Key><UploadId>{upload_id}</UploadId>"
            f"<Initiated>{_MODIFIED_XML}</Initiated></Upload>"
            for upload_id, u in sorted(self.uploads.items(), key=lambda item: (item[1].key, item[0]))
            if u.bucket == bucket and u.key.startswith(prefix)
        )
        return _xml(
            f"<ListMultipartUploadsResult {_NS}><Bucket>{bucket}</Bucket><IsTruncated>false</IsTruncated>"
            f"{uploads}</ListMultipartUploadsResult>"
        )

    def _list(self, bucket: str, objects: dict[str, _Object], query: dict[str, list[str]]) -> Answer:
        def one(name: str) -> str:
            return query.get(name, [""])[0]

        prefix, delimiter, v2 = one("prefix"), one("delimiter"), one("list-type") == "2"
        after = max(one("continuation-token"), one("start-after")) if v2 else one("marker")
        limit = int(one("max-keys") or 1000)
        contents: list[str] = []
        prefixes: list[str] = []
        last = ""
        truncated = False
        for name in sorted(k for k in objects if k.startswith(prefix) and k > after):
            if len(contents) + len(prefixes) >= limit:
                truncated = True
                break
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = name[: cut + len(delimiter)]
                if not prefixes or prefixes[-1] != common:
                    prefixes.append(common)
                last = name
                continue
            contents.append(
                f"<Contents><Key>{_escape(name)}</Key><LastModified>{_MODIFIED_XML}</LastModified>"
                f"<ETag>{_escape(objects[name].etag)}</ETag><Size>{len(objects[name].data)}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
            last = name
        if truncated and prefixes and last.startswith(prefixes[-1]):  # resume after the whole common prefix
            last = prefixes[-1] + "\U0010ffff"
        items = "".join(contents) + "".join(
            f"<CommonPrefixes><Prefix>{_escape(p)}</Prefix></CommonPrefixes>" for p in prefixes
        )
        page = f"<IsTruncated>{str(truncated).lower()}</IsTruncated>"
        if truncated:
            page += (
                f"<NextContinuationToken>{_escape(last)}</NextContinuationToken>"
                if v2
                else f"<NextMarker>{_escape(last)}</NextMarker>"
            )
        return _xml(
            f"<ListBucketResult {_NS}><Name>{bucket}</Name><Prefix>{_escape(prefix)}</Prefix>"
            f"<MaxKeys>{limit}</MaxKeys><KeyCount>{len(contents) + len(prefixes)}</KeyCount>"
            + (f"<Delimiter>{_escape(delimiter)}</Delimiter>" if delimiter else "")
            + f"{page}{items}</ListBucketResult>"
        )


def _read_body(rfile: Any, headers: list[tuple[str, str]]) -> tuple[bytearray, int]:
    """The request's payload (aws-chunked framing removed) and the bytes it took on the wire."""
    length = header(headers, "content-length")
    body = Body.of(rfile, is_chunked(headers), length)
    if "aws-chunked" in (header(headers, "content-encoding") or "") or header(headers, "x-amz-decoded-content-length"):
        payload = Body(body, None)
        data = bytearray(int(header(headers, "x-amz-decoded-content-length") or 0))
        got = 0
        view = memoryview(data)
        while got < len(data) and (n := payload.readinto(view[got:])):
            got += n
        body.drain(memoryview(bytearray(64 * 1024)))
        return data, body.total
    if length is not None and not is_chunked(headers):
        data = bytearray(int(length))
        view = memoryview(data)
        got = 0
        while got < len(data):
            got += body.readinto(view[got:])
        return data, body.total
    return bytearray(body.read()), body.total


class _Handler(ConnectionHandler):
    server: _Server

    def answer(self, conn: socket.socket, rfile: Any) -> bool:
        request = read_request(conn, rfile)
        if request is None:
            return False
        method, headers = request.method, request.headers
        operation = s3_operation(method, request.target, headers)
        body, received = _read_body(rfile, headers)
        status, extra, payload = self.server.store.answer(
            operation, request.bucket, request.key, request.query, headers, body
        )
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Server: memory-store", "x-amz-request-id: 0"]
        lines += [f"{name}: {value}" for name, value in extra.items()]
        if "Content-Length" not in extra:
            lines.append(f"Content-Length: {len(payload)}")
        if request.closes:
            lines.append("Connection: close")
        self.server.counts.add(operation, received, 0 if method == "HEAD" else len(payload))
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if method != "HEAD" and len(payload):
            conn.sendall(payload)
        return not request.closes


class _Server(LoopbackServer):
    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.store = Store()
        super().__init__(_Handler, tls)


class MemoryStore(BackgroundServer):
    """The in-memory S3 store on a background thread of this process; a context manager."""

    thread_name = "memory-store"

    def _make_server(self) -> _Server:
        return _Server(self._tls)


if __name__ == "__main__":
    with MemoryStore() as running:
        print(running.endpoint_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
