"""Job functions and the scheduler that runs them in one engine process.

Every job that changes something claims its work first (a compare-and-set on the row, or a unique row), so any
number of engine processes sharing one database may run the same jobs: recovery of unfinished messages, outbox
dispatch, no-show marking, stale worklist housekeeping, daily statistics (the retention job's deletes are idempotent).

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
from sqlalchemy.exc import IntegrityError

from app import db
from app.db import unit_of_work
from app.models import InboundMessage, MessageStatus, utcnow
from app.services import scheduling, statistics, tracking
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


def mark_no_shows(session_factory, settings, *, now: dt.datetime | None = None) -> int:
    """The no-show rule (app.services.tracking.mark_no_shows): a SCHEDULED procedure whose patient has not arrived
    RIS_NOSHOW_AFTER_MINUTES after its time is a no-show. Each procedure is claimed by a compare-and-set on its
    steps' status, so engines sharing one database mark each once. Returns how many this run marked."""
    if settings.noshow_after_minutes <= 0:
        return 0
    with unit_of_work(session_factory) as session:
        marked = tracking.mark_no_shows(session, after_minutes=settings.noshow_after_minutes,
                                        now=now or scheduling.local_now(session))
    if marked:
        log.info("no-show: %d procedures back to ORDERED (%s)", len(marked), ", ".join(map(str, marked)))
    return len(marked)


def discontinue_stale_steps(session_factory, settings, *, now: dt.datetime | None = None) -> int:
    """Stale worklist housekeeping (app.services.tracking.discontinue_stale_steps) with the delays per status of
    RIS_WORKLIST_STALE_HOURS; each step is claimed by a compare-and-set on its status. Returns how many."""
    table = settings.worklist_stale_after
    if not table:
        return 0
    with unit_of_work(session_factory) as session:
        done = tracking.discontinue_stale_steps(session, stale_after=table, now=now or scheduling.local_now(session))
    if done:
        log.info("stale worklist: %d steps discontinued", len(done))
    return len(done)


def compute_daily_statistics(session_factory, *, worker: str | None = None, today: dt.date | None = None,
                             days_back: int = 7) -> list[dt.date]:
    """Keep the figures of each of the last ``days_back`` site-local days that has none yet (app.services.statistics;
    today is not over, so it is not computed). A day is claimed by its unique row: of two engines, the one whose
    insert fails leaves it to the other. Returns the days this run kept."""
    worker = worker or worker_name()
    if today is None:
        with unit_of_work(session_factory) as session:
            today = scheduling.local_now(session).date()
    kept = []
    for back in range(days_back, 0, -1):
        day = today - dt.timedelta(days=back)
        try:
            with unit_of_work(session_factory) as session:
                if statistics.record_day(session, day, worker) is not None:
                    kept.append(day)
        except IntegrityError:
            log.info("daily statistics of %s: kept by another engine", day)
    return kept


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
    scheduler.add_job(mark_no_shows, "interval", minutes=5, args=(session_factory, settings),
                      id="mark_no_shows", next_run_time=now + dt.timedelta(minutes=1))
    scheduler.add_job(discontinue_stale_steps, "interval", hours=1, args=(session_factory, settings),
                      id="discontinue_stale_steps", next_run_time=now + dt.timedelta(minutes=3))
    scheduler.add_job(compute_daily_statistics, "interval", hours=1, args=(session_factory,),
                      id="compute_daily_statistics", next_run_time=now + dt.timedelta(minutes=4))
    if dispatcher is not None:
        scheduler.add_job(dispatch_outbox, "interval", seconds=settings.outbox_poll_seconds, args=(dispatcher,),
                          id="dispatch_outbox", next_run_time=now)
    return scheduler
