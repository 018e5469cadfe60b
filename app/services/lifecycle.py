"""The lifecycle of a requested procedure, from order to signed report: one explicit state, a transition
table, and a history row for every transition with its time and cause.

States (:class:`app.models.ProcedureState`) and what moves a procedure between them:

=============  ================================================================================
ORDERED        the order is placed (ORC-1 NW, IHE RAD TF-2 4.2 RAD-2); no slot yet, or its booking was
               cancelled / the patient did not show
SCHEDULED      its steps have a time and a room (RAD-4 Procedure Scheduled; app.services.scheduling)
ARRIVED        the patient arrived (ADT^A10 "patient arriving - tracking", HL7 v2.5.1 3.3.10)
IN_PROGRESS    a modality started a performed step (MPPS N-CREATE IN PROGRESS, RAD-6)
COMPLETED      every step is done, at least one completed (MPPS N-SET COMPLETED, RAD-7)
PRELIMINARY    a preliminary report is signed (HL7 v2.5.1 7.4.1 ORU^R01, OBR-25 "P", table 0123)
FINAL          the final report is signed (OBR-25 "F"); addenda and amendments keep it FINAL
CANCELLED      cancelled before it was performed (ORC-1 CA)
DISCONTINUED   stopped (ORC-1 DC, or MPPS DISCONTINUED for every step, PS3.4 F.7.2.2)
=============  ================================================================================

Every transition into a state of :data:`REPORTED` writes the feedback to the HIS in the same unit of work
(:func:`report`): this module is the one place that moves a procedure, so it is the one place that reports it.

A transition the table does not allow (completing a cancelled procedure, signing a report twice) raises
:class:`app.errors.Conflict` naming the procedure and its current state, before anything is changed.
Services validate every transition of a unit of work first (:func:`check`) and apply them after
(:func:`transition`), so a refused change leaves nothing half-applied; the caller's transaction is the
final guard (it rolls back on any error).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from app.commands import Cause
from app.errors import Conflict
from app.models import ProcedureState as S
from app.models import ProcedureStep, ProcedureTransition, RequestedProcedure, StepStatus
from app.rows import children_changed, insert_rows
from app.services import outbox

TRANSITIONS: dict[S, frozenset[S]] = {
    # ORDERED -> IN_PROGRESS: a modality performed it without a slot (walk-in, or after a no-show)
    S.ORDERED: frozenset({S.SCHEDULED, S.IN_PROGRESS, S.CANCELLED, S.DISCONTINUED}),
    S.SCHEDULED: frozenset({S.ORDERED, S.ARRIVED, S.IN_PROGRESS, S.CANCELLED, S.DISCONTINUED}),
    S.ARRIVED: frozenset({S.ORDERED, S.IN_PROGRESS, S.CANCELLED, S.DISCONTINUED}),
    S.IN_PROGRESS: frozenset({S.COMPLETED, S.DISCONTINUED}),
    S.COMPLETED: frozenset({S.PRELIMINARY, S.FINAL}),
    S.PRELIMINARY: frozenset({S.FINAL}),
    S.FINAL: frozenset(),
    S.CANCELLED: frozenset(),
    S.DISCONTINUED: frozenset(),
}
CLOSED = frozenset(state for state, targets in TRANSITIONS.items() if not targets)   # FINAL, CANCELLED, DISCONTINUED
# The states the HIS is told of by an order status message (:func:`report`). ORDERED is not one: a procedure
# is ORDERED when the HIS placed it, and back to ORDERED when its booking ends (no-show, cancelled booking), for
# which HL7 table 0038 has no order status. PRELIMINARY and FINAL go out as results (ORU^R01, app.services.reports).
REPORTED = frozenset({S.SCHEDULED, S.ARRIVED, S.IN_PROGRESS, S.COMPLETED, S.CANCELLED, S.DISCONTINUED})
PERFORMED = frozenset({S.COMPLETED, S.PRELIMINARY, S.FINAL})
NOT_STARTED = frozenset({S.ORDERED, S.SCHEDULED, S.ARRIVED})


def allowed(current: S, target: S) -> bool:
    return target in TRANSITIONS[current]


def describe(procedure: RequestedProcedure) -> str:
    order = procedure.order
    accession = f" of order {order.accession_number}" if order is not None and order.accession_number else ""
    return f"procedure {procedure.requested_procedure_id}{accession}"


def check(procedure: RequestedProcedure, target: S, *, action: str = "") -> None:
    """Refuse (Conflict, naming the current state) a transition the table does not allow."""
    order = procedure.order
    check_state(procedure.requested_procedure_id, order.accession_number if order is not None else "",
                procedure.state, target, action=action)


def check_state(requested_procedure_id: str, accession_number: str, current: S, target: S, *,
                action: str = "") -> None:
    """:func:`check` for a procedure known by its identifiers and current state (the Core paths' rows)."""
    if not allowed(current, target):
        doing = action or f"move it to {target.value}"
        accession = f" of order {accession_number}" if accession_number else ""
        raise Conflict(f"procedure {requested_procedure_id}{accession} is {current.value}; cannot {doing}",
                       location="procedure.state")


def check_all(procedures: Iterable[RequestedProcedure], target: S, *, action: str = "") -> None:
    for procedure in procedures:
        check(procedure, target, action=action)


def transition(session: Session, procedure: RequestedProcedure, target: S, cause: Cause, *,
               note: str = "", action: str = "", step: ProcedureStep | None = None) -> ProcedureTransition:
    """Move ``procedure`` to ``target``, record the transition with ``cause`` and report it (:func:`report`);
    Conflict when the table does not allow it. ``step``: the step that caused it (MPPS), named in the report."""
    check(procedure, target, action=action)
    before = procedure.state
    row = _record(procedure, before, target, cause, note)
    procedure.state = target
    session.add(row)
    report(session, procedure, before, cause, step=step)
    return row


def report(session: Session, procedure: RequestedProcedure, before: S | None, cause: Cause, *,
           step: ProcedureStep | None = None) -> list:
    """Feedback to the HIS for a transition (IHE RAD TF-2 4.3, RAD-3 Filler Order Management): one outbox row of
    kind ``order.status`` per destination, in this unit of work, for every :data:`REPORTED` state - a snapshot of
    the order (app.services.outbox.order_snapshot) with ``procedure`` naming the procedure that moved and its
    ``procedure_state`` and ``previous_state``; the adapter writes it as an ORM/OMG with ORC-1 SC and the state's
    ORC-5 (interfaces.hl7.writer). Signed reports are reported as results by app.services.reports (ORU^R01)."""
    if procedure.state not in REPORTED or not outbox.destinations_for(session, outbox.ORDER_STATUS):
        return []
    order = procedure.order
    payload = outbox.order_snapshot(order, None, step)
    payload.update(event="procedure", procedure=procedure.requested_procedure_id,
                   procedure_state=procedure.state.value, previous_state=before.value if before else "")
    return outbox.enqueue(session, outbox.ORDER_STATUS, payload, cause, order=order)


def set_step_status(session: Session, step: ProcedureStep, status: StepStatus, cause: Cause) -> None:
    """Change a scheduled step's status and report the change (outbox kind ``step.status``, for the destinations
    that take it): the one place an ORM change of a step's status is made. (Core writes of step statuses, an
    order's cancellation and the housekeeping jobs' claims, are reported by the order's or procedure's move.)"""
    previous = step.status
    if previous is status:
        return
    step.status = status
    outbox.step_status_changed(session, step, previous, cause)


def begin(session: Session, procedure: RequestedProcedure, cause: Cause) -> ProcedureTransition:
    """Record the start of a new procedure's lifecycle (none -> ORDERED)."""
    procedure.state = S.ORDERED
    row = _record(procedure, None, S.ORDERED, cause, "")
    session.add(row)
    return row


def _values(before: S | None, after: S, cause: Cause, note: str) -> dict:
    return {"from_state": before, "to_state": after, "cause_kind": (cause.kind or "")[:32],
            "cause_reference": (cause.reference or "")[:255], "cause_sender": (cause.sender or "")[:255],
            "cause_message_fk": cause.message_fk, "note": (note or "")[:255]}


def _record(procedure: RequestedProcedure, before: S | None, after: S, cause: Cause, note: str) -> ProcedureTransition:
    row = ProcedureTransition(**_values(before, after, cause, note))
    procedure.transitions.append(row)
    return row


def record(session: Session, procedure_id: int, steps: list[tuple[S | None, S]], cause: Cause, *,
           note: str = "") -> None:
    """Record transitions of the procedure ``procedure_id`` whose state the caller wrote with Core (app.rows):
    ``steps`` are (from, to) pairs already checked against the table, oldest first. The state reached is reported
    as :func:`transition` reports it (the caller expired the procedure's ORM object, app.rows.changed)."""
    insert_rows(session, ProcedureTransition.__table__,
                [{"procedure_fk": procedure_id, **_values(before, after, cause, note)} for before, after in steps])
    children_changed(session, RequestedProcedure, [procedure_id], "transitions")
    before, after = steps[-1]
    if after in REPORTED and outbox.destinations_for(session, outbox.ORDER_STATUS):
        report(session, session.get(RequestedProcedure, procedure_id), before, cause)


def history_view(procedure: RequestedProcedure) -> list[dict]:
    """The procedure's transitions, oldest first, as plain data (for read models): ``at`` in UTC; ``cause`` its
    kind (hl7, mpps, user, job, fhir), reference (control id, SOP Instance UID, user name, job), sender (sender,
    station, role), the stored message's id, and a sentence for people."""
    return [{"from": t.from_state.value if t.from_state else None, "to": t.to_state.value,
             "at": t.at.isoformat() if t.at else None,
             "cause": {"kind": t.cause_kind, "reference": t.cause_reference, "sender": t.cause_sender,
                       "message_id": t.cause_message_fk, "text": cause_text(t)},
             "note": t.note}
            for t in procedure.transitions]


def cause_text(t: ProcedureTransition) -> str:
    kind, ref, sender = t.cause_kind, t.cause_reference, t.cause_sender
    if kind == "hl7":
        stored = f", stored message {t.cause_message_fk}" if t.cause_message_fk else ""
        return f"HL7 message {ref or '(no control id)'} from {sender or 'an unknown sender'}{stored}"
    if kind == "mpps":
        return f"MPPS {ref} from {sender or 'an unknown station'}"
    if kind == "user":
        return f"{ref or 'an anonymous user'}" + (f" ({sender})" if sender else "")
    if kind == "job":
        return f"the {ref} job" + (f": {sender}" if sender else "")
    return " ".join(p for p in (kind, ref, sender) if p)
