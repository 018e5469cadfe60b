"""MLLP over TLS with a self-signed certificate made for the test: round trip, silent clients, failed handshakes."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from interfaces.mllp import MLLPClient, MLLPConnectionClosed

from .conftest import wait_until

HOST = "127.0.0.1"


def _make_cert_with_cryptography(cert: Path, key: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))


def _make_cert_with_openssl(cert: Path, key: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", f"subjectAltName=DNS:localhost,IP:{HOST}"],
        check=True, capture_output=True, timeout=60,
    )


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available to make a certificate")
        _make_cert_with_openssl(cert, key)
    else:
        _make_cert_with_cryptography(cert, key)
    return cert, key


@pytest.fixture
def server_context(certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def client_context(certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))  # verifies the chain and the IP SAN


def test_tls_round_trip_on_a_persistent_connection(make_server, server_context, client_context):
    server = make_server(ssl_context=server_context)
    with MLLPClient(HOST, server.port, timeout=5, ssl_context=client_context) as client:
        assert client._sock.version() is not None
        for i in range(20):
            assert client.send(b"MSH|tls|%d" % i) == b"ACK:MSH|tls|%d" % i
    assert server.stats.connections == 1 and server.stats.frames == 20


def test_silent_client_does_not_block_a_second_tls_client(make_server, server_context, client_context):
    server = make_server(ssl_context=server_context, tls_handshake_timeout=0.5)
    with socket.create_connection((HOST, server.port), timeout=5) as silent:
        assert wait_until(lambda: server.stats.active == 1)  # accepted, handshake pending
        with MLLPClient(HOST, server.port, timeout=5, ssl_context=client_context) as client:
            assert client.send(b"MSH|second") == b"ACK:MSH|second"
        assert silent.recv(1024) == b""  # the handshake timeout closed it
    assert wait_until(lambda: server.stats.tls_failures == 1)


def test_plaintext_client_fails_and_server_keeps_serving(make_server, server_context, client_context):
    server = make_server(ssl_context=server_context)
    with pytest.raises(MLLPConnectionClosed), MLLPClient(HOST, server.port, timeout=5) as plain:
        plain.send(b"MSH|plain")
    assert wait_until(lambda: server.stats.tls_failures == 1)
    with MLLPClient(HOST, server.port, timeout=5, ssl_context=client_context) as client:
        assert client.send(b"MSH|ok") == b"ACK:MSH|ok"
    assert server.stats.frames == 1


def test_stop_with_a_handshake_pending_returns_promptly(make_server, server_context, client_context):
    server = make_server(ssl_context=server_context)  # default 30 s handshake timeout
    with socket.create_connection((HOST, server.port), timeout=5) as silent:
        assert wait_until(lambda: server.stats.active == 1)
        with MLLPClient(HOST, server.port, timeout=5, ssl_context=client_context) as client:
            assert client.send(b"MSH|1") == b"ACK:MSH|1"
            t0 = time.monotonic()
            server.stop(timeout=2)
            assert time.monotonic() - t0 < 2 + 2
        assert silent.recv(1024) == b""
