from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from s3dcp._uri import S3Uri, is_s3_uri, parse_s3_uri, validate_bucket_name


@pytest.mark.parametrize(
    "uri, bucket, prefix",
    [
        ("s3://bucket/run/step_1", "bucket", "run/step_1"),
        ("s3://bucket/run/step_1/", "bucket", "run/step_1"),
        ("s3://bucket", "bucket", ""),
        ("s3://bucket/", "bucket", ""),
        ("s3://my.bucket-9/a b/ü", "my.bucket-9", "a b/ü"),
        ("s3://name--usw2-az1--x-s3/ckpt", "name--usw2-az1--x-s3", "ckpt"),
    ],
)
def test_parse(uri: str, bucket: str, prefix: str) -> None:
    assert parse_s3_uri(uri) == S3Uri(bucket, prefix)


@pytest.mark.parametrize(
    "uri",
    [
        "/tmp/x",
        "s3:/b/k",
        "s3://",
        "http://bucket/k",
        "s3:///k",
        "s3://bucket/a//b",
        "s3://bucket/./b",
        "s3://bucket/a/../b",
        "s3://bucket/a\x00b",
        "s3://bucket/" + "k" * 1000,
    ],
)
def test_malformed_uris(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_uri(uri)
    assert not is_s3_uri(uri)


@pytest.mark.parametrize(
    "name",
    [
        "ab",
        "a" * 64,
        "Bucket",
        "bucket_name",
        "-bucket",
        "bucket-",
        "bu..cket",
        "192.168.5.4",
        "xn--bucket",
        "sthree-bucket",
        "bucket-s3alias",
        "bucket--ol-s3",
        "plain--x-s3",
    ],
)
def test_invalid_bucket_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid S3 bucket name"):
        validate_bucket_name(name)


@pytest.mark.parametrize("name", ["abc", "a" * 63, "my.bucket", "b-1.2-3", "data--use1-az4--x-s3"])
def test_valid_bucket_names(name: str) -> None:
    validate_bucket_name(name)


def test_path_like_and_wrong_types() -> None:
    assert not is_s3_uri(PurePosixPath("/tmp/x"))
    with pytest.raises(TypeError):
        parse_s3_uri(42)  # type: ignore[arg-type]
    assert not is_s3_uri(None)


def test_key_join_and_relative() -> None:
    uri = parse_s3_uri("s3://bucket/run/step_1")
    assert uri.key(".metadata") == "run/step_1/.metadata"
    assert uri.relative("run/step_1/a/__0_0.distcp") == "a/__0_0.distcp"
    assert str(uri) == "s3://bucket/run/step_1"
    assert str(uri.child("sub/")) == "s3://bucket/run/step_1/sub"
    root = parse_s3_uri("s3://bucket")
    assert root.key(".metadata") == ".metadata"
    assert str(root) == "s3://bucket"
    with pytest.raises(ValueError):
        uri.relative("other/key")
