"""A multipart upload whose parts the caller sends itself (server-side copies) ends in complete or abort."""

from __future__ import annotations

from typing import Any

import pytest

from s3dcp import S3ClientConfig
from s3dcp._config import resolve_settings
from s3dcp._s3.client import S3Client
from s3dcp._s3.upload import complete_multipart, multipart_upload
from s3dcp_testkit.fault_proxy import FaultProxy

pytestmark = pytest.mark.s3

NO_RETRIES = S3ClientConfig(max_attempts=1)


def open_uploads(s3: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def copy_in_one_part(client: S3Client, bucket: str, upload_id: str, source: str, target: str) -> list[dict[str, Any]]:
    answer = client.call(
        "upload_part_copy",
        bucket,
        target,
        UploadId=upload_id,
        PartNumber=1,
        CopySource={"Bucket": bucket, "Key": source},
    )
    return [{"PartNumber": 1, "ETag": answer["CopyPartResult"]["ETag"]}]


def test_a_completed_upload_stores_the_object(proxied_env: Any, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="source", Body=b"x" * 1000)
    client = S3Client(resolve_settings(None, NO_RETRIES))
    with multipart_upload(client, bucket, "target") as upload_id:
        parts = copy_in_one_part(client, bucket, upload_id, "source", "target")
        complete_multipart(client, bucket, "target", upload_id, parts)
    assert s3.get_object(Bucket=bucket, Key="target")["Body"].read() == b"x" * 1000
    assert open_uploads(s3, bucket) == []


def test_a_failed_block_aborts_the_upload(proxied_env: Any, s3: Any, bucket: str) -> None:
    client = S3Client(resolve_settings(None, NO_RETRIES))
    with pytest.raises(ValueError, match="the caller's own failure"):
        with multipart_upload(client, bucket, "target"):
            assert open_uploads(s3, bucket) == ["target"]
            raise ValueError("the caller's own failure")
    assert open_uploads(s3, bucket) == []


def test_a_failed_abort_is_a_note_on_the_original_error(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    client = S3Client(resolve_settings(None, NO_RETRIES))
    proxy.add_rule("access_denied", method="DELETE", query_contains="uploadId")
    with pytest.raises(ValueError, match="the caller's own failure") as raised:
        with multipart_upload(client, bucket, "target"):
            raise ValueError("the caller's own failure")
    notes = getattr(raised.value, "__notes__", [])
    assert len(notes) == 1 and "also failed to abort the upload" in notes[0] and "AccessDenied" in notes[0]
    assert open_uploads(s3, bucket) == ["target"]  # the refused abort left it open: the note says so
