"""Procedure tracking from Modality Performed Procedure Steps (DICOM PS3.4 F.7; IHE RAD-6, RAD-7).

N-CREATE starts a Performed Procedure Step "IN PROGRESS" (PS3.4 F.7.2.1.1: any other initial
status is refused); N-SET moves it to "COMPLETED" or "DISCONTINUED", after which it may no longer
be changed (F.7.2.2.2). The scheduled step it performs is found by its SPS ID (with the accession
number when given), else by accession number, else by Study Instance UID; the step, and the order
when all its steps are done, follow the performed step's status. Each change of the order's status
(kind ``order.status``) and each change of a step's status (kind ``step.status``, also when the order's
status stays the same) is reported to the HIS through the outbox (IHE RAD-3), in the same transaction.
The Performed Series Sequence (PS3.3 C.4.17: series, protocol, referenced instances) is recorded as last
sent. A performed step that names no known scheduled step is kept without one and can be linked to a step
later (:func:`link_performed_step`, the reconciliation API), which then applies what it reported.

The requested procedure follows too (app.services.lifecycle): the first performed step puts it
IN_PROGRESS; when all its steps are final it is COMPLETED (at least one completed) or DISCONTINUED.
A performed step for a procedure that was cancelled or discontinued is refused (Conflict naming its
state); nothing of the MPPS is kept. :func:`patient_arrived` applies ADT^A10 (HL7 v2.5.1 3.3.10,
"patient arriving - tracking"): the patient's procedures scheduled on the day of arrival are ARRIVED.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.commands import Cause, PerformedSeriesData, PerformedStepData
from app.errors import Conflict, InvalidInput, NotFound
from app.models import (Order, OrderStatus, PerformedSeries, PerformedStatus, PerformedStep, Patient, ProcedureState,
                        ProcedureStep, RequestedProcedure, StepStatus)
from app.services import lifecycle
from app.services.outbox import order_status_changed, step_status_changed

FINAL_STEP = (StepStatus.COMPLETED, StepStatus.DISCONTINUED, StepStatus.CANCELLED)


def _status(value: str) -> PerformedStatus:
    try:
        return PerformedStatus(value.strip().upper())
    except ValueError:
        raise InvalidInput(f"performed procedure step status {value!r} is not IN PROGRESS, COMPLETED or "
                           "DISCONTINUED", location="performed.status") from None


def find_scheduled_step(session: Session, data: PerformedStepData) -> ProcedureStep | None:
    base = (select(ProcedureStep).join(ProcedureStep.procedure).join(RequestedProcedure.order)
            .order_by(ProcedureStep.id))
    if data.sps_id:
        q = base.where(ProcedureStep.sps_id == data.sps_id)
        if data.accession_number:
            q = q.where(Order.accession_number == data.accession_number)
        step = session.scalars(q).first()
        if step is not None:
            return step
    if data.accession_number:
        q = base.where(Order.accession_number == data.accession_number)
        if data.requested_procedure_id:
            q = q.where(RequestedProcedure.requested_procedure_id == data.requested_procedure_id)
        step = session.scalars(q).first()
        if step is not None:
            return step
    if data.study_instance_uid:
        return session.scalars(base.where(RequestedProcedure.study_instance_uid == data.study_instance_uid)).first()
    return None


def start_performed_step(session: Session, data: PerformedStepData) -> PerformedStep:
    """N-CREATE: record the performed step and put the scheduled step IN_PROGRESS."""
    if not data.sop_instance_uid:
        raise InvalidInput("Affected SOP Instance UID missing", location="performed.sop_instance_uid", missing=True)
    status = _status(data.status)
    if status is not PerformedStatus.IN_PROGRESS:
        raise InvalidInput(f"a performed procedure step must be created IN PROGRESS, not {status.value}",
                           location="performed.status")
    if session.scalars(select(PerformedStep).where(PerformedStep.sop_instance_uid == data.sop_instance_uid)).first():
        raise Conflict(f"performed procedure step {data.sop_instance_uid} already exists",
                       location="performed.sop_instance_uid")
    step = find_scheduled_step(session, data)
    cause = _cause(data)
    proc = step.procedure if step is not None else None
    starts_proc = proc is not None and proc.state not in (ProcedureState.IN_PROGRESS, *lifecycle.PERFORMED)
    if starts_proc:
        lifecycle.check(proc, ProcedureState.IN_PROGRESS, action="start it (MPPS IN PROGRESS)")
    performed = PerformedStep(
        sop_instance_uid=data.sop_instance_uid, status=status, step=step, station_aet=data.station_aet[:16],
        modality=data.modality[:16], study_instance_uid=data.study_instance_uid[:64],
        accession_number=data.accession_number[:16], started_at=data.started_at, patient_id=data.patient_id[:64],
        patient_name=data.patient_name[:324], sps_id=data.sps_id[:64], description=data.description[:64],
    )
    session.add(performed)
    _record_series(performed, data.series)
    if starts_proc:
        lifecycle.transition(session, proc, ProcedureState.IN_PROGRESS, cause)
    if step is not None:
        _start_step(session, step, cause)
    session.flush()
    return performed


def _start_step(session: Session, step: ProcedureStep, cause: Cause) -> None:
    """A performed step started for ``step``: IN_PROGRESS (unless final), and its order too."""
    if step.status in FINAL_STEP:
        return
    set_step_status(session, step, StepStatus.IN_PROGRESS, cause)
    order = step.procedure.order
    if order.status == OrderStatus.SCHEDULED:
        order.status = OrderStatus.IN_PROGRESS
        order_status_changed(session, order, OrderStatus.SCHEDULED, cause, step=step)


def set_step_status(session: Session, step: ProcedureStep, status: StepStatus, cause: Cause) -> None:
    """Change a scheduled step's status and report the change (outbox kind ``step.status``)."""
    previous = step.status
    if previous is status:
        return
    step.status = status
    step_status_changed(session, step, previous, cause)


