from __future__ import annotations

import dataclasses
import pickle

import pytest

from s3dcp import S3ClientConfig
from s3dcp._config import MIB, redact_url, resolve_settings


def test_defaults_are_valid_and_frozen() -> None:
    config = S3ClientConfig()
    assert config.part_size == 16 * MIB
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.part_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        S3ClientConfig("http://x")  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint_url": "localhost:9000"},
        {"endpoint_url": "ftp://host"},
        {"profile": " "},
        {"max_attempts": 0},
        {"max_concurrency": True},
        {"connect_timeout": 0},
        {"retry_deadline": -1},
        {"part_size": 4 * MIB},
        {"part_size": 6 * 1024**3},
        {"coalesce_gap": -1},
        {"max_read_size": 0},
    ],
)
def test_bad_values_say_what_to_change(kwargs: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)) as raised:
        S3ClientConfig(**kwargs)  # type: ignore[arg-type]
    assert next(iter(kwargs)) in str(raised.value) or "endpoint" in str(raised.value)


def test_environment_resolution_order() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://generic:1",
        "AWS_ENDPOINT_URL_S3": "http://s3-specific:2",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-central-1",
        "AWS_ACCESS_KEY_ID": "AKIA1",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "AWS_PROFILE": "team",
    }
    settings = resolve_settings(None, None, env)
    assert settings.endpoint_url == "http://s3-specific:2"
    assert settings.region == "eu-central-1"
    assert settings.access_key_id == "AKIA1"
    assert settings.profile == "team"
    explicit = resolve_settings("us-west-2", S3ClientConfig(endpoint_url="http://mine:3", profile="p"), env)
    assert explicit.endpoint_url == "http://mine:3"
    assert explicit.region == "us-west-2"
    assert explicit.profile == "p" and explicit.profile_is_explicit
    assert explicit.access_key_id is None  # an explicit profile wins over env keys
    ignored = resolve_settings(None, None, dict(env, AWS_IGNORE_CONFIGURED_ENDPOINT_URLS="true"))
    assert ignored.endpoint_url is None


def test_settings_hide_secrets_and_compare_by_value() -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_SESSION_TOKEN": "tok3n"}
    a, b = resolve_settings("r", None, env), resolve_settings("r", None, dict(env))
    assert a == b and hash(a) == hash(b)
    assert a != resolve_settings("r", None, dict(env, AWS_SECRET_ACCESS_KEY="other"))
    for text in (repr(a), str(a)):
        assert "s3cr3t" not in text and "tok3n" not in text
    assert pickle.loads(pickle.dumps(a)) == a


def test_redact_url() -> None:
    assert redact_url("http://user:pw@host:9000/x") == "http://host:9000/x"
    assert redact_url("https://host") == "https://host"
    settings = resolve_settings(None, S3ClientConfig(endpoint_url="http://u:pw@h:1"), {})
    assert "pw" not in settings.describe_endpoint()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_side_encryption": "AES256"},
        {"server_side_encryption": "aws:kms"},
        {"server_side_encryption": "aws:kms", "sse_kms_key_id": "alias/checkpoints"},
        {"server_side_encryption": "aws:kms:dsse", "sse_kms_key_id": "1234abcd-12ab-34cd-56ef-1234567890ab"},
        {"storage_class": "STANDARD_IA"},
        {"storage_class": "GLACIER_IR"},
        {"storage_class": "INTELLIGENT_TIERING"},
        {"storage_class": "CEPH_COLD2"},  # stores define their own classes
        {"expected_bucket_owner": "123456789012"},
    ],
)
def test_server_side_options_accept_good_values(kwargs: dict[str, str]) -> None:
    config = S3ClientConfig(**kwargs)  # type: ignore[arg-type]
    for name, value in kwargs.items():
        assert getattr(config, name) == value


