"""TLS with a CA made in the test: trusted clients connect, plaintext and other-CA clients
cannot, and the bearer token rides inside TLS without ever reaching a log."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dynams_service.client import SelectorClient, SelectorError, Status
from dynams_service.service.server import TLSFiles

_KEY_USAGE = {"content_commitment": False, "key_encipherment": False,
              "data_encipherment": False, "key_agreement": False, "encipher_only": False,
              "decipher_only": False}


@dataclass(frozen=True)
class PKI:
    """PEM files: the CA that signed the server's certificate, an unrelated CA, the server's."""

    ca: Path
    other_ca: Path
    server: TLSFiles


def _name(common_name: str) -> x509.Name:
    """An X.509 name holding only a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    """Valid from a few minutes ago (clock skew) for one day."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1))


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign leaf certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _validity(x509.CertificateBuilder()).subject_name(_name(common_name)).issuer_name(
        _name(common_name)).public_key(key.public_key()).serial_number(
        x509.random_serial_number())
    cert = (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, **_KEY_USAGE), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
                      ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate for 127.0.0.1 and localhost, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _validity(x509.CertificateBuilder()).subject_name(
        _name("dynams-selector")).issuer_name(ca_cert.subject).public_key(
        key.public_key()).serial_number(x509.random_serial_number())
    cert = (builder
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, **_KEY_USAGE), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    """Write a certificate as PEM."""
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA, a server certificate it signed, and a second CA that signed nothing here."""
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _make_ca("dynams test CA")
    _, other_cert = _make_ca("some other CA")
    server_key, server_cert = _make_server_cert(ca_key, ca_cert)
    key_path = root / "server.key"
    key_path.write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_path.chmod(0o600)
    return PKI(ca=_write_cert(root / "ca.pem", ca_cert),
               other_ca=_write_cert(root / "other-ca.pem", other_cert),
               server=TLSFiles(cert=_write_cert(root / "server.pem", server_cert), key=key_path))


def _code(call) -> SelectorError:
    """The SelectorError a call raises."""
    with pytest.raises(SelectorError) as info:
        call()
    return info.value


def test_a_client_trusting_the_ca_connects(local_server_factory, pki: PKI) -> None:
    """A TLS client with the CA's certificate lists jobs; reads work over TLS."""
    server = local_server_factory(tls=pki.server)
    with SelectorClient(server.address, tls_ca=pki.ca, retries=0, timeout=30) as client:
        assert client.list_jobs() == []
        assert _code(lambda: client.get_job("nope")).status == Status.NOT_FOUND


def test_plaintext_and_untrusted_clients_cannot_connect(local_server_factory, pki: PKI) -> None:
    """A plaintext client and a client trusting another CA fail the handshake: UNAVAILABLE."""
    server = local_server_factory(tls=pki.server)
    with SelectorClient(server.address, retries=0, timeout=10) as plaintext:
        assert _code(plaintext.list_jobs).status == Status.UNAVAILABLE
    with SelectorClient(server.address, tls_ca=pki.other_ca, retries=0, timeout=10) as other:
        assert _code(other.list_jobs).status == Status.UNAVAILABLE
    with SelectorClient(server.address, tls_ca=pki.ca, retries=0, timeout=30) as trusted:
        assert trusted.list_jobs() == []  # the failed handshakes left the server serving


def test_token_over_tls_is_checked_and_never_logged(local_server_factory, pki: PKI,
                                                    caplog: pytest.LogCaptureFixture,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    """TLS + bearer token: a wrong or missing token is UNAUTHENTICATED; no token in any log."""
    token = "tls-s3cret-" + secrets.token_hex(16)
    wrong = token[:-1] + ("0" if token[-1] != "0" else "1")  # a near miss, e.g. a typo
    caplog.set_level(logging.DEBUG)
    server = local_server_factory(tls=pki.server, token=token)
    with SelectorClient(server.address, tls_ca=pki.ca, token=wrong, retries=0,
                        timeout=30) as client:
        for call in (client.list_jobs, lambda: client.get_job("x"),
                     lambda: client.push_weights("x", 1, 1, []),
                     lambda: client.get_selection("x", 1, 0, 1)):
            error = _code(call)
            assert error.status == Status.UNAUTHENTICATED
            assert token not in error.details and wrong not in error.details
    with SelectorClient(server.address, tls_ca=pki.ca, retries=0, timeout=30) as anonymous:
        assert _code(anonymous.list_jobs).status == Status.UNAUTHENTICATED
    for ca in (None, pki.other_ca):  # the right token over a connection that never forms
        with SelectorClient(server.address, tls_ca=ca, token=token, retries=0,
                            timeout=10) as client:
            assert _code(client.list_jobs).status == Status.UNAVAILABLE
    with SelectorClient(server.address, tls_ca=pki.ca, token=token, retries=0,
                        timeout=30) as good:
        assert good.list_jobs() == []
    assert caplog.records, "expected the server's own log records (e.g. where it listens)"
    for record in caplog.records:
        text = " ".join([record.getMessage(), repr(record.args), record.exc_text or ""])
        for secret in (token, wrong):
            assert secret not in text, f"token logged by {record.name}: {record.getMessage()}"
    captured = capfd.readouterr()
    for secret in (token, wrong):
        assert secret not in captured.out and secret not in captured.err
