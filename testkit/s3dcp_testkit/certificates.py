"""A throw-away CA and a server certificate for 127.0.0.1 and localhost, made with ``openssl``.

The extensions are the ones strict verifiers (Python 3.13's default
context, for one) insist on, so clients need nothing but the CA file
(``AWS_CA_BUNDLE``). A client that was not given the CA refuses the server.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificate:
    """Files written by :func:`make_certificate`."""

    ca: Path  # the CA certificate clients trust
    cert: Path  # the server's certificate, signed by the CA
    key: Path  # the server's private key


def make_certificate(directory: Path, days: int = 30, timeout: float = 60.0) -> Certificate:
    """Write a new CA and a server certificate for 127.0.0.1 / localhost signed by it into ``directory``.

    Needs the ``openssl`` command; raises RuntimeError without it, and
    ``subprocess.CalledProcessError`` if a step fails.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("a throw-away certificate needs the openssl command (Debian: apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key, key, request, cert = (
        directory / name for name in ("ca.pem", "ca.key", "server.key", "server.csr", "server.pem")
    )
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
        [
            "req",
            "-x509",
            *new_key,
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-days",
            days,
            "-subj",
            "/CN=s3dcp throw-away test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        ["req", "-new", *new_key, "-keyout", key, "-out", request, "-subj", "/CN=localhost"],
        [
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-set_serial",
            uuid.uuid4().int >> 1,
            "-days",
            days,
            "-extfile",
            extensions,
            "-out",
            cert,
        ],
    ):
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=timeout)
    return Certificate(ca, cert, key)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context that presents ``cert``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    return context
