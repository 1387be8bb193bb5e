"""The validating admission webhook: ``kubectl apply`` of an invalid object fails at once.

kopf serves it (``kopf.WebhookServer``, HTTPS) and, with ``--webhook-configuration``, keeps the
``ValidatingWebhookConfiguration`` and its CA bundle up to date. This module gives it:

- :func:`validate`: the data plane's own parsers on the object (the same verdict the status would
  give, as ``InvalidSpec``), raised as :class:`kopf.AdmissionError` with the field's path;
- :func:`server`: the server, with a certificate from ``--webhook-cert-dir`` (``tls.crt`` and
  ``tls.key``, re-read when they change, e.g. from cert-manager) or, without one, a self-signed
  certificate made at start with ``cryptography`` (kopf's own generator needs ``certbuilder`` and
  ``oscrypto``, which do not work with OpenSSL 3). A self-signed certificate is its own CA bundle.

The webhook's ``failurePolicy`` is ``Ignore``: while the operator is down objects are still
admitted, and still judged in their status when it is back — an invalid object never reaches the
data plane either way.
"""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any

import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authz import configuration
from authz_operator import build

__all__ = ["self_signed", "server", "validate"]


def validate(body: Mapping[str, Any]) -> None:
    """Raise :class:`kopf.AdmissionError` (422) with the data plane's message if ``body`` is invalid."""
    problem = build.invalid(dict(body))
    if problem:
        raise kopf.AdmissionError(problem, code=422)


def server(settings: configuration.OperatorSettings) -> kopf.WebhookServer:
    host, _, port = settings.webhook_listen.rpartition(":")
    address = host.strip("[]")
    name = settings.webhook_host or None
    if settings.webhook_cert_dir is not None:
        certfile, keyfile = settings.webhook_cert_dir / "tls.crt", settings.webhook_cert_dir / "tls.key"
    else:
        certfile, keyfile = self_signed(
            [n for n in (name, address, "localhost") if n], pathlib.Path(tempfile.mkdtemp())
        )
    return kopf.WebhookServer(
        addr=address, port=int(port) or None, host=name, certfile=str(certfile), pkeyfile=str(keyfile)
    )


def self_signed(names: list[str], directory: pathlib.Path, days: int = 365) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed P-256 certificate for ``names`` (DNS names or IP addresses) in ``directory``
    (``tls.crt``, ``tls.key`` readable by the owner only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    alternatives: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    now = datetime.datetime.now(tz=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    certfile, keyfile = directory / "tls.crt", directory / "tls.key"
    keyfile.touch(mode=0o600)
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return certfile, keyfile
