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

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.commands import Cause, PerformedSeriesData, PerformedStepData
from app.errors import Conflict, InvalidInput, NotFound
from app.models import (AppointmentStatus, LinkStatus, Order, OrderStatus, PerformedSeries, PerformedStatus,
                        PerformedStep, Patient, ProcedureState, ProcedureStep, RequestedProcedure, StepStatus, Study,
                        utcnow)
from app.services import lifecycle, scheduling

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
    if step is not None:
        _start_step(session, step, cause)
    if starts_proc:   # after the step, so the report (app.services.lifecycle) shows it started
        lifecycle.transition(session, proc, ProcedureState.IN_PROGRESS, cause, step=step)
    session.flush()
    return performed


def _start_step(session: Session, step: ProcedureStep, cause: Cause) -> None:
    """A performed step started for ``step``: IN_PROGRESS (unless final), and its order too."""
    if step.status in FINAL_STEP:
        return
    lifecycle.set_step_status(session, step, StepStatus.IN_PROGRESS, cause)
    order = step.procedure.order
    if order.status == OrderStatus.SCHEDULED:
        order.status = OrderStatus.IN_PROGRESS   # reported with the procedure's move (app.services.lifecycle)


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
    lifecycle.set_step_status(session, step, StepStatus.COMPLETED if done else StepStatus.DISCONTINUED, cause)
    _settle_order(step.procedure.order)
    _settle_procedure(session, step.procedure, cause, step=step)


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
    _start_step(session, step, cause)
    if starts_proc:
        lifecycle.transition(session, proc, ProcedureState.IN_PROGRESS, cause, step=step)
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
    if proc.state not in (ProcedureState.IN_PROGRESS, *lifecycle.PERFORMED):
        lifecycle.transition(session, proc, ProcedureState.IN_PROGRESS, cause, note="images linked")
    for step in steps:
        if step.status not in FINAL_STEP:
            lifecycle.set_step_status(session, step, StepStatus.COMPLETED, cause)
    if order.status in (OrderStatus.SCHEDULED, OrderStatus.HELD):
        order.status = OrderStatus.IN_PROGRESS
    _settle_order(order)
    _settle_procedure(session, proc, cause, step=steps[0] if steps else None)
    session.flush()


def _settle_procedure(session: Session, proc: RequestedProcedure, cause: Cause, *,
                      step: ProcedureStep | None = None) -> None:
    """A procedure IN_PROGRESS whose steps are all final is COMPLETED (any step completed) or DISCONTINUED."""
    if proc.state is not ProcedureState.IN_PROGRESS or not all(s.status in FINAL_STEP for s in proc.steps):
        return
    done = any(s.status is StepStatus.COMPLETED for s in proc.steps)
    lifecycle.transition(session, proc, ProcedureState.COMPLETED if done else ProcedureState.DISCONTINUED, cause,
                         step=step)


def patient_arrived(session: Session, patient: Patient, at: dt.datetime | None, cause: Cause) -> list[RequestedProcedure]:
    """ADT^A10 (HL7 v2.5.1 3.3.10): the patient's SCHEDULED procedures with a step on the arrival day (site-local
    ``at``; its date) become ARRIVED, their scheduled steps too (still offered in the worklist). Returns them."""
    if at is None:
        return []
    day = dt.datetime.combine(at.date(), dt.time())
    due = (select(RequestedProcedure.id).join(RequestedProcedure.order).join(RequestedProcedure.steps)
           .where(Order.patient_fk == patient.id, RequestedProcedure.state == ProcedureState.SCHEDULED,
                  ProcedureStep.status == StepStatus.SCHEDULED, ProcedureStep.scheduled_start >= day,
                  ProcedureStep.scheduled_start < day + dt.timedelta(days=1)))
    # by key: SELECT DISTINCT over the whole row fails on PostgreSQL (json has no equality: fhir_elements)
    procs = session.scalars(select(RequestedProcedure).where(RequestedProcedure.id.in_(due))
                            .order_by(RequestedProcedure.id)).all()
    for proc in procs:
        arrive(session, proc, cause, note=f"arrived {at:%Y-%m-%d %H:%M}")
    session.flush()
    return list(procs)


# What people do (the board, the API) and what the jobs do --------------------------------------
def find_procedure(session: Session, procedure_id: int) -> RequestedProcedure:
    proc = session.get(RequestedProcedure, procedure_id)
    if proc is None:
        raise NotFound(f"no requested procedure {procedure_id}", location="procedure_id")
    return proc


OPEN_STEPS = (StepStatus.SCHEDULED, StepStatus.ARRIVED, StepStatus.READY)


def arrive(session: Session, proc: RequestedProcedure, cause: Cause, *, note: str = "") -> RequestedProcedure:
    """The patient is here: SCHEDULED -> ARRIVED; its scheduled steps ARRIVED (still in the worklist)."""
    lifecycle.check(proc, ProcedureState.ARRIVED, action="mark the patient arrived")
    for step in proc.steps:
        if step.status is StepStatus.SCHEDULED:
            lifecycle.set_step_status(session, step, StepStatus.ARRIVED, cause)
    lifecycle.transition(session, proc, ProcedureState.ARRIVED, cause, note=note)
    session.flush()
    return proc


