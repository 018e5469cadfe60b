"""The outbox: messages to other systems, written in the same transaction as the change they report
(DESIGN.md 3, "Out"; the transactional outbox pattern).

Writing. A service that changes something another system must learn calls :func:`enqueue` (or
:func:`order_status_changed`) with the session of its unit of work: one OutboxMessage per destination
that subscribes to the kind, committed or rolled back together with the change. Which destinations
receive which kinds is configured once per session factory by the composition root
(:func:`route`); a factory without routes writes nothing. The core stores *what* to send (plain domain
data and a kind); rendering it as HL7, FHIR or anything else is the business of an adapter.

Delivering. Any number of dispatchers, in one or several engine processes sharing one database,
call :func:`claim_next` per destination, deliver the claimed row outside any transaction and record
the result with :func:`record_sent` or :func:`record_failure`:

- A destination's rows are delivered one at a time in id order: only the oldest row that is not
  final (SENT or DEAD) may be claimed, so a message never overtakes an earlier one for the same
  destination (and so for the same order or patient).
- The claim is a compare-and-set: ``UPDATE ... SET status=SENDING, claimed_by=me WHERE id=:head AND
  <still claimable>``; of two dispatchers that race for a row exactly one updates it (PostgreSQL
  re-checks the condition on the locked row; SQLite serialises writers). A claim is a lease
  (``claimed_until``): a dispatcher that died mid-send leaves a row that is claimable again when the
  lease ends (at-least-once delivery; the stable ``message_id`` lets the receiver drop the repeat).
- Results are recorded with a compare-and-set on the claim too, so a dispatcher whose lease was
  taken over cannot overwrite the newer attempt's outcome.
- Transient failures back off exponentially (:func:`backoff`) up to a number of attempts, then the
  row is DEAD with the reason; permanent failures are DEAD at once. :func:`retry` puts a DEAD or
  FAILED row back in the queue (manual retry).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from app.commands import Cause
from app.errors import Conflict, NotFound
from app.models import Order, OrderStatus, OutboxMessage, OutboxStatus, ProcedureStep, utcnow

ROUTES_KEY = "ris.outbox.routes"
ORDER_STATUS = "order.status"        # kind: an order's status changed (IHE RAD-3 feedback to the HIS)
STEP_STATUS = "step.status"          # kind: a scheduled procedure step's status changed (MPPS, reconciliation)

# Order statuses that follow from the procedures' lifecycle: each procedure's transition is reported by
# app.services.lifecycle.report, so the order's own change is not reported again (holding and releasing are).
PROCEDURE_REPORTED = (OrderStatus.IN_PROGRESS, OrderStatus.COMPLETED, OrderStatus.CANCELLED, OrderStatus.DISCONTINUED)
FINAL = (OutboxStatus.SENT, OutboxStatus.DEAD)
WAITING = (OutboxStatus.PENDING, OutboxStatus.FAILED)
ERROR_LIMIT = 4000


# Routing ---------------------------------------------------------------------------------------
def route(session_factory: sessionmaker, routes: Mapping[str, Iterable[str]]) -> None:
    """Let every session of ``session_factory`` write ``kind`` rows for the destinations ``routes[kind]``."""
    info = dict(session_factory.kw.get("info") or {})
    info[ROUTES_KEY] = {kind: tuple(dict.fromkeys(names)) for kind, names in routes.items()}
    session_factory.configure(info=info)


def destinations_for(session: Session, kind: str) -> tuple[str, ...]:
    return tuple(session.info.get(ROUTES_KEY, {}).get(kind, ()))


# Writing ---------------------------------------------------------------------------------------
def enqueue(session: Session, kind: str, payload: dict, cause: Cause, *, order: Order | None = None,
            destinations: Sequence[str] | None = None) -> list[OutboxMessage]:
    """Add one PENDING row per destination (default: the routes of ``kind``) to the session's transaction.

    The session is flushed first, so the change that caused the message is written (and its rows
    locked) before the outbox row takes its id: of two transactions changing the same order, the one
    that commits first has the lower outbox id, and the messages go out in that order.
    """
    names = destinations_for(session, kind) if destinations is None else tuple(destinations)
    if not names:
        return []
    session.flush()
    now = utcnow()
    rows = []
    for name in names:
        row = OutboxMessage(destination=name, kind=kind, payload=payload, status=OutboxStatus.PENDING,
                            next_attempt_at=now, order_fk=order.id if order is not None else None,
                            cause_kind=cause.kind[:32], cause_reference=(cause.reference or "")[:255],
                            cause_message_fk=cause.message_fk)
        session.add(row)
        rows.append(row)
    session.flush()
    for row in rows:
        row.message_id = message_id(row.id)
    return rows


def message_id(row_id: int) -> str:
    """The stable id of an outbox row's message (HL7 MSH-10, an idempotency key): same for every attempt."""
    return f"OUT{row_id:09d}"


