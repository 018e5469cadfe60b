"""The whole engine with MLLP over TLS from settings (RIS_MLLP_TLS_CERT/KEY/CA)."""

from __future__ import annotations

import dataclasses
import ssl

import pytest

from interfaces.mllp.client import MLLPClient, MLLPError
from interfaces.runtime import Engine
from tests.mllp.test_tls import certificate  # noqa: F401  (fixture)
from tests.test_intake import adt


def client_context(cert) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return context


def test_engine_serves_mllp_over_tls_and_refuses_plain_text(settings, certificate):  # noqa: F811
    cert, key = certificate
    engine = Engine(dataclasses.replace(settings, mllp_tls_cert=str(cert), mllp_tls_key=str(key),
                                        scheduler_enabled=False))
    engine.start()
    try:
        with MLLPClient("127.0.0.1", engine.mllp.port, timeout=10, ssl_context=client_context(cert)) as client:
            assert b"MSA|AA|T1" in client.send(adt("A04", "T1"))
        with pytest.raises((MLLPError, OSError)):
            with MLLPClient("127.0.0.1", engine.mllp.port, timeout=5) as plain:
                plain.send(adt("A04", "T2"))
    finally:
        engine.stop()


def test_mutual_tls_requires_a_client_certificate(settings, certificate):  # noqa: F811
    cert, key = certificate
    engine = Engine(dataclasses.replace(settings, mllp_tls_cert=str(cert), mllp_tls_key=str(key),
                                        mllp_tls_ca=str(cert), scheduler_enabled=False))
    engine.start()
    try:
        with pytest.raises((MLLPError, OSError)):
            with MLLPClient("127.0.0.1", engine.mllp.port, timeout=5, ssl_context=client_context(cert)) as anon:
                anon.send(adt("A04", "M1"))
        with_cert = client_context(cert)
        with_cert.load_cert_chain(str(cert), str(key))
        with MLLPClient("127.0.0.1", engine.mllp.port, timeout=10, ssl_context=with_cert) as client:
            assert b"MSA|AA|M2" in client.send(adt("A04", "M2"))
    finally:
        engine.stop()


def test_unusable_certificate_is_a_clear_settings_error(settings, tmp_path):
    from config.settings import SettingsError

    bad = tmp_path / "nope.pem"
    bad.write_text("not a certificate")
    with pytest.raises(SettingsError, match="cannot be used"):
        Engine(dataclasses.replace(settings, mllp_tls_cert=str(bad), scheduler_enabled=False))