def no_show(session: Session, proc: RequestedProcedure, cause: Cause, *, note: str = "no-show") -> RequestedProcedure:
    """The patient did not come: SCHEDULED or ARRIVED -> ORDERED (waiting for a new slot); its open steps are
    UNSCHEDULED (no longer in the worklist) and its bookings NOSHOW (the slots are free again)."""
    if proc.state not in (ProcedureState.SCHEDULED, ProcedureState.ARRIVED):
        raise Conflict(f"{lifecycle.describe(proc)} is {proc.state.value}; cannot mark it a no-show (only a "
                       "SCHEDULED or ARRIVED procedure can be)", location="procedure.state")
    for step in proc.steps:
        if step.status in OPEN_STEPS:
            lifecycle.set_step_status(session, step, StepStatus.UNSCHEDULED, cause)
    scheduling.release_bookings(session, proc.order, steps=proc.steps, status=AppointmentStatus.NOSHOW)
    lifecycle.transition(session, proc, ProcedureState.ORDERED, cause, note=note)
    session.flush()
    return proc


def start(session: Session, proc: RequestedProcedure, cause: Cause) -> RequestedProcedure:
    """A person starts the procedure (a modality without MPPS): -> IN_PROGRESS, its open steps IN_PROGRESS, the
    order IN_PROGRESS."""
    lifecycle.check(proc, ProcedureState.IN_PROGRESS, action="start it")
    for step in proc.steps:
        if step.status in OPEN_STEPS:
            lifecycle.set_step_status(session, step, StepStatus.IN_PROGRESS, cause)
    if proc.order.status is OrderStatus.SCHEDULED:
        proc.order.status = OrderStatus.IN_PROGRESS
    lifecycle.transition(session, proc, ProcedureState.IN_PROGRESS, cause)
    session.flush()
    return proc


def complete(session: Session, proc: RequestedProcedure, cause: Cause) -> RequestedProcedure:
    """A person completes a procedure in progress (a modality without MPPS): its steps in progress COMPLETED, the
    procedure COMPLETED, the order COMPLETED once all its steps are done."""
    if proc.state is not ProcedureState.IN_PROGRESS:
        raise Conflict(f"{lifecycle.describe(proc)} is {proc.state.value}; cannot complete it (only a procedure IN "
                       "PROGRESS can be)", location="procedure.state")
    for step in proc.steps:
        if step.status in (StepStatus.IN_PROGRESS, StepStatus.STARTED, *OPEN_STEPS):
            lifecycle.set_step_status(session, step, StepStatus.COMPLETED, cause)
    _settle_order(proc.order)
    _settle_procedure(session, proc, cause)
    session.flush()
    return proc


def _utc(session: Session, local: dt.datetime) -> dt.datetime:
    """A site-local naive time as the naive UTC of the ``created``/``updated`` columns."""
    return local.replace(tzinfo=scheduling.site_zone(session)).astimezone(dt.timezone.utc).replace(tzinfo=None)


def _imaged_procedures():
    """The procedures of orders with a linked study: images say the patient came and was examined (a modality
    without MPPS), so neither a no-show nor stale; a person completes them (reconciliation)."""
    return (select(RequestedProcedure.id).join(Study, Study.order_fk == RequestedProcedure.order_fk)
            .where(Study.link_status == LinkStatus.LINKED))


def mark_no_shows(session: Session, *, after_minutes: float, now: dt.datetime, limit: int = 200) -> list[int]:
    """The no-show rule (a scheduled job): a SCHEDULED procedure none of whose steps started, whose first step's
    time is more than ``after_minutes`` before ``now`` (site-local), and that has been in the worklist that long
    (an order that arrives after its time - a walk-in entered late, a backlog - gets the same grace), is a no-show;
    never one with linked images. Each is claimed first - its open steps go from SCHEDULED to UNSCHEDULED by a
    compare-and-set on their status, so of two engines sharing one database exactly one marks it. Returns the
    procedure ids marked."""
    due = now - dt.timedelta(minutes=after_minutes)
    first = (select(ProcedureStep.procedure_fk, func.min(ProcedureStep.scheduled_start).label("first"),
                    func.max(ProcedureStep.updated_at).label("touched"))
             .group_by(ProcedureStep.procedure_fk).subquery())
    ids = list(session.scalars(
        select(RequestedProcedure.id).join(first, first.c.procedure_fk == RequestedProcedure.id)
        .where(RequestedProcedure.state == ProcedureState.SCHEDULED, first.c.first < due,
               first.c.touched < _utc(session, due), RequestedProcedure.id.notin_(_imaged_procedures()))
        .order_by(RequestedProcedure.id).limit(limit)))
    marked = []
    cause = Cause("job", reference="no-show", sender=f"{after_minutes:g} minutes after the scheduled time")
    for proc_id in ids:
        if not _claim_steps(session, proc_id, (StepStatus.SCHEDULED,), StepStatus.UNSCHEDULED):
            continue
        proc = session.get(RequestedProcedure, proc_id, populate_existing=True)
        if proc.state is not ProcedureState.SCHEDULED:
            continue
        scheduling.release_bookings(session, proc.order, steps=proc.steps, status=AppointmentStatus.NOSHOW)
        lifecycle.transition(session, proc, ProcedureState.ORDERED, cause,
                             note=f"no-show: not arrived {after_minutes:g} minutes after the scheduled time")
        marked.append(proc_id)
    session.flush()
    return marked