def order_status_changed(session: Session, order: Order, previous: OrderStatus | None, cause: Cause, *,
                         step: ProcedureStep | None = None) -> list[OutboxMessage]:
    """Report an order's status change (IHE RAD TF-2 RAD-3 Filler Order Management): nothing when unchanged.

    The payload is a snapshot of the order as it is now (identifiers, patient, procedures, steps),
    so the message says what was true when the change happened, however late it is delivered.
    """
    if previous is order.status or order.status in PROCEDURE_REPORTED or not destinations_for(session, ORDER_STATUS):
        return []
    return enqueue(session, ORDER_STATUS, order_snapshot(order, previous, step), cause, order=order)


def step_status_changed(session: Session, step: ProcedureStep, previous, cause: Cause) -> list[OutboxMessage]:
    """Report a procedure step's status change (kind ``step.status``; nothing when unchanged): the order's
    snapshot naming the step, with the step's new and previous status. Every change of every step is
    reported, also when the order's own status stays the same (several steps, IHE RAD-3 "procedure status")."""
    if previous is step.status or not destinations_for(session, STEP_STATUS):
        return []
    order = step.procedure.order
    payload = order_snapshot(order, order.status, step)
    payload["step_status"] = step.status.value
    payload["previous_step_status"] = previous.value if previous is not None else ""
    return enqueue(session, STEP_STATUS, payload, cause, order=order)


def _iso(value: dt.datetime | dt.date | None) -> str:
    return value.isoformat() if value is not None else ""


def order_snapshot(order: Order, previous: OrderStatus | None, step: ProcedureStep | None = None) -> dict:
    patient = order.patient
    return {
        "order_id": order.id,
        "status": order.status.value,
        "previous_status": previous.value if previous is not None else "",
        "changed_at": _iso(utcnow()),
        "placer_order_number": order.placer_order_number,
        "placer_issuer": order.placer_issuer,
        "filler_order_number": order.filler_order_number,
        "accession_number": order.accession_number,
        "priority": order.priority,
        "sender": order.sender,
        "reason": order.reason,
        "patient": {"patient_id": patient.patient_id, "issuer": patient.issuer, "name": patient.name,
                    "birth_date": _iso(patient.birth_date), "sex": patient.sex},
        "step_id": step.sps_id if step is not None else "",
        "procedures": [
            {"requested_procedure_id": proc.requested_procedure_id, "study_instance_uid": proc.study_instance_uid,
             "code_value": proc.code_value, "code_scheme": proc.code_scheme, "code_meaning": proc.code_meaning,
             "description": proc.description,
             "steps": [{"sps_id": s.sps_id, "modality": s.modality, "status": s.status.value,
                        "scheduled_start": _iso(s.scheduled_start)} for s in proc.steps]}
            for proc in order.procedures
        ],
    }


# Delivering ------------------------------------------------------------------------------------
def backoff(attempts: int, base_s: float, cap_s: float) -> dt.timedelta:
    """Delay before the next attempt after ``attempts`` failed ones: base * 2^(attempts-1), at most ``cap_s``."""
    exponent = min(max(attempts - 1, 0), 32)
    return dt.timedelta(seconds=min(base_s * (2 ** exponent), cap_s))


