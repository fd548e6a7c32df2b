from __future__ import annotations

import dataclasses
import pickle

import pytest

from s3dcp import S3ClientConfig
from s3dcp.config import MIB, redact_url, resolve_settings


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
