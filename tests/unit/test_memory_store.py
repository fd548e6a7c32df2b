"""The in-memory S3 store behind the WAN emulator answers the S3 subset checkpoint clients use (no sockets)."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from s3dcp_testkit.memory_store import Store, byte_range


def _call(
    store: Store,
    operation: str,
    path: str,
    query: str = "",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    from urllib.parse import parse_qs

    bucket, _, key = path.partition("/")
    status, extra, payload = store.answer(
        operation, bucket, key, parse_qs(query, keep_blank_values=True), headers or [], bytearray(body)
    )
    return status, extra, bytes(payload)


def _texts(payload: bytes, name: str) -> list[str]:
    return [e.text or "" for e in ElementTree.fromstring(payload).iter() if e.tag.rsplit("}", 1)[-1] == name]


def test_ranges_follow_http_rules() -> None:
    assert byte_range(None, 10) is None
    assert byte_range("bytes=2-4", 10) == (2, 4)
    assert byte_range("bytes=8-", 10) == (8, 9)
    assert byte_range("bytes=5-100", 10) == (5, 9)
    assert byte_range("bytes=-3", 10) == (7, 9)
    assert byte_range("bytes=10-12", 10) == "invalid"


def test_objects_are_put_read_in_ranges_created_only_once_and_deleted() -> None:
    store = Store()
    assert _call(store, "PutObject", "b/k", body=b"x")[0] == 404  # no bucket yet
    assert _call(store, "CreateBucket", "b")[0] == 200
    assert _call(store, "PutObject", "b/k", body=b"0123456789")[0] == 200
    assert _call(store, "GetObject", "b/k")[2] == b"0123456789"
    status, extra, payload = _call(store, "GetObject", "b/k", headers=[("Range", "bytes=2-4")])
    assert (status, payload, extra["Content-Range"]) == (206, b"234", "bytes 2-4/10")
    assert _call(store, "GetObject", "b/k", headers=[("Range", "bytes=20-")])[0] == 416
    assert _call(store, "HeadObject", "b/k")[1]["Content-Length"] == "10"
    assert _call(store, "PutObject", "b/k", headers=[("If-None-Match", "*")], body=b"new")[0] == 412
    assert _call(store, "CopyObject", "b/copy", headers=[("x-amz-copy-source", "/b/k")])[0] == 200
    assert _call(store, "DeleteObject", "b/k")[0] == 204
    assert _call(store, "GetObject", "b/k")[0] == 404
    assert _call(store, "GetObject", "b/copy")[2] == b"0123456789"


def test_multipart_uploads_join_their_parts_in_the_order_listed() -> None:
    store = Store()
    _call(store, "CreateBucket", "b")
    upload_id = _texts(_call(store, "CreateMultipartUpload", "b/big", "uploads")[2], "UploadId")[0]
    _call(store, "UploadPart", "b/big", f"partNumber=2&uploadId={upload_id}", body=b"world")
    _call(store, "UploadPart", "b/big", f"partNumber=1&uploadId={upload_id}", body=b"hello ")
    assert _texts(_call(store, "ListObjects", "b", "uploads")[2], "UploadId") == [upload_id]
    assert _texts(_call(store, "GetObject", "b/big", f"uploadId={upload_id}")[2], "PartNumber") == ["1", "2"]
    parts = b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part><Part><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"
    status, _, answer = _call(store, "CompleteMultipartUpload", "b/big", f"uploadId={upload_id}", body=parts)
    assert status == 200 and _texts(answer, "ETag")[0].endswith('-2"')
    assert _call(store, "GetObject", "b/big")[2] == b"hello world"
    assert _call(store, "AbortMultipartUpload", "b/big", f"uploadId={upload_id}")[0] == 404  # gone once complete


def test_listing_pages_and_groups_by_delimiter() -> None:
    store = Store()
    _call(store, "CreateBucket", "b")
    for key in ("run/a", "run/b", "run/step_1/x", "run/step_1/y", "run/step_2/x", "other"):
        _call(store, "PutObject", f"b/{key}", body=b"1")
    page = _call(store, "ListObjects", "b", "list-type=2&prefix=run/&delimiter=/")[2]
    assert _texts(page, "Key") == ["run/a", "run/b"]
    assert _texts(page, "Prefix")[1:] == ["run/step_1/", "run/step_2/"]  # the first is the request's prefix
    keys: list[str] = []
    token = ""
    while True:
        page = _call(store, "ListObjects", "b", f"list-type=2&prefix=run/&max-keys=2&continuation-token={token}")[2]
        keys += _texts(page, "Key")
        if _texts(page, "IsTruncated") != ["true"]:
            break
        token = _texts(page, "NextContinuationToken")[0]
    assert keys == ["run/a", "run/b", "run/step_1/x", "run/step_1/y", "run/step_2/x"]
    deleted = b"<Delete><Object><Key>run/a</Key></Object><Object><Key>other</Key></Object><Quiet>true</Quiet></Delete>"
    assert _call(store, "DeleteObjects", "b", "delete", body=deleted)[0] == 200
    assert _texts(_call(store, "ListObjects", "b", "list-type=2")[2], "Key") == [
        "run/b",
        "run/step_1/x",
        "run/step_1/y",
        "run/step_2/x",
    ]
