"""The inbound message store: raw input kept first, then one final status (Mirth's lifecycle).

:func:`store_received` runs in its own unit of work, committed before the message is applied
or acknowledged, so nothing acknowledged can be lost. :func:`find_original` implements the
duplicate rule: a message with the same sender, control id and content (digest of the bytes) as
one already applied or refused gets that answer again and changes nothing; one answered AE is applied again. A reused control id with
different content is a different message and is processed (BUG-28, corpus adt_a04_v23_mirth_lf).
"""

from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.models import InboundMessage, MessageStatus, utcnow

# What a resend gets again instead of being applied: the answer of a message that was applied (AA) or refused
# for what it is (AR). A message answered AE changed nothing and may succeed now (the order it cancels has
# arrived meanwhile, a table was fixed): resending it applies it again (HL7 v2.5.1 2.9.2: AE asks the sender to
# correct or resend).
FINAL = (MessageStatus.PROCESSED, MessageStatus.REJECTED)


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def store_received(session: Session, raw: bytes, *, transport: str, peer: str,
                   received_at: dt.datetime | None = None) -> InboundMessage:
    msg = InboundMessage(raw=raw, size=len(raw), digest=digest(raw), transport=transport, peer=peer,
                         status=MessageStatus.RECEIVED, received_at=received_at or utcnow())
    session.add(msg)
    session.flush()
    return msg


def find_original(session: Session, msg: InboundMessage, since: dt.datetime | None = None) -> InboundMessage | None:
    """The earlier, answered message this one repeats (same sender, control id and bytes),
    received after ``since`` (the duplicate window)."""
    if not msg.control_id:
        return None
    q = (select(InboundMessage)
         .where(InboundMessage.sender == msg.sender, InboundMessage.control_id == msg.control_id,
                InboundMessage.digest == msg.digest, InboundMessage.id != msg.id,
                InboundMessage.status.in_(FINAL)))
    if since is not None:
        q = q.where(InboundMessage.received_at >= since)
    return session.scalars(q.order_by(InboundMessage.id)).first()


def batch_children(session: Session, parent: InboundMessage) -> list[InboundMessage]:
    return list(session.scalars(
        select(InboundMessage).where(InboundMessage.batch_fk == parent.id).order_by(InboundMessage.id)))


def finish(msg: InboundMessage, status: MessageStatus, *, ack: bytes | None, ack_code: str,
           error: str = "", warnings: list[str] | tuple[str, ...] = (), changes: list | None = None) -> None:
    msg.status = status
    msg.ack = ack
    msg.ack_code = ack_code
    msg.error = error[:4000]
    msg.warnings = "\n".join(warnings)[:4000]
    msg.changes = changes or []
    msg.attempts = (msg.attempts or 0) + 1
    msg.processed_at = utcnow()


def _claimable(now: dt.datetime):
    return or_(InboundMessage.claimed_until.is_(None), InboundMessage.claimed_until < now)


def unfinished(session: Session, older_than: dt.datetime, limit: int = 100, *,
               now: dt.datetime | None = None) -> list[InboundMessage]:
    """Messages stored but never answered (the process died between store and apply), oldest first; one that a
    recovery job has claimed is left out until its claim runs out."""
    return list(session.scalars(
        select(InboundMessage)
        .where(InboundMessage.status == MessageStatus.RECEIVED, InboundMessage.received_at < older_than,
               _claimable(now or utcnow()))
        .order_by(InboundMessage.id).limit(limit)
    ))


def claim(session: Session, msg_id: int, worker: str, *, lease_s: float, now: dt.datetime | None = None) -> bool:
    """Take the unfinished message ``msg_id`` on, for ``worker``, for ``lease_s`` seconds: True for exactly one of
    any number of workers that race for it (a compare-and-set, ``UPDATE ... WHERE status = RECEIVED AND the claim
    ran out``: PostgreSQL re-checks the condition on the locked row, SQLite serialises writers; the pattern
    Healthchecks uses to let several ``sendalerts`` processes share one database). Commit before applying it."""
    now = now or utcnow()
    result = session.execute(
        update(InboundMessage)
        .where(InboundMessage.id == msg_id, InboundMessage.status == MessageStatus.RECEIVED, _claimable(now))
        .values(claimed_by=worker[:128], claimed_until=now + dt.timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False))
    return result.rowcount == 1


PRUNABLE = (MessageStatus.PROCESSED, MessageStatus.DUPLICATE, MessageStatus.REJECTED)


def prune(session: Session, older_than: dt.datetime, *, include_errors: bool = False) -> int:
    """Delete answered messages received before ``older_than``; ERROR ones only when asked.

    Orders keep their data; their link to the source message is cleared by the foreign key
    (ON DELETE SET NULL) or here, for databases that do not enforce it.
    """
    from sqlalchemy import delete

    from app.models import Order

    statuses = PRUNABLE + ((MessageStatus.ERROR,) if include_errors else ())
    doomed = (select(InboundMessage.id)
              .where(InboundMessage.received_at < older_than, InboundMessage.status.in_(statuses),
                     InboundMessage.batch_fk.is_(None)))
    ids = list(session.scalars(doomed))
    total = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        session.execute(update(Order).where(Order.source_message_fk.in_(chunk)).values(source_message_fk=None))
        session.execute(update(InboundMessage).where(InboundMessage.duplicate_of_fk.in_(chunk))
                        .values(duplicate_of_fk=None))
        session.execute(delete(InboundMessage).where(InboundMessage.batch_fk.in_(chunk)))
        total += session.execute(delete(InboundMessage).where(InboundMessage.id.in_(chunk))).rowcount
    return total