def _record_series(performed: PerformedStep, series: tuple[PerformedSeriesData, ...] | None) -> None:
    """The Performed Series Sequence (PS3.3 C.4.17) as last sent: N-SET replaces it (F.7.2.2: the SCU sends the
    whole sequence); None (not in the request) keeps what is recorded."""
    if series is None:
        return
    performed.series.clear()
    for item in series:
        performed.series.append(PerformedSeries(
            series_instance_uid=item.series_instance_uid[:64], description=item.description[:64],
            protocol_name=item.protocol_name[:64], retrieve_aet=item.retrieve_aet[:16],
            operator=item.operator[:324], instances=[list(pair) for pair in item.instances]))


def update_performed_step(session: Session, data: PerformedStepData) -> PerformedStep:
    """N-SET: change an IN PROGRESS performed step; COMPLETED/DISCONTINUED are final."""
    performed = session.scalars(
        select(PerformedStep).where(PerformedStep.sop_instance_uid == data.sop_instance_uid)
    ).first()
    if performed is None:
        raise NotFound(f"no performed procedure step {data.sop_instance_uid}", location="performed.sop_instance_uid")
    if performed.status is not PerformedStatus.IN_PROGRESS:
        raise Conflict(f"performed procedure step {data.sop_instance_uid} is {performed.status.value} and may no "
                       "longer be updated", location="performed.status")
    new_status = _status(data.status) if data.status else performed.status
    step = performed.step
    proc = step.procedure if step is not None else None
    ends = new_status is not PerformedStatus.IN_PROGRESS
    if ends and proc is not None and proc.state in lifecycle.CLOSED - {ProcedureState.FINAL}:
        doing = "complete" if new_status is PerformedStatus.COMPLETED else "discontinue"
        lifecycle.check(proc, ProcedureState.COMPLETED, action=f"{doing} it (MPPS {new_status.value})")
    performed.status = new_status
    if data.ended_at is not None:
        performed.ended_at = data.ended_at
    _record_series(performed, data.series)
    if step is not None and ends:
        _end_step(session, step, new_status, _cause(performed))
    session.flush()
    return performed


def _end_step(session: Session, step: ProcedureStep, performed_status: PerformedStatus, cause: Cause) -> None:
    """A performed step of ``step`` ended: COMPLETED or DISCONTINUED (unless final); procedure and order follow."""
    if step.status in FINAL_STEP:
        return
    done = performed_status is PerformedStatus.COMPLETED
    set_step_status(session, step, StepStatus.COMPLETED if done else StepStatus.DISCONTINUED, cause)
    _settle_procedure(session, step.procedure, cause)
    order = step.procedure.order
    previous = order.status
    _settle_order(order)
    order_status_changed(session, order, previous, cause, step=step)