def discontinue_stale_steps(session: Session, *, stale_after: dict[str, float], now: dt.datetime,
                            limit: int = 200) -> list[int]:
    """Stale worklist housekeeping (a scheduled job): a step left in a status of ``stale_after`` (status -> hours)
    for longer than its delay, after its scheduled time (site-local ``now``) and since its last change (an order
    that arrives long after its time stays that long too), is DISCONTINUED and leaves the worklist - never a step of
    an order with linked images;
    a procedure whose steps are then all final is DISCONTINUED (COMPLETED when one was completed), an order whose
    procedures are all closed likewise. Each step is claimed by a compare-and-set on its status. Returns the step
    ids discontinued."""
    done = []
    for status_name, hours in sorted(stale_after.items()):
        try:
            status = StepStatus(status_name)
        except ValueError:
            raise InvalidInput(f"stale worklist housekeeping: {status_name!r} is not a step status",
                               location="worklist_stale_hours") from None
        since = now - dt.timedelta(hours=hours)
        ids = list(session.scalars(
            select(ProcedureStep.id).where(ProcedureStep.status == status, ProcedureStep.scheduled_start < since,
                                           ProcedureStep.updated_at < _utc(session, since),   # left that long
                                           ProcedureStep.procedure_fk.notin_(_imaged_procedures()))
            .order_by(ProcedureStep.id).limit(limit)))
        for step_id in ids:
            claimed = session.execute(
                update(ProcedureStep).where(ProcedureStep.id == step_id, ProcedureStep.status == status)
                .values(status=StepStatus.DISCONTINUED, updated_at=utcnow())
                .execution_options(synchronize_session=False)).rowcount == 1
            if not claimed:
                continue
            step = session.get(ProcedureStep, step_id, populate_existing=True)
            proc = step.procedure
            session.refresh(proc)
            cause = Cause("job", reference="stale-worklist",
                          sender=f"{status.value} for {hours:g} hours after the scheduled time")
            if all(s.status in FINAL_STEP for s in proc.steps) and proc.state not in lifecycle.CLOSED | lifecycle.PERFORMED:
                target = (ProcedureState.COMPLETED if any(s.status is StepStatus.COMPLETED for s in proc.steps)
                          and proc.state is ProcedureState.IN_PROGRESS else ProcedureState.DISCONTINUED)
                _close_order(proc.order)
                lifecycle.transition(session, proc, target, cause,
                                     note=f"stale in the worklist: {status.value} since {step.scheduled_start:%Y-%m-%d %H:%M}")
            done.append(step_id)
    session.flush()
    return done


def _claim_steps(session: Session, proc_id: int, statuses, to: StepStatus) -> bool:
    """Move every step of the procedure in ``statuses`` to ``to`` with one compare-and-set; True when this session
    moved at least one (so it owns the procedure's change)."""
    result = session.execute(
        update(ProcedureStep).where(ProcedureStep.procedure_fk == proc_id, ProcedureStep.status.in_(statuses))
        .values(status=to, updated_at=utcnow()).execution_options(synchronize_session=False))
    return result.rowcount > 0


def _close_order(order: Order) -> None:
    """An order whose procedures' steps are all final is COMPLETED (one completed) or DISCONTINUED."""
    steps = [s for p in order.procedures for s in p.steps]
    if steps and all(s.status in FINAL_STEP for s in steps) and order.status not in (
            OrderStatus.COMPLETED, OrderStatus.CANCELLED, OrderStatus.DISCONTINUED):
        order.status = (OrderStatus.COMPLETED if any(s.status is StepStatus.COMPLETED for s in steps)
                        else OrderStatus.DISCONTINUED)


def _settle_order(order: Order) -> None:
    """An order whose steps are all final is COMPLETED (if any step completed) or DISCONTINUED."""
    steps = [s for p in order.procedures for s in p.steps]
    if steps and all(s.status in FINAL_STEP for s in steps) and order.status is OrderStatus.IN_PROGRESS:
        done = any(s.status is StepStatus.COMPLETED for s in steps)
        order.status = OrderStatus.COMPLETED if done else OrderStatus.DISCONTINUED


def _cause(performed: PerformedStep | PerformedStepData) -> Cause:
    """The cause recorded with what an MPPS changes: the performed step's SOP Instance UID and station."""
    return Cause("mpps", reference=performed.sop_instance_uid, sender=performed.station_aet)
