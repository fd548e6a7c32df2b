"""The public surface: exports, the error tree, error translation."""

from __future__ import annotations

import pickle
from typing import Any

import botocore.exceptions
import pytest
from torch.distributed.checkpoint.api import CheckpointException

import s3dcp
from s3dcp import _errors as errors
from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._s3.translate import translate_error


def test_all_matches_what_the_package_exports() -> None:
    assert len(set(s3dcp.__all__)) == len(s3dcp.__all__)
    for name in s3dcp.__all__:
        assert hasattr(s3dcp, name), name
    public = {n for n in vars(s3dcp) if not n.startswith("_") and not isinstance(getattr(s3dcp, n), type(s3dcp))}
    assert public - {"annotations"} == set(s3dcp.__all__)


def test_every_error_is_an_s3dcp_error_and_pickles_intact() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        if not isinstance(cls, type):
            continue
        assert issubclass(cls, errors.S3DCPError)
        error = cls("message about s3://b/k", bucket="b", key="k")
        copy = pickle.loads(pickle.dumps(error))  # DCP gathers errors across ranks
        assert type(copy) is cls and str(copy) == str(error) and copy.key == "k"


def test_builtin_bases() -> None:
    assert issubclass(s3dcp.CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(s3dcp.CheckpointExistsError, FileExistsError)
    assert issubclass(s3dcp.AccessDeniedError, PermissionError)
    assert issubclass(s3dcp.EndpointError, ConnectionError)


def test_find_s3dcp_error_in_dcp_wrapping() -> None:
    inner = s3dcp.CheckpointNotFoundError("gone")
    wrapped = CheckpointException("plan", {1: (ValueError("other"), None), 0: (inner, None)})
    assert s3dcp.find_s3dcp_error(wrapped) is inner
    try:
        try:
            raise inner
        except s3dcp.S3DCPError as err:
            raise RuntimeError("outer") from err
    except RuntimeError as outer:
        assert s3dcp.find_s3dcp_error(outer) is inner
    assert s3dcp.find_s3dcp_error(ValueError("x")) is None


def test_find_s3dcp_error_prefers_the_cause_of_a_failed_shared_read() -> None:
    """Rank 0 failed only because rank 2 did (shared reads): the error found is rank 2's."""
    echo = s3dcp.SharedReadError("rank 2 failed ...")
    cause = s3dcp.AccessDeniedError("refused")
    wrapped = CheckpointException("read", {0: (echo, None), 1: (echo, None), 2: (cause, None)})
    assert s3dcp.find_s3dcp_error(wrapped) is cause
    alone = CheckpointException("read", {0: (echo, None)})
    assert s3dcp.find_s3dcp_error(alone) is echo


SETTINGS = resolve_settings("us-east-1", S3ClientConfig(endpoint_url="http://store:9000"), {})


def client_error(code: str | None, status: int, **extra: Any) -> botocore.exceptions.ClientError:
    error: dict[str, Any] = {"Message": "server text", **extra}
    if code:
        error["Code"] = code
    headers = extra.pop("headers", {})
    return botocore.exceptions.ClientError(
        {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers}}, "GetObject"
    )


@pytest.mark.parametrize(
    "error, cls, words",
    [
        (client_error("NoSuchBucket", 404), s3dcp.BucketNotFoundError, "does not exist"),
        (client_error("NoSuchKey", 404), s3dcp.ObjectNotFoundError, "no such object"),
        # a HEAD 404 from S3: no body, so no code; the request id header shows it is S3
        (client_error(None, 404, headers={"x-amz-request-id": "R1"}), s3dcp.ObjectNotFoundError, "no such object"),
        (client_error("AccessDenied", 403), s3dcp.AccessDeniedError, "access was denied"),
        (client_error("ExpiredToken", 400), s3dcp.AccessDeniedError, "expired"),
        (client_error("PermanentRedirect", 301, Region="eu-west-1"), s3dcp.WrongRegionError, "region='eu-west-1'"),
        (client_error("AuthorizationHeaderMalformed", 400, Region="ap-south-1"), s3dcp.WrongRegionError, "ap-south-1"),
        (client_error("InternalError", 500), s3dcp.S3RequestError, "InternalError"),
        (botocore.exceptions.NoCredentialsError(), s3dcp.CredentialsError, "AWS_PROFILE"),
        (
            botocore.exceptions.EndpointConnectionError(endpoint_url="http://store:9000"),
            s3dcp.EndpointError,
            "http://store:9000",
        ),
    ],
)
def test_translation_table(error: BaseException, cls: type, words: str) -> None:
    translated = translate_error(error, "get_object", "bkt", "run/.metadata", SETTINGS)
    assert type(translated) is cls
    assert words in str(translated)
    assert "bkt" in str(translated)


@pytest.mark.parametrize(
    "error, cls",
    [
        # where an answer matches two rows of the table, the first wins
        (client_error("NoSuchBucket", 404, Region="eu-west-1"), s3dcp.BucketNotFoundError),
        (client_error("NoSuchKey", 404, Region="eu-west-1"), s3dcp.WrongRegionError),
        (client_error("AccessDenied", 403, Region="eu-west-1"), s3dcp.WrongRegionError),
        (client_error("RequestTimeTooSkewed", 403), s3dcp.AccessDeniedError),  # a 403, whatever its code
        (client_error("NoSuchUpload", 404), s3dcp.S3RequestError),  # a 404 that names another code
    ],
)
def test_translation_order(error: BaseException, cls: type) -> None:
    assert type(translate_error(error, "get_object", "bkt", "k", SETTINGS)) is cls


def test_auth_errors_do_not_echo_server_text() -> None:
    error = client_error("SignatureDoesNotMatch", 403, StringToSign="AWS4-HMAC secret-ish")
    text = str(translate_error(error, "put_object", "bkt", "k", SETTINGS))
    assert "server text" not in text and "secret-ish" not in text


def test_the_package_is_the_only_public_module() -> None:
    """Everything below the API is private: users import from ``s3dcp`` and nowhere else."""
    import pkgutil

    public = [
        module.name
        for module in pkgutil.walk_packages(s3dcp.__path__, "s3dcp.")
        if not any(part.startswith("_") for part in module.name.split(".")[1:])
    ]
    assert public == []


def test_lazy_exports_resolve_to_their_definitions() -> None:
    for name in s3dcp.__all__:
        value = getattr(s3dcp, name)
        assert getattr(value, "__name__", name) == name, name
