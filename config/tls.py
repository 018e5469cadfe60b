"""TLS server contexts from settings (certificate, key, optional CA for client certificates)."""

from __future__ import annotations

import ssl

from config.settings import SettingsError


def server_context(cert: str, key: str, ca: str = "") -> ssl.SSLContext | None:
    """A TLS 1.2+ server context, or None when no certificate is configured.

    With ``ca`` set, clients must present a certificate signed by it (mutual TLS).
    """
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key or None)
        if ca:
            context.load_verify_locations(ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"TLS certificate {cert!r} / key {key!r} / CA {ca!r} cannot be used: {exc}") from None
    return context
