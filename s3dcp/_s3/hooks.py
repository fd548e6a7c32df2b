"""The botocore event hooks s3dcp installs on each client, and the check that an answer is S3's.

:func:`install_hooks` registers them all on a new client:

* request defaults (``ExpectedBucketOwner``, server-side encryption, storage
  class) added to every request's parameters, so raw ``client.raw.*`` calls
  get them too;
* the upload checksum (``Content-MD5`` or ``Checksum<ALGORITHM>``) computed
  from in-memory bodies;
* ``memoryview`` bodies carried past botocore's parameter validator
  (:func:`s3dcp._compat.botocore.admit_memoryview_bodies`);
* bodies sent a piece per ``sendall`` once signed, so a slow link is not
  taken for a stalled one (:mod:`s3dcp._s3.send`);
* a ``before-parse`` check (:func:`refuse_non_s3_answer`) that stops at an
  answer no S3 store gives, before botocore parses it: a web server's 404
  page must not read as "no such object", nor its HTML as an empty listing.
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping
from typing import Any

from s3dcp import _crc32 as crc32
from s3dcp._compat import botocore as _botocore
from s3dcp._config import S3ClientConfig
from s3dcp._s3.retry import THROTTLING_STATUSES, TRANSIENT_STATUSES
from s3dcp._s3.send import install_piecewise_sends

__all__ = [
    "BUCKET_OPERATIONS",
    "CREATE_OPERATIONS",
    "BODY_OPERATIONS",
    "REQUEST_ID_HEADERS",
    "NotS3AnswerError",
    "install_hooks",
    "non_s3_answer",
    "refuse_non_s3_answer",
    "content_type",
]

# Every S3 operation s3dcp sends; all of them accept ExpectedBucketOwner (not
# every S3 operation does, e.g. CreateBucket and ListBuckets, hence the list).
BUCKET_OPERATIONS = (
    "PutObject",
    "GetObject",
    "HeadObject",
    "DeleteObject",
    "DeleteObjects",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "ListObjectsV2",
    "ListMultipartUploads",
    "ListParts",
    "CopyObject",
)
# The operations that create objects, which take encryption and storage class.
CREATE_OPERATIONS = ("PutObject", "CreateMultipartUpload", "CopyObject")
# The operations that carry object bytes, which take an upload checksum.
BODY_OPERATIONS = ("PutObject", "UploadPart")

# Response headers by which S3 stores name a request. Checked against what the stores send:
# AWS S3 sends x-amz-request-id and x-amz-id-2 on every response; Ceph RGW sends
# x-amz-request-id on every S3 response (its end_header writes it); MinIO X-Amz-Request-Id;
# moto's server x-amzn-requestid on almost every answer (not on a 416, which carries an S3
# error document instead). A store that sends none of them is still recognised by an S3
# error document, or on success by an ETag (object requests) or an XML body (listings).
REQUEST_ID_HEADERS = ("x-amz-request-id", "x-amz-id-2", "x-amzn-requestid")


def install_hooks(client: Any, config: S3ClientConfig) -> None:
    """Register every s3dcp hook on a newly created botocore S3 client."""
    _install_request_defaults(client, config)
    _botocore.admit_memoryview_bodies(client, BODY_OPERATIONS)
    install_piecewise_sends(client, BODY_OPERATIONS, config.connect_timeout)
    client.meta.events.register("before-parse.s3", refuse_non_s3_answer)


def _install_request_defaults(client: Any, config: S3ClientConfig) -> None:
    """Add the configured server-side options to the params of every request.

    Done with botocore events on the client, not at each call site, so that
    every request gets them, including raw ``client.raw.get_object(...)``
    calls elsewhere in the package, without each call site having to
    remember. A value the caller passed explicitly is kept.
    """
    owner: dict[str, str | None] = {"ExpectedBucketOwner": config.expected_bucket_owner}
    create: dict[str, str | None] = {
        "ServerSideEncryption": config.server_side_encryption,
        "SSEKMSKeyId": config.sse_kms_key_id,
        "StorageClass": config.storage_class,
    }
    for operation in BUCKET_OPERATIONS:
        wanted = {**owner, **create} if operation in CREATE_OPERATIONS else owner
        defaults = {name: value for name, value in wanted.items() if value is not None}
        if defaults:
            client.meta.events.register(f"before-parameter-build.s3.{operation}", _defaults_handler(defaults))
    if config.upload_checksum == "md5":
        for operation in BODY_OPERATIONS:
            client.meta.events.register(f"before-parameter-build.s3.{operation}", _add_content_md5)
    elif config.upload_checksum is not None:
        # declared on CreateMultipartUpload too, so the parts' checksums are kept and checked
        algorithm = _defaults_handler({"ChecksumAlgorithm": config.upload_checksum.upper()})
        for operation in (*BODY_OPERATIONS, "CreateMultipartUpload"):
            client.meta.events.register(f"before-parameter-build.s3.{operation}", algorithm)
        # and the value itself as a header: left to botocore, an unsigned body over HTTPS
        # would go as aws-chunked with a trailing checksum, which stores such as Ceph RGW
        # refuse (411 MissingContentLength)
        value = _checksum_value_handler(config.upload_checksum)
        for operation in BODY_OPERATIONS:
            client.meta.events.register(f"before-parameter-build.s3.{operation}", value)


_CHECKSUMS: dict[str, Callable[[Any], bytes]] = {
    "crc32": lambda body: crc32.compute(body).to_bytes(4, "big"),
    "sha1": lambda body: hashlib.sha1(body).digest(),
    "sha256": lambda body: hashlib.sha256(body).digest(),
}


def _checksum_value_handler(algorithm: str) -> Callable[..., None]:
    """Set ``Checksum<ALGORITHM>`` from an in-memory body unless the caller computed it."""
    parameter = f"Checksum{algorithm.upper()}"
    compute = _CHECKSUMS[algorithm]

    def add_checksum_value(params: dict[str, Any], **kwargs: Any) -> None:
        body = params.get("Body")
        if isinstance(body, (bytes, bytearray, memoryview)) and parameter not in params:
            params[parameter] = base64.b64encode(compute(body)).decode("ascii")

    return add_checksum_value


def _add_content_md5(params: dict[str, Any], **kwargs: Any) -> None:
    """Set ``ContentMD5`` from an in-memory body (s3dcp's bodies always are)."""
    body = params.get("Body")
    if isinstance(body, (bytes, bytearray, memoryview)) and "ContentMD5" not in params:
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        params["ContentMD5"] = base64.b64encode(digest).decode("ascii")


def _defaults_handler(defaults: dict[str, str]) -> Callable[..., None]:
    """A ``before-parameter-build`` handler that fills in ``defaults``."""

    def add_defaults(params: dict[str, Any], **kwargs: Any) -> None:
        for name, value in defaults.items():
            params.setdefault(name, value)

    return add_defaults


class NotS3AnswerError(Exception):
    """An HTTP answer no S3 store gives: the endpoint is some other HTTP server.

    Raised while botocore handles the answer, before it is parsed (an HTML
    page could otherwise read as an empty listing, or as the bytes of an
    object); :func:`s3dcp._s3.translate.translate_error` turns it into an
    :class:`~s3dcp._errors.EndpointError`. Never retried.
    """

    def __init__(self, status: int, content_type: str | None, problem: str) -> None:
        super().__init__(status, content_type, problem)
        self.status = status
        self.content_type = content_type
        self.problem = problem


def non_s3_answer(status: int, headers: Mapping[str, str], error_document: bool | None) -> str | None:
    """What shows an answer is not from S3, or ``None`` if an S3 store could have sent it.

    Args:
        status: the HTTP status.
        headers: the response headers (any case).
        error_document: for an error status, whether the body is an S3 error
            document (``None``: no body, or not known).
    """
    names = {name.lower() for name in headers}
    if any(name in names for name in REQUEST_ID_HEADERS):
        return None
    xml = _is_xml(content_type(headers))
    if status >= 300:
        if error_document:
            return None
        if error_document is None and xml:
            return None  # a HEAD error has no body to check: one labelled XML is taken as S3's
        return "no S3 request id header and no S3 error document"
    if "etag" in names or xml or status == 204:
        return None
    return "no S3 request id header, no ETag and no XML body"


def refuse_non_s3_answer(response_dict: dict[str, Any], **kwargs: Any) -> None:
    """botocore ``before-parse`` hook: stop at an answer no S3 store would give.

    Throttling and server-error statuses are left to the retry policy and
    reported as server errors: a load balancer may answer them for a store
    that is restarting, and a store that crashes on a request may answer a
    generic page (moto's server does, for some bad upload ids).
    """
    status = int(response_dict.get("status_code") or 0)
    if status in THROTTLING_STATUSES or status in TRANSIENT_STATUSES:
        return
    headers = response_dict.get("headers") or {}
    body: Any = response_dict.get("body")
    document: bool | None = None
    if status >= 300 and isinstance(body, (bytes, bytearray)) and body:
        document = _is_s3_error_document(bytes(body))
    problem = non_s3_answer(status, headers, document)
    if problem is None:
        return
    if hasattr(body, "close"):
        body.close()  # an object body never read: give the connection back
    raise NotS3AnswerError(status, content_type(headers), problem)


def _is_s3_error_document(body: bytes) -> bool:
    """An ``<Error><Code>...</Code>...</Error>`` XML document, as every S3 store sends with an error."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return False
    code = root.find("Code")
    return root.tag == "Error" and code is not None and bool((code.text or "").strip())


def content_type(headers: Mapping[str, str]) -> str | None:
    """The ``Content-Type`` header's value, whatever the case of its name."""
    for name, value in headers.items():
        if name.lower() == "content-type":
            return str(value)
    return None


def _is_xml(value: str | None) -> bool:
    kind = (value or "").split(";")[0].strip().lower()
    return kind in ("application/xml", "text/xml") or kind.endswith("+xml")
