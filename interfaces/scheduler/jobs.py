"""Job functions and the scheduler that runs them in one engine process.

``recover_unfinished_messages`` is Mirth's recovery task: a message whose raw bytes were stored
but that was never answered (the process died between storing and applying it) is applied now,
so nothing acknowledged-or-not is ever left behind. Its ACK cannot reach the old connection;
when the sender resends, the duplicate rule answers with the stored ACK.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
import uuid

from apscheduler.schedulers.background import BackgroundScheduler

from app import db
from app.db import unit_of_work
from app.models import InboundMessage, MessageStatus, utcnow
from app.services.messages import claim, finish, prune, unfinished

log = logging.getLogger("interfaces.scheduler")


def worker_name() -> str:
    """This process's name in the claims of its jobs: host, process id and a random part."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def recover_unfinished_messages(session_factory, intake, *, older_than_s: float = 60.0, limit: int = 100,
                                worker: str | None = None, lease_s: float = 600.0) -> int:
    """Apply stored messages left in RECEIVED for longer than ``older_than_s``; returns how many this call applied.

    Each message is claimed first (app.services.messages.claim, a compare-and-set committed before it is applied),
    so of several engines sharing one database exactly one applies it; a claim lasts ``lease_s`` seconds, after which
    a message whose recoverer died is taken on again. Only HL7 v2 messages go to the HL7 intake. A FHIR request left
    RECEIVED changed nothing (its change and its status commit together, interfaces.fhir.inbound) and its client had
    no answer: it is marked ERROR."""
    worker = worker or worker_name()
    with unit_of_work(session_factory) as session:
        candidates = [(m.id, m.transport) for m in
                      unfinished(session, utcnow() - dt.timedelta(seconds=older_than_s), limit)]
    recovered = 0
    for msg_id, transport in candidates:
        with unit_of_work(session_factory) as session:
            if not claim(session, msg_id, worker, lease_s=lease_s):
                continue   # another engine took it
            if transport == "fhir":
                finish(session.get(InboundMessage, msg_id), MessageStatus.ERROR, ack=None, ack_code="AE",
                       error="the engine stopped before answering this FHIR request; nothing of it was applied")
                continue
        log.warning("recovering unfinished message %s", msg_id)
        intake.process(msg_id)
        recovered += 1
    return recovered


def prune_messages(session_factory, retention_days: float) -> int:
    """Delete answered messages older than the retention period (ERROR messages are kept)."""
    if retention_days <= 0:
        return 0
    with unit_of_work(session_factory) as session:
        count = prune(session, utcnow() - dt.timedelta(days=retention_days))
    if count:
        log.info("pruned %d messages older than %s days", count, retention_days)
    return count


def refresh_statistics(session_factory) -> None:
    """Fresh planner statistics for SQLite (app.db.refresh_statistics), so that worklist queries stay indexed
    as the database grows."""
    started = time.perf_counter()
    db.refresh_statistics(session_factory.kw["bind"])
    log.debug("database statistics refreshed in %.0f ms", (time.perf_counter() - started) * 1000)


def dispatch_outbox(dispatcher) -> int:
    """Deliver the outbox rows that are due (interfaces.outbound.dispatcher); returns how many were finished."""
    return sum(dispatcher.run_once().values())


def make_scheduler(settings, session_factory, intake, dispatcher=None) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
    now = dt.datetime.now(dt.timezone.utc)
    scheduler.add_job(recover_unfinished_messages, "interval", seconds=60, args=(session_factory, intake),
                      id="recover_unfinished_messages", next_run_time=now)
    scheduler.add_job(prune_messages, "interval", hours=24, args=(session_factory, settings.message_retention_days),
                      id="prune_messages", next_run_time=now + dt.timedelta(minutes=5))
    scheduler.add_job(refresh_statistics, "interval", minutes=10, args=(session_factory,),
                      id="refresh_statistics", next_run_time=now + dt.timedelta(minutes=2))
    if dispatcher is not None:
        scheduler.add_job(dispatch_outbox, "interval", seconds=settings.outbox_poll_seconds, args=(dispatcher,),
                          id="dispatch_outbox", next_run_time=now)
    return scheduler
