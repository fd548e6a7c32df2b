"""An untrusted TLS certificate is found by the type of the error in the chain, never by its text."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import botocore.exceptions
import pytest
import urllib3.exceptions

from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._errors import EndpointError
from s3dcp._s3.retry import FailureKind, classify, is_untrusted_certificate
from s3dcp._s3.translate import translate_error


def self_signed_server_context(directory: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "untrusted test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


def handshake_failure(directory: Path) -> ssl.SSLError:
    """What ssl raises when a verifying client meets a self-signed server (in memory, no sockets)."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = ssl.create_default_context().wrap_bio(client_in, client_out, server_hostname="127.0.0.1")
    server = self_signed_server_context(directory).wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        for side, _incoming, outgoing, peer_in in (
            (client, client_in, client_out, server_in),
            (server, server_in, server_out, client_in),
        ):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as err:
                if side is client:
                    return err
            peer_in.write(outgoing.read())
    raise AssertionError("the handshake did not fail")


def as_botocore_raises(error: ssl.SSLError) -> botocore.exceptions.SSLError:
    """Wrapped as urllib3 and then botocore wrap it (botocore's httpsession; urllib3's connectionpool)."""
    try:
        try:
            raise error
        except ssl.SSLError as raw:
            raise urllib3.exceptions.SSLError(raw) from None
    except urllib3.exceptions.SSLError as wrapped:
        try:
            raise botocore.exceptions.SSLError(endpoint_url="https://127.0.0.1:1/", error=wrapped)
        except botocore.exceptions.SSLError as outer:
            return outer


def test_a_real_verification_failure_in_botocore_s_chain_is_untrusted_and_not_retried(tmp_path: Path) -> None:
    raw = handshake_failure(tmp_path)
    assert isinstance(raw, ssl.SSLCertVerificationError)
    error = as_botocore_raises(raw)
    assert is_untrusted_certificate(error)
    assert classify(error) is FailureKind.PERMANENT
    settings = resolve_settings("us-east-1", S3ClientConfig(endpoint_url="https://127.0.0.1:1"), {})
    translated = translate_error(error, "put_object", "b", "k", settings)
    assert isinstance(translated, EndpointError) and "AWS_CA_BUNDLE" in str(translated)


@pytest.mark.parametrize(
    "error",
    [
        # the words without the type: not a verification failure
        botocore.exceptions.SSLError(endpoint_url="https://x", error=ssl.SSLError(1, "CERTIFICATE_VERIFY_FAILED")),
        botocore.exceptions.EndpointConnectionError(endpoint_url="https://x/certificate verify failed"),
        ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
        ValueError("certificate verify failed"),
    ],
)
def test_message_text_alone_is_not_an_untrusted_certificate(error: BaseException) -> None:
    assert not is_untrusted_certificate(error)


def test_a_chain_that_loops_is_walked_once() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert not is_untrusted_certificate(first)
