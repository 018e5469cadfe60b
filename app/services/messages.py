"""The inbound message store: raw input kept first, then one final status (Mirth's lifecycle).

:func:`store_received` runs in its own unit of work, committed before the message is applied
or acknowledged, so nothing acknowledged can be lost. :func:`find_original` implements the
duplicate rule: a message with the same sender, control id and content as one already applied or
refused gets that answer again and changes nothing; one answered AE is applied again. A reused control
id with different content is a different message and is processed (BUG-28, corpus adt_a04_v23_mirth_lf).

The content of a message, for this rule, is its segments as the tokenizer splits them (CR, CRLF or LF
terminators, blank segments dropped; trailing empty fields dropped, HL7 v2.5.1 2.5.3: they are the same
as absent ones), without MSH-7. MSH-7 is the time the sender built the message (2.15.9.7); a sender that
resends after a lost ACK may build it anew with a new time but the same control id (MSH-10, 2.15.9.10:
"the number or other identifier that uniquely identifies the message"), and that resend must not be
applied twice. Any other difference (a patient, an order value, a field, a segment) is other content.
:func:`content_digest` computes it; the intake stores it in ``digest`` once the message is tokenized
(before that ``digest`` is the hash of the raw bytes, which is what a message that cannot be
tokenized keeps).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field, fields
from typing import Iterable, Sequence

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

from app.models import InboundMessage, MessageStatus, utcnow
from app.rows import insert_row, read, run

# What a resend gets again instead of being applied: the answer of a message that was applied (AA) or refused
# for what it is (AR). A message answered AE changed nothing and may succeed now (the order it cancels has
# arrived meanwhile, a table was fixed): resending it applies it again (HL7 v2.5.1 2.9.2: AE asks the sender to
# correct or resend).
FINAL = (MessageStatus.PROCESSED, MessageStatus.REJECTED)


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def content_digest(segments: Iterable[Sequence[str]]) -> str:
    """The identity of a message's content (see the module docstring): ``segments`` are the fields of each
    segment, its name first (for MSH: the name, MSH-1, MSH-2...); MSH-7 and trailing empty fields are left
    out."""
    h = hashlib.sha256()
    for segment in segments:
        values = list(segment)
        if values and values[0] == "MSH" and len(values) > 7:
            values[7] = ""
        while values and values[-1] == "":
            values.pop()
        h.update("\x1f".join(values).encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.hexdigest()


def store_received(session: Session, raw: bytes, *, transport: str, peer: str,
                   received_at: dt.datetime | None = None) -> InboundMessage:
    """Add the received bytes as an ORM InboundMessage (flushed: it has its id)."""
    msg = InboundMessage(raw=raw, size=len(raw), digest=digest(raw), transport=transport, peer=peer,
                         status=MessageStatus.RECEIVED, received_at=received_at or utcnow())
    session.add(msg)
    session.flush()
    return msg


@dataclass
class MessageRow:
    """An inbound message as the intake's hot path keeps it (app.rows): the columns of InboundMessage as a
    plain object, inserted by :func:`receive` and written back by :func:`save`. The intake treats it and an
    ORM InboundMessage alike (same attribute names)."""

    id: int
    received_at: dt.datetime
    transport: str
    peer: str
    raw: bytes
    size: int
    digest: str
    status: MessageStatus = MessageStatus.RECEIVED
    sender: str = ""
    control_id: str = ""
    message_type: str = ""
    charset: str = ""
    ack_code: str = ""
    ack: bytes | None = None
    reply: bytes | None = None
    error: str = ""
    warnings: str = ""
    profile: str = ""
    duplicate_of_fk: int | None = None
    batch_fk: int | None = None
    patient_key: str = ""
    accession_number: str = ""
    changes: list = field(default_factory=list)
    attempts: int = 0
    processed_at: dt.datetime | None = None
    duration_ms: float | None = None


_M = InboundMessage.__table__
_FIXED = ("id", "received_at", "transport", "peer", "raw")   # digest is rewritten: the content digest
_WRITTEN = tuple(f.name for f in fields(MessageRow) if f.name not in _FIXED)
_SAVE = update(_M).where(_M.c.id == bindparam("v__id")).values({c: bindparam(f"v_{c}") for c in _WRITTEN})


def receive(session: Session, raw: bytes, *, transport: str, peer: str,
            received_at: dt.datetime | None = None) -> MessageRow:
    """Insert the received bytes (status RECEIVED) with a Core statement; the row as a :class:`MessageRow`."""
    row = MessageRow(0, received_at or utcnow(), transport, peer, raw, len(raw), digest(raw))
    row.id = insert_row(session, _M, {"received_at": row.received_at, "transport": transport, "peer": peer, "raw": raw,
                                      "size": row.size, "digest": row.digest, "status": MessageStatus.RECEIVED},
                        record=False)
    return row


def save(session: Session, row: MessageRow | InboundMessage) -> None:
    """Write back what processing set on ``row`` (an ORM InboundMessage is written by the session's flush)."""
    if isinstance(row, MessageRow):
        run(session, _SAVE, {"v__id": row.id, **{f"v_{c}": getattr(row, c) for c in _WRITTEN}})


_ORIGINAL = (select(_M.c.id, _M.c.ack, _M.c.ack_code, _M.c.reply)
             .where(_M.c.sender == bindparam("sender"), _M.c.control_id == bindparam("control_id"),
                    _M.c.digest == bindparam("digest"), _M.c.id != bindparam("id"),
                    or_(*(_M.c.status == s for s in FINAL)), _M.c.received_at >= bindparam("since"))
             .order_by(_M.c.id).limit(1))


def find_original(session: Session, msg, since: dt.datetime | None = None):
    """The earlier, answered message this one repeats (same sender, control id and content digest), received
    after ``since`` (the duplicate window): a row with its id, ack, ack_code and reply, or None."""
    if not msg.control_id:
        return None
    return read(session, _ORIGINAL, {"sender": msg.sender, "control_id": msg.control_id, "digest": msg.digest,
                                     "id": msg.id, "since": since or dt.datetime(1900, 1, 1)}).first()


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