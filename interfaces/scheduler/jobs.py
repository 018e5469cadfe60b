"""Job functions and the scheduler that runs them in one engine process.

``recover_unfinished_messages`` is Mirth's recovery task: a message whose raw bytes were stored
but that was never answered (the process died between storing and applying it) is applied now,
so nothing acknowledged-or-not is ever left behind. Its ACK cannot reach the old connection;
when the sender resends, the duplicate rule answers with the stored ACK.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from apscheduler.schedulers.background import BackgroundScheduler

from app import db
from app.db import unit_of_work
from app.models import MessageStatus, utcnow
from app.services.messages import finish, prune, unfinished

log = logging.getLogger("interfaces.scheduler")


def recover_unfinished_messages(session_factory, intake, *, older_than_s: float = 60.0, limit: int = 100) -> int:
    """Apply stored messages left in RECEIVED for longer than ``older_than_s``; returns how many.

    Only HL7 v2 messages go to the HL7 intake. A FHIR request left RECEIVED changed nothing (its change and
    its status commit together, interfaces.fhir.inbound) and its client had no answer: it is marked ERROR."""
    with unit_of_work(session_factory) as session:
        stale = unfinished(session, utcnow() - dt.timedelta(seconds=older_than_s), limit)
        ids = [m.id for m in stale if m.transport != "fhir"]
        for m in stale:
            if m.transport == "fhir":
                finish(m, MessageStatus.ERROR, ack=None, ack_code="AE",
                       error="the engine stopped before answering this FHIR request; nothing of it was applied")
    for msg_id in ids:
        log.warning("recovering unfinished message %s", msg_id)
        intake.process(msg_id)
    return len(ids)


def prune_messages(session_factory, retention_days: float, include_errors: bool = False) -> int:
    """Delete answered messages older than the retention period; ERROR messages (never applied) only with
    ``include_errors`` (RIS_MESSAGE_RETENTION_INCLUDE_ERRORS, ``ris messages prune --include-errors``)."""
    if retention_days <= 0:
        return 0
    with unit_of_work(session_factory) as session:
        count = prune(session, utcnow() - dt.timedelta(days=retention_days), include_errors=include_errors)
    if count:
        log.info("pruned %d messages older than %s days%s", count, retention_days,
                 " (errors included)" if include_errors else "")
    return count


def refresh_statistics(session_factory) -> None:
    """Fresh planner statistics for SQLite when they are missing or stale (app.db.refresh_statistics), so that
    worklist queries stay indexed as the database grows; checked every minute."""
    started = time.perf_counter()
    if db.refresh_statistics(session_factory.kw["bind"]):
        log.debug("database statistics refreshed in %.0f ms", (time.perf_counter() - started) * 1000)


def dispatch_outbox(dispatcher) -> int:
    """Deliver the outbox rows that are due (interfaces.outbound.dispatcher); returns how many were finished."""
    return sum(dispatcher.run_once().values())


def make_scheduler(settings, session_factory, intake, dispatcher=None) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
    now = dt.datetime.now(dt.timezone.utc)
    scheduler.add_job(recover_unfinished_messages, "interval", seconds=60, args=(session_factory, intake),
                      id="recover_unfinished_messages", next_run_time=now)
    scheduler.add_job(prune_messages, "interval", hours=24,
                      args=(session_factory, settings.message_retention_days,
                            settings.message_retention_include_errors),
                      id="prune_messages", next_run_time=now + dt.timedelta(minutes=5))
    scheduler.add_job(refresh_statistics, "interval", minutes=1, args=(session_factory,),
                      id="refresh_statistics", next_run_time=now + dt.timedelta(seconds=30))
    if dispatcher is not None:
        scheduler.add_job(dispatch_outbox, "interval", seconds=settings.outbox_poll_seconds, args=(dispatcher,),
                          id="dispatch_outbox", next_run_time=now)
    return scheduler
