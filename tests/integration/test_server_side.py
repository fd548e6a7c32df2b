"""Server-side options: encryption, storage class and bucket owner on every request.

Against moto 5 (checked by hand before writing these tests):

* ``ServerSideEncryption`` / ``StorageClass``: stored and reported by
  ``head_object``, for single-PUT and multipart objects alike;
* ``aws:kms`` with a made-up ``SSEKMSKeyId``: accepted without a real KMS
  key, and reported back by ``head_object``;
* ``ExpectedBucketOwner``: ignored (any account id is accepted), so the
  wrong-owner 403 cannot be tested here; the tests check that every request
  carries the header instead. moto's account id is ``123456789012``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter
from s3dcp_testkit.fault_proxy import FaultProxy, Record
from tests.conftest import REGION, list_keys
from tests.helpers import MIB, assert_same, blank_like

pytestmark = pytest.mark.s3

MOTO_ACCOUNT_ID = "123456789012"
PART_SIZE = 5 * MIB


def state_with_multipart(seed: int = 5) -> dict[str, Any]:
    """One ~6 MiB tensor (two parts at 5 MiB) and a few small ones."""
    g = torch.Generator().manual_seed(seed)
    return {
        "big": torch.randn(6 * MIB // 4, generator=g),
        "small": {f"w{i}": torch.randn(64, generator=g) for i in range(4)},
        "step": 7,
    }


def is_put_object(record: Record) -> bool:
    return record.method == "PUT" and "uploadId" not in record.query


def is_create_multipart(record: Record) -> bool:
    return record.method == "POST" and record.query.split("&")[0].split("=")[0] == "uploads"


@pytest.mark.moto_only("Ceph RGW 16 refuses SSE-S3 and SSE-KMS requests unless a KMS backend is configured")
def test_encryption_and_storage_class_reach_every_object(
    proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    config = S3ClientConfig(server_side_encryption="AES256", storage_class="STANDARD_IA", part_size=PART_SIZE)
    state = state_with_multipart()
    path = f"s3://{bucket}/sse"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config, thread_count=2))

    assert [r for r in proxy.requests() if is_create_multipart(r)], "the big tensor should go multipart"
    keys = list_keys(s3, bucket, "sse/")
    assert "sse/.metadata" in keys and any(k.endswith(".distcp") for k in keys)
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head.get("ServerSideEncryption") == "AES256", key
        assert head.get("StorageClass") == "STANDARD_IA", key

    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)


@pytest.mark.moto_only("Ceph RGW 16 refuses SSE-S3 and SSE-KMS requests unless a KMS backend is configured")
def test_kms_key_id_is_sent_when_objects_are_created(proxied_env: Any, proxy: FaultProxy, s3: Any, bucket: str) -> None:
    key_id = "alias/s3dcp-test-key"  # moto takes a key id that KMS does not know
    config = S3ClientConfig(server_side_encryption="aws:kms", sse_kms_key_id=key_id, part_size=PART_SIZE)
    state = state_with_multipart()
    path = f"s3://{bucket}/kms"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config))

    creates = [r for r in proxy.requests() if is_put_object(r) or is_create_multipart(r)]
    assert any(is_put_object(r) for r in creates) and any(is_create_multipart(r) for r in creates)
    for record in creates:
        assert record.headers.get("x-amz-server-side-encryption") == "aws:kms", record.path
        assert record.headers.get("x-amz-server-side-encryption-aws-kms-key-id") == key_id, record.path
    # Parts and reads must not carry them: S3 refuses SSE-KMS headers on UploadPart and GET.
    others = [r for r in proxy.requests() if r not in creates]
    assert others and not any("x-amz-server-side-encryption" in r.headers for r in others)
    assert not any("x-amz-storage-class" in r.headers for r in proxy.requests())

    for key in list_keys(s3, bucket, "kms/"):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head.get("ServerSideEncryption") == "aws:kms", key
        assert head.get("SSEKMSKeyId") == key_id, key
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)


def test_expected_bucket_owner_is_on_every_request(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    # moto ignores the header (a wrong id works too), so no wrong-owner test here.
    config = S3ClientConfig(expected_bucket_owner=MOTO_ACCOUNT_ID, part_size=PART_SIZE)
    state = state_with_multipart()
    path = f"s3://{bucket}/owner"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, config))
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, config))
    assert_same(state, loaded)

    records = proxy.requests()
    methods = {r.method for r in records}
    assert {"PUT", "POST", "GET"} <= methods
    missing = [
        (r.method, r.path, r.query) for r in records if r.headers.get("x-amz-expected-bucket-owner") != MOTO_ACCOUNT_ID
    ]
    assert not missing


def test_without_options_no_headers_are_added(proxied_env: Any, proxy: FaultProxy, bucket: str) -> None:
    state = {"w": torch.arange(16, dtype=torch.float32)}
    path = f"s3://{bucket}/plain"
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path))
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path))
    assert_same(state, loaded)
    added = ("x-amz-server-side-encryption", "x-amz-storage-class", "x-amz-expected-bucket-owner")
    assert proxy.requests()
    assert not any(name in r.headers for r in proxy.requests() for name in added)
