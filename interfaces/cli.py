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
    sub.add_parser("settings", help="show every setting, its value and its RIS_ variable").set_defaults(func=_settings)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"ris: {exc}", file=sys.stderr)
        return 2
