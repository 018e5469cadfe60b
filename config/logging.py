"""Logging set-up for every engine process: one line per event, to stderr."""

from __future__ import annotations

import logging


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Chatty libraries: pynetdicom logs every PDU at INFO, alembic its plugins at every start, APScheduler
    # every job run; keep them to warnings unless asked.
    if level.upper() != "DEBUG":
        for name in ("pynetdicom", "alembic", "apscheduler"):
            logging.getLogger(name).setLevel(logging.WARNING)
