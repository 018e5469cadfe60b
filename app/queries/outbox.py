"""Read model of the outbox for the JSON API and analysts' pages (plain dicts, no web types)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import OutboxMessage
from app.queries.orders import _iso

def _text(data: bytes | None) -> str | None:
    return data.decode("utf-8", errors="replace") if data is not None else None


def outbox_view(row: OutboxMessage, *, detail: bool = False) -> dict:
    view = {
        "id": row.id,
        "destination": row.destination,
        "kind": row.kind,
        "message_id": row.message_id,
        "status": row.status.value,
        "attempts": row.attempts,
        "next_attempt_at": _iso(row.next_attempt_at),
        "last_error": row.last_error,
        "claimed_by": row.claimed_by,
        "claimed_until": _iso(row.claimed_until),
        "order_id": row.order_fk,
        "cause": {"kind": row.cause_kind, "reference": row.cause_reference, "message_id": row.cause_message_fk},
        "created_at": _iso(row.created_at),
        "sent_at": _iso(row.sent_at),
    }
    if detail:
        view.update(payload=row.payload, content=_text(row.rendered), reply=_text(row.reply))
    return view


def search_outbox(session: Session, *, status: str = "", destination: str = "", order_id: int | None = None,
                  limit: int = 100) -> list[dict]:
    """Newest first."""
    q = select(OutboxMessage)
    if status:
        q = q.where(OutboxMessage.status == status)
    if destination:
        q = q.where(OutboxMessage.destination == destination)
    if order_id is not None:
        q = q.where(OutboxMessage.order_fk == order_id)
    return [outbox_view(row) for row in session.scalars(q.order_by(OutboxMessage.id.desc()).limit(limit))]


def get_outbox(session: Session, row_id: int) -> dict | None:
    row = session.get(OutboxMessage, row_id)
    return outbox_view(row, detail=True) if row is not None else None
