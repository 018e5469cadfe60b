"""The audit trail: every view of a patient's data and every change by a person (who, when, what, from where).

Changes that arrive as messages are recorded with the message itself (InboundMessage.changes, its sender
and peer); this trail records what people do through the web pages, the APIs and the command line.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import AuditEvent

ACTIONS = ("view", "search", "change", "login", "login-failed", "logout", "denied")


def record(session: Session, action: str, *, username: str = "", role: str = "", entity: str = "",
           entity_id: object = "", patient_key: str = "", detail: str = "", source: str = "",
           channel: str = "web") -> AuditEvent:
    """Add one event to the caller's unit of work (the caller commits)."""
    event = AuditEvent(action=action, username=username[:64], role=role[:24], entity=entity[:32],
                       entity_id=str(entity_id)[:64], patient_key=(patient_key or "")[:64], detail=detail,
                       source=source[:128], channel=channel[:16])
    session.add(event)
    return event


def event_view(event: AuditEvent) -> dict:
    return {"id": event.id, "at": event.at.isoformat(), "username": event.username, "role": event.role,
            "action": event.action, "entity": event.entity, "entity_id": event.entity_id,
            "patient_key": event.patient_key, "detail": event.detail, "source": event.source,
            "channel": event.channel}


def search(session: Session, *, username: str = "", action: str = "", patient_key: str = "",
           since: dt.datetime | None = None, until: dt.datetime | None = None, limit: int = 200) -> list[dict]:
    """Events matching every given criterion, newest first."""
    q = select(AuditEvent)
    if username:
        q = q.where(AuditEvent.username == username)
    if action:
        q = q.where(AuditEvent.action == action)
    if patient_key:
        q = q.where(AuditEvent.patient_key == patient_key)
    if since is not None:
        q = q.where(AuditEvent.at >= since)
    if until is not None:
        q = q.where(AuditEvent.at < until)
    return [event_view(e) for e in session.scalars(q.order_by(AuditEvent.id.desc()).limit(limit))]


def failed_logins(session: Session, username: str, since: dt.datetime) -> int:
    """How often signing in as ``username`` failed since ``since`` (for slowing down password guessing)."""
    return session.scalar(select(func.count(AuditEvent.id)).where(
        AuditEvent.action == "login-failed", func.lower(AuditEvent.username) == username.strip().lower(),
        AuditEvent.at >= since)) or 0
