"""Job functions and the scheduler that runs them in one engine process.

``recover_unfinished_messages`` is Mirth's recovery task: a message whose raw bytes were stored
but that was never answered (the process died between storing and applying it) is applied now,
so nothing acknowledged-or-not is ever left behind. Its ACK cannot reach the old connection;
when the sender resends, the duplicate rule answers with the stored ACK.
"""

from __future__ import annotations

import datetime as dt
import logging

from apscheduler.schedulers.background import BackgroundScheduler

from app.db import unit_of_work
from app.models import utcnow
from app.services.messages import prune, unfinished

log = logging.getLogger("interfaces.scheduler")


def recover_unfinished_messages(session_factory, intake, *, older_than_s: float = 60.0, limit: int = 100) -> int:
    """Apply stored messages left in RECEIVED for longer than ``older_than_s``; returns how many."""
    with unit_of_work(session_factory) as session:
        ids = [m.id for m in unfinished(session, utcnow() - dt.timedelta(seconds=older_than_s), limit)]
    for msg_id in ids:
        log.warning("recovering unfinished message %s", msg_id)
        intake.process(msg_id)
    return len(ids)


def prune_messages(session_factory, retention_days: float) -> int:
    """Delete answered messages older than the retention period (ERROR messages are kept)."""
    if retention_days <= 0:
        return 0
    with unit_of_work(session_factory) as session:
        count = prune(session, utcnow() - dt.timedelta(days=retention_days))
    if count:
        log.info("pruned %d messages older than %s days", count, retention_days)
    return count


def make_scheduler(settings, session_factory, intake) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
    now = dt.datetime.now(dt.timezone.utc)
    scheduler.add_job(recover_unfinished_messages, "interval", seconds=60, args=(session_factory, intake),
                      id="recover_unfinished_messages", next_run_time=now)
    scheduler.add_job(prune_messages, "interval", hours=24, args=(session_factory, settings.message_retention_days),
                      id="prune_messages", next_run_time=now + dt.timedelta(minutes=5))
    return scheduler
