"""The department's daily figures (app.models.DailyStatistics): computed once per site-local day, after it ended.

A day is the site's calendar day (RIS_SITE_TIMEZONE; app.services.scheduling.site_zone). The figures come from
what the engine recorded, so they can be computed again at any time with the same result:

- ``procedures``: lifecycle transitions of the day by the state entered (ordered, scheduled, arrived, in_progress,
  completed, preliminary, final, cancelled, discontinued) and ``no_shows`` (SCHEDULED/ARRIVED -> ORDERED by the
  no-show rule or a user);
- ``completed_by_modality``: procedures completed that day, by the modality of their first step;
- ``report_turnaround_minutes``: for procedures whose final report was signed that day, the median and the
  longest time from completion to the final report;
- ``messages``: inbound messages received that day by status; ``outbox``: outbound messages sent and dead-lettered
  that day; ``archive``: studies and instances first stored that day.

Claiming: the row's ``day`` is unique. Of two engines computing the same day, the second one's insert fails
(IntegrityError; on PostgreSQL it waits for the first to commit) and it leaves the day to the first.
"""

from __future__ import annotations

import datetime as dt
import statistics as stats

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import (DailyStatistics, InboundMessage, Instance, OutboxMessage, OutboxStatus, ProcedureState,
                        ProcedureStep, ProcedureTransition, Study)
from app.services.scheduling import site_zone


def utc_bounds(session: Session, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """The site-local ``day`` as naive UTC [start, end) (the zone of the session; DST days are 23 or 25 hours)."""
    zone = site_zone(session)
    start = dt.datetime.combine(day, dt.time(), tzinfo=zone).astimezone(dt.timezone.utc).replace(tzinfo=None)
    end = (dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone)
           .astimezone(dt.timezone.utc).replace(tzinfo=None))
    return start, end


def compute_day(session: Session, day: dt.date) -> dict:
    """The figures of ``day`` (see the module's docstring); nothing is written."""
    start, end = utc_bounds(session, day)
    in_day = (ProcedureTransition.at >= start, ProcedureTransition.at < end)
    entered = dict(session.execute(select(ProcedureTransition.to_state, func.count())
                                   .where(*in_day).group_by(ProcedureTransition.to_state)).all())
    no_shows = session.scalar(select(func.count()).where(
        *in_day, ProcedureTransition.to_state == ProcedureState.ORDERED,
        ProcedureTransition.from_state.in_((ProcedureState.SCHEDULED, ProcedureState.ARRIVED)),
        ProcedureTransition.note.like("no-show%")))
    first_step = (select(ProcedureStep.procedure_fk, func.min(ProcedureStep.id).label("step_id"))
                  .group_by(ProcedureStep.procedure_fk).subquery())
    by_modality = dict(session.execute(
        select(ProcedureStep.modality, func.count())
        .join(first_step, first_step.c.step_id == ProcedureStep.id)
        .join(ProcedureTransition, ProcedureTransition.procedure_fk == first_step.c.procedure_fk)
        .where(*in_day, ProcedureTransition.to_state == ProcedureState.COMPLETED)
        .group_by(ProcedureStep.modality)).all())
    turnaround = _turnaround(session, start, end)
    messages = dict(session.execute(select(InboundMessage.status, func.count())
                                    .where(InboundMessage.received_at >= start, InboundMessage.received_at < end)
                                    .group_by(InboundMessage.status)).all())
    sent = session.scalar(select(func.count()).where(OutboxMessage.status == OutboxStatus.SENT,
                                                     OutboxMessage.sent_at >= start, OutboxMessage.sent_at < end))
    dead = session.scalar(select(func.count()).where(OutboxMessage.status == OutboxStatus.DEAD,
                                                     OutboxMessage.updated_at >= start, OutboxMessage.updated_at < end))
    return {
        "day": day.isoformat(),
        "procedures": {state.value.lower(): int(entered.get(state, 0)) for state in ProcedureState},
        "no_shows": int(no_shows or 0),
        "completed_by_modality": {m or "": int(n) for m, n in sorted(by_modality.items(), key=lambda i: i[0] or "")},
        "report_turnaround_minutes": turnaround,
        "messages": {status.value.lower(): int(n) for status, n in sorted(messages.items(), key=lambda i: i[0].value)},
        "outbox": {"sent": int(sent or 0), "dead": int(dead or 0)},
        "archive": {
            "studies": int(session.scalar(select(func.count()).where(Study.created_at >= start,
                                                                     Study.created_at < end)) or 0),
            "instances": int(session.scalar(select(func.count()).where(Instance.created_at >= start,
                                                                       Instance.created_at < end)) or 0),
        },
    }


def _turnaround(session: Session, start: dt.datetime, end: dt.datetime) -> dict:
    finals = session.execute(select(ProcedureTransition.procedure_fk, ProcedureTransition.at).where(
        ProcedureTransition.at >= start, ProcedureTransition.at < end,
        ProcedureTransition.to_state == ProcedureState.FINAL)).all()
    minutes = []
    for procedure_fk, signed in finals:
        completed = session.scalar(select(func.max(ProcedureTransition.at)).where(
            ProcedureTransition.procedure_fk == procedure_fk, ProcedureTransition.to_state == ProcedureState.COMPLETED))
        if completed is not None:
            minutes.append(round((signed - completed).total_seconds() / 60, 1))
    if not minutes:
        return {"count": 0, "median": None, "longest": None}
    return {"count": len(minutes), "median": stats.median(minutes), "longest": max(minutes)}


def record_day(session: Session, day: dt.date, worker: str) -> DailyStatistics | None:
    """Compute and keep the figures of ``day`` unless they are kept already (None then). The insert is flushed here:
    IntegrityError means another engine kept the same day first (the caller rolls back and leaves it)."""
    if session.scalar(select(DailyStatistics.id).where(DailyStatistics.day == day)) is not None:
        return None
    row = DailyStatistics(day=day, figures=compute_day(session, day), computed_by=worker[:128])
    session.add(row)
    session.flush()
    return row