def _claimable(now: dt.datetime):
    return or_(and_(OutboxMessage.status.in_(WAITING), OutboxMessage.next_attempt_at <= now),
               and_(OutboxMessage.status == OutboxStatus.SENDING, OutboxMessage.claimed_until < now))


def claim_next(session: Session, destination: str, worker: str, *, lease_s: float,
               now: dt.datetime | None = None) -> OutboxMessage | None:
    """Claim the oldest unfinished row of ``destination`` if it is due; None when there is none or it is not due.

    The row is SENDING, claimed by ``worker`` until now + ``lease_s``, with one more attempt counted.
    Commit the session to make the claim visible before delivering.
    """
    now = now or utcnow()
    head_id = session.scalars(
        select(OutboxMessage.id)
        .where(OutboxMessage.destination == destination, OutboxMessage.status.notin_(FINAL))
        .order_by(OutboxMessage.id).limit(1)
    ).first()
    if head_id is None:
        return None
    earlier = aliased(OutboxMessage)
    result = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == head_id, _claimable(now),
               ~exists().where(earlier.destination == destination, earlier.id < head_id,
                               earlier.status.notin_(FINAL)))
        .values(status=OutboxStatus.SENDING, claimed_by=worker, claimed_until=now + dt.timedelta(seconds=lease_s),
                attempts=OutboxMessage.attempts + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    row = session.get(OutboxMessage, head_id, populate_existing=True)
    return row


def _finish(session: Session, row_id: int, worker: str, values: dict) -> bool:
    result = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == row_id, OutboxMessage.status == OutboxStatus.SENDING,
               OutboxMessage.claimed_by == worker)
        .values(claimed_by="", claimed_until=None, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def record_sent(session: Session, row_id: int, worker: str, *, reply: bytes | None = None,
                now: dt.datetime | None = None) -> bool:
    """The destination accepted the row: SENT (final). False when ``worker`` no longer holds the claim."""
    now = now or utcnow()
    return _finish(session, row_id, worker, {"status": OutboxStatus.SENT, "sent_at": now, "reply": reply,
                                              "last_error": "", "updated_at": now})


def record_failure(session: Session, row_id: int, worker: str, reason: str, *, permanent: bool,
                   max_attempts: int, backoff_s: float, backoff_max_s: float, reply: bytes | None = None,
                   now: dt.datetime | None = None) -> OutboxStatus | None:
    """Record a failed attempt: DEAD when ``permanent`` or out of attempts, else FAILED with a backed-off
    ``next_attempt_at``. Returns the new status, or None when ``worker`` no longer holds the claim."""
    now = now or utcnow()
    attempts = session.scalar(select(OutboxMessage.attempts).where(OutboxMessage.id == row_id)) or 0
    if permanent:
        status, error = OutboxStatus.DEAD, reason
    elif attempts >= max_attempts:
        status, error = OutboxStatus.DEAD, f"gave up after {attempts} attempts; last: {reason}"
    else:
        status, error = OutboxStatus.FAILED, reason
    values = {"status": status, "last_error": error[:ERROR_LIMIT], "reply": reply, "updated_at": now}
    if status is OutboxStatus.FAILED:
        values["next_attempt_at"] = now + backoff(attempts, backoff_s, backoff_max_s)
    return status if _finish(session, row_id, worker, values) else None


def retry(session: Session, row_id: int, *, now: dt.datetime | None = None) -> OutboxMessage:
    """Put a DEAD or FAILED row back in its queue, due now, with a fresh budget of attempts (manual retry).

    The row keeps its place (its id) and its ``message_id``; it is rendered again at its next attempt
    (a fixed mapping takes effect). A SENT row, or one being sent, cannot be retried.
    """
    row = session.get(OutboxMessage, row_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no outbox message {row_id}", location="outbox_id")
    if row.status not in (OutboxStatus.DEAD, OutboxStatus.FAILED):
        raise Conflict(f"outbox message {row_id} is {row.status.value}; only DEAD or FAILED messages can be "
                       "retried", location="status")
    row.status = OutboxStatus.PENDING
    row.attempts = 0
    row.next_attempt_at = now or utcnow()
    row.rendered = None
    session.flush()
    return row