def test_server_side_options_default_to_none_and_are_part_of_the_cache_key() -> None:
    config = S3ClientConfig()
    assert config.server_side_encryption is None and config.sse_kms_key_id is None
    assert config.storage_class is None and config.expected_bucket_owner is None
    plain = resolve_settings("r", config, {})
    assert plain == resolve_settings("r", S3ClientConfig(), {})
    for changed in (
        S3ClientConfig(server_side_encryption="AES256"),
        S3ClientConfig(storage_class="STANDARD_IA"),
        S3ClientConfig(expected_bucket_owner="123456789012"),
        S3ClientConfig(server_side_encryption="aws:kms", sse_kms_key_id="k"),
    ):
        assert resolve_settings("r", changed, {}) != plain
    assert S3ClientConfig(server_side_encryption="aws:kms", sse_kms_key_id="a") != S3ClientConfig(
        server_side_encryption="aws:kms", sse_kms_key_id="b"
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"server_side_encryption": "aes256"}, ["server_side_encryption", "'AES256'", "'aws:kms'", "'aws:kms:dsse'"]),
        ({"server_side_encryption": "SSE-S3"}, ["server_side_encryption", "'AES256'"]),
        ({"server_side_encryption": ""}, ["server_side_encryption", "'aws:kms'"]),
        ({"sse_kms_key_id": "alias/k"}, ["sse_kms_key_id", 'server_side_encryption="aws:kms"']),
        (
            {"server_side_encryption": "AES256", "sse_kms_key_id": "alias/k"},
            ["sse_kms_key_id", 'server_side_encryption="aws:kms"'],
        ),
        ({"server_side_encryption": "aws:kms", "sse_kms_key_id": ""}, ["sse_kms_key_id", "non-empty"]),
        ({"server_side_encryption": "aws:kms", "sse_kms_key_id": "  "}, ["sse_kms_key_id", "non-empty"]),
        ({"storage_class": ""}, ["storage_class", "uppercase"]),
        ({"storage_class": "standard_ia"}, ["storage_class", "uppercase"]),
        ({"storage_class": "STANDARD IA"}, ["storage_class", "uppercase"]),
        ({"storage_class": "GLACIER"}, ["'GLACIER'", "restore", "GLACIER_IR", "STANDARD_IA"]),
        ({"storage_class": "DEEP_ARCHIVE"}, ["'DEEP_ARCHIVE'", "restore", "GLACIER_IR", "STANDARD_IA"]),
        ({"expected_bucket_owner": "12345678901"}, ["expected_bucket_owner", "12-digit"]),
        ({"expected_bucket_owner": "1234567890123"}, ["expected_bucket_owner", "12-digit"]),
        ({"expected_bucket_owner": "12345678901a"}, ["expected_bucket_owner", "12-digit"]),
        ({"expected_bucket_owner": "123456789012\n"}, ["expected_bucket_owner", "12-digit"]),
        ({"expected_bucket_owner": "my-company"}, ["expected_bucket_owner", "account id"]),
    ],
)
def test_server_side_options_refuse_bad_values(kwargs: dict[str, str], expected: list[str]) -> None:
    with pytest.raises(ValueError) as raised:
        S3ClientConfig(**kwargs)  # type: ignore[arg-type]
    for text in expected:
        assert text in str(raised.value)


def test_kms_key_id_is_not_echoed() -> None:
    key = "arn:aws:kms:us-east-1:111122223333:key/do-not-print"
    with pytest.raises(ValueError) as raised:
        S3ClientConfig(server_side_encryption="AES256", sse_kms_key_id=key)
    assert "do-not-print" not in str(raised.value)


def test_every_operation_given_request_defaults_accepts_them() -> None:
    """botocore's S3 model must take each parameter s3dcp adds to each operation."""
    import botocore.session

    from s3dcp._s3.hooks import BUCKET_OPERATIONS, CREATE_OPERATIONS

    model = botocore.session.Session().get_service_model("s3")
    for operation in BUCKET_OPERATIONS:
        assert "ExpectedBucketOwner" in model.operation_model(operation).input_shape.members, operation
    for operation in CREATE_OPERATIONS:
        members = model.operation_model(operation).input_shape.members
        assert {"ServerSideEncryption", "SSEKMSKeyId", "StorageClass"} <= set(members), operation