def link_performed_step(session: Session, performed: PerformedStep, step: ProcedureStep, cause: Cause) -> PerformedStep:
    """Reconciliation: attach a performed step recorded without a scheduled step (an MPPS for no worklist item,
    IHE RAD TF-1 "unscheduled" / "abandoned" cases) to ``step``, and apply what it reported as if it had named
    the step: IN PROGRESS starts the step, COMPLETED or DISCONTINUED also ends it. Conflict when it is linked
    already or the step's procedure cannot take it (cancelled, discontinued)."""
    if performed.step is not None:
        raise Conflict(f"performed procedure step {performed.sop_instance_uid} is linked to step "
                       f"{performed.step.sps_id} already", location="performed.sop_instance_uid")
    proc = step.procedure
    starts_proc = proc.state not in (ProcedureState.IN_PROGRESS, *lifecycle.PERFORMED)
    if starts_proc:
        lifecycle.check(proc, ProcedureState.IN_PROGRESS, action="start it (linked MPPS)")
    performed.step = step
    if starts_proc:
        lifecycle.transition(session, proc, ProcedureState.IN_PROGRESS, cause)
    _start_step(session, step, cause)
    if performed.status is not PerformedStatus.IN_PROGRESS:
        _end_step(session, step, performed.status, cause)
    session.flush()
    return performed


def complete_from_images(session: Session, proc: RequestedProcedure, steps: list[ProcedureStep],
                         cause: Cause) -> None:
    """A person linked a study to ``proc`` (reconciliation of images acquired without the worklist, BUG-05):
    the procedure was performed. Its open ``steps`` are COMPLETED, the procedure COMPLETED and the order
    settled, each change reported (outbox), as an MPPS COMPLETED would have done. Conflict, before anything
    changes, when the procedure was cancelled or discontinued."""
    if proc.state not in lifecycle.PERFORMED:
        if proc.state is not ProcedureState.IN_PROGRESS:
            lifecycle.check(proc, ProcedureState.IN_PROGRESS, action="complete it with linked images")
    order = proc.order
    previous_order = order.status
    if proc.state not in (ProcedureState.IN_PROGRESS, *lifecycle.PERFORMED):
        lifecycle.transition(session, proc, ProcedureState.IN_PROGRESS, cause, note="images linked")
    for step in steps:
        if step.status not in FINAL_STEP:
            set_step_status(session, step, StepStatus.COMPLETED, cause)
    if order.status in (OrderStatus.SCHEDULED, OrderStatus.HELD):
        order.status = OrderStatus.IN_PROGRESS
    _settle_procedure(session, proc, cause)
    _settle_order(order)
    order_status_changed(session, order, previous_order, cause, step=steps[0] if steps else None)
    session.flush()


def _settle_procedure(session: Session, proc: RequestedProcedure, cause: Cause) -> None:
    """A procedure IN_PROGRESS whose steps are all final is COMPLETED (any step completed) or DISCONTINUED."""
    if proc.state is not ProcedureState.IN_PROGRESS or not all(s.status in FINAL_STEP for s in proc.steps):
        return
    done = any(s.status is StepStatus.COMPLETED for s in proc.steps)
    lifecycle.transition(session, proc, ProcedureState.COMPLETED if done else ProcedureState.DISCONTINUED, cause)


def patient_arrived(session: Session, patient: Patient, at: dt.datetime | None, cause: Cause) -> list[RequestedProcedure]:
    """ADT^A10 (HL7 v2.5.1 3.3.10): the patient's SCHEDULED procedures with a step on the arrival day (site-local
    ``at``; its date) become ARRIVED, their scheduled steps too (still offered in the worklist). Returns them."""
    if at is None:
        return []
    day = dt.datetime.combine(at.date(), dt.time())
    procs = session.scalars(
        select(RequestedProcedure).join(RequestedProcedure.order).join(RequestedProcedure.steps)
        .where(Order.patient_fk == patient.id, RequestedProcedure.state == ProcedureState.SCHEDULED,
               ProcedureStep.status == StepStatus.SCHEDULED, ProcedureStep.scheduled_start >= day,
               ProcedureStep.scheduled_start < day + dt.timedelta(days=1))
        .order_by(RequestedProcedure.id).distinct()).all()
    for proc in procs:
        lifecycle.transition(session, proc, ProcedureState.ARRIVED, cause, note=f"arrived {at:%Y-%m-%d %H:%M}")
        for step in proc.steps:
            if step.status is StepStatus.SCHEDULED:
                step.status = StepStatus.ARRIVED
    session.flush()
    return list(procs)


def _settle_order(order: Order) -> None:
    """An order whose steps are all final is COMPLETED (if any step completed) or DISCONTINUED."""
    steps = [s for p in order.procedures for s in p.steps]
    if steps and all(s.status in FINAL_STEP for s in steps) and order.status is OrderStatus.IN_PROGRESS:
        done = any(s.status is StepStatus.COMPLETED for s in steps)
        order.status = OrderStatus.COMPLETED if done else OrderStatus.DISCONTINUED


def _cause(performed: PerformedStep | PerformedStepData) -> Cause:
    """The cause recorded with what an MPPS changes: the performed step's SOP Instance UID and station."""
    return Cause("mpps", reference=performed.sop_instance_uid, sender=performed.station_aet)
