"""The inbound message store: raw input kept first, then one final status (Mirth's lifecycle).

:func:`store_received` runs in its own unit of work, committed before the message is applied
or acknowledged, so nothing acknowledged can be lost. :func:`find_original` implements the
duplicate rule: a message with the same sender, control id and content (digest of the bytes) as
one already answered gets that answer again and changes nothing. A reused control id with
different content is a different message and is processed (BUG-28, corpus adt_a04_v23_mirth_lf).
"""

from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import InboundMessage, MessageStatus, utcnow

ANSWERED = (MessageStatus.PROCESSED, MessageStatus.ERROR, MessageStatus.REJECTED)


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def store_received(session: Session, raw: bytes, *, transport: str, peer: str,
                   received_at: dt.datetime | None = None) -> InboundMessage:
    msg = InboundMessage(raw=raw, size=len(raw), digest=digest(raw), transport=transport, peer=peer,
                         status=MessageStatus.RECEIVED, received_at=received_at or utcnow())
    session.add(msg)
    session.flush()
    return msg


def find_original(session: Session, msg: InboundMessage) -> InboundMessage | None:
    """The earlier, answered message this one repeats (same sender, control id and bytes)."""
    if not msg.control_id:
        return None
    return session.scalars(
        select(InboundMessage)
        .where(InboundMessage.sender == msg.sender, InboundMessage.control_id == msg.control_id,
               InboundMessage.digest == msg.digest, InboundMessage.id != msg.id,
               InboundMessage.status.in_(ANSWERED))
        .order_by(InboundMessage.id)
    ).first()


def finish(msg: InboundMessage, status: MessageStatus, *, ack: bytes | None, ack_code: str,
           error: str = "", warnings: list[str] | tuple[str, ...] = ()) -> None:
    msg.status = status
    msg.ack = ack
    msg.ack_code = ack_code
    msg.error = error[:4000]
    msg.warnings = "\n".join(warnings)[:4000]
    msg.processed_at = utcnow()


def unfinished(session: Session, older_than: dt.datetime, limit: int = 100) -> list[InboundMessage]:
    """Messages stored but never answered (the process died between store and apply)."""
    return list(session.scalars(
        select(InboundMessage)
        .where(InboundMessage.status == MessageStatus.RECEIVED, InboundMessage.received_at < older_than)
        .order_by(InboundMessage.id).limit(limit)
    ))
