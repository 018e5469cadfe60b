"""The ``ris`` command (also ``python -m interfaces``)."""

from __future__ import annotations

import argparse
import sys

from config.logging import setup_logging
from config.settings import SettingsError, describe, load_settings


def _serve(args) -> int:
    from interfaces.runtime import Engine

    settings = load_settings()
    setup_logging(settings.log_level)
    Engine(settings).serve_forever()
    return 0


def _db_upgrade(args) -> int:
    from app.db import make_engine, upgrade

    settings = load_settings()
    setup_logging(settings.log_level)
    engine = make_engine(settings.database)
    upgrade(engine)
    print(f"database at the newest schema: {engine.url.render_as_string(hide_password=True)}")
    return 0


def _send(args) -> int:
    """Send HL7 v2 message files over MLLP and print each ACK (a small MLLP client for people)."""
    from interfaces.mllp.client import MLLPClient, MLLPError

    settings = load_settings()
    host, port = args.host or settings.host, args.port or settings.mllp_port
    worst = 0
    try:
        messages = [(name, open(name, "rb").read()) for name in args.files]
    except OSError as exc:
        print(f"ris send: {exc}", file=sys.stderr)
        return 2
    try:
        with MLLPClient(host, port, timeout=args.timeout) as client:
            for name, payload in messages:
                ack = client.send(payload)
                text = ack.decode("latin-1").replace("\r", "\n").strip()
                print(f"== {name}\n{text}")
                if "MSA|AA" not in text and "MSA|CA" not in text:
                    worst = 1
    except (OSError, MLLPError) as exc:
        print(f"ris send: {host}:{port}: {exc}", file=sys.stderr)
        return 2
    return worst


def _settings(args) -> int:
    settings = load_settings()
    for var, default, doc in describe():
        name = var[4:].lower()
        print(f"{var}={getattr(settings, name)!s}\n    {doc} (default: {default!r})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ris", description="RIS integration engine")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run MLLP, DICOM, HTTP and the scheduler until SIGTERM/SIGINT").set_defaults(func=_serve)
    db = sub.add_parser("db", help="database tasks").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="migrate the database to the newest schema").set_defaults(func=_db_upgrade)
    send = sub.add_parser("send", help="send HL7 v2 message files over MLLP and print the ACKs")
    send.add_argument("files", nargs="+", metavar="FILE")
    send.add_argument("--host", default="", help="default: RIS_HOST")
    send.add_argument("--port", type=int, default=0, help="default: RIS_MLLP_PORT")
    send.add_argument("--timeout", type=float, default=30.0)
    send.set_defaults(func=_send)
    sub.add_parser("settings", help="show every setting, its value and its RIS_ variable").set_defaults(func=_settings)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"ris: {exc}", file=sys.stderr)
        return 2
