"""Order management as the Order Filler / Department System Scheduler (IHE RAD-2, RAD-4).

An order placed by the HIS becomes an Order with its Requested Procedures and Scheduled
Procedure Steps; the worklist (app.queries.worklist) reads those steps. Identifiers the order
did not carry are assigned here, by the policy of IHE RAD TF-2 4.4.4.1.2 (the Order Filler
assigns the Accession Number and the Study Instance UID): accession ``<prefix><order number>``,
Requested Procedure ID and SPS ID default to the accession, and the Study Instance UID is derived
from the accession, so it is the same if the order is sent again (BUG-03).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.services import lifecycle, scheduling

from app.commands import CancelOrder, Cause, HoldOrder, OrderData, OrderRef, PlaceOrder, ProcedureData, UpdateOrder
from app.errors import Conflict, InvalidInput, NotFound
from app.models import Order, OrderStatus, ProcedureState, ProcedureStep, RequestedProcedure, StepStation, StepStatus
from app.services.archive import link_waiting_studies
from app.services.outbox import order_status_changed
from app.services.patients import register_patient
from app.uids import derived_uid
from app.validation import clip, identifier, uid
from app.vocabulary import MODALITIES

OPEN_STEP_STATUSES = (StepStatus.SCHEDULED, StepStatus.HELD, StepStatus.ARRIVED, StepStatus.READY, StepStatus.UNSCHEDULED)


def find_order(session: Session, ref: OrderRef) -> Order | None:
    """The order a message refers to, by placer number (+ issuer), filler number or accession.

    The first identifier given selects the candidates; a candidate must agree with every other
    identifier the message gives (an order is never found by its accession number when the
    message names another placer order).
    """
    if ref.placer_order_number:
        q = select(Order).where(Order.placer_order_number == ref.placer_order_number)
    elif ref.filler_order_number:
        q = select(Order).where(Order.filler_order_number == ref.filler_order_number)
    elif ref.accession_number:
        q = select(Order).where(Order.accession_number == ref.accession_number)
    else:
        return None
    for order in session.scalars(q.order_by(Order.id.desc())):
        if _agrees(order, ref):
            return order
    return None


def _agrees(order: Order, ref: OrderRef) -> bool:
    pairs = ((order.placer_order_number, ref.placer_order_number), (order.placer_issuer, ref.placer_issuer),
             (order.filler_order_number, ref.filler_order_number), (order.accession_number, ref.accession_number))
    return all(not mine or not theirs or mine == theirs for mine, theirs in pairs)


def find_order_by_accession(session: Session, accession: str) -> Order | None:
    return session.scalars(select(Order).where(Order.accession_number == accession).order_by(Order.id)).first()


def place_order(session: Session, command: PlaceOrder, cause: Cause, *, uid_root: str,
                accession_prefix: str = "RIS") -> Order:
    """Create the order, its procedures and steps (ORC-1 NW). A known placer order is refused."""
    data = command.order
    if not data.procedures:
        raise InvalidInput("order has no requested procedure", location="order.procedures", missing=True)
    if data.ref.placer_order_number or data.ref.filler_order_number:
        existing = find_order(session, OrderRef(data.ref.placer_order_number, data.ref.placer_issuer,
                                                data.ref.filler_order_number))
        if existing is not None:
            raise Conflict(f"order {data.ref.describe()} already exists (accession {existing.accession_number}); "
                           "send XO to change it", location="order.placer_order_number")
    if data.accession_number and find_order_by_accession(session, data.accession_number) is not None:
        raise Conflict(f"accession number {data.accession_number} already belongs to another order",
                       location="order.accession_number")
    _check_order(data)
    patient, _ = register_patient(session, command.patient)
    order = Order(patient=patient, status=OrderStatus.SCHEDULED, sender=cause.sender,
                  source_message_fk=cause.message_fk, accession_number=data.accession_number or "")
    _write_order_fields(order, data)
    session.add(order)
    session.flush()  # the order number is the basis of a generated accession
    if not order.accession_number:
        order.accession_number = f"{accession_prefix}{order.id:08d}"[:16]
    for proc in data.procedures:
        order.procedures.append(_new_procedure(order, proc, uid_root))
    _start_lifecycles(session, order.procedures, cause)
    session.flush()
    link_waiting_studies(session, order)   # images that arrived before their order
    return order


def update_order(session: Session, command: UpdateOrder, cause: Cause, *, uid_root: str) -> Order:
    """Change an existing order in place (ORC-1 XO): accession and Study Instance UID are kept.

    Open steps take the new modality, time and stations; steps already performed are left alone.
    """
    data = command.order
    order = find_order(session, data.ref)
    if order is None:
        raise NotFound(f"unknown order: {data.ref.describe()}", location="order.placer_order_number")
    if order.status in (OrderStatus.CANCELLED, OrderStatus.DISCONTINUED):
        raise Conflict(f"order {order.accession_number} is {order.status.value}; it cannot be changed",
                       location="order.control")
    _check_order(data)
    patient, _ = register_patient(session, command.patient)
    order.patient = patient
    _write_order_fields(order, data)
    added = []
    for index, proc_data in enumerate(data.procedures):
        proc = _match_procedure(order, proc_data, index)
        if proc is None:
            added.append(_new_procedure(order, proc_data, uid_root))
            order.procedures.append(added[-1])
            continue
        proc.code_value, proc.code_scheme = clip(proc_data.code_value, 64), clip(proc_data.code_scheme, 64)
        proc.code_meaning, proc.description = clip(proc_data.code_meaning, 128), clip(proc_data.description, 64)
        proc.priority = clip(proc_data.priority, 16)
        for step_index, step_data in enumerate(proc_data.steps):
            step = _match_step(proc, step_data.sps_id, step_index)
            if step is None:
                proc.steps.append(_new_step(step_data, order.accession_number))
                _schedule_open_steps(session, proc, cause)
            elif step.status in OPEN_STEP_STATUSES:
                _write_step_fields(step, step_data)
    _start_lifecycles(session, added, cause)
    session.flush()
    return order


def cancel_order(session: Session, command: CancelOrder, cause: Cause) -> Order:
    """Cancel (CA) or discontinue (DC) the order: open steps leave the worklist; studies stay linked."""
    order = find_order(session, command.ref)
    if order is None:
        raise NotFound(f"unknown order: {command.ref.describe()}", location="order.placer_order_number")
    if order.status == OrderStatus.COMPLETED:
        raise Conflict(f"order {order.accession_number} is already COMPLETED", location="order.control")
    previous = order.status
    target = ProcedureState.DISCONTINUED if command.discontinue else ProcedureState.CANCELLED
    ending = [p for p in order.procedures if p.state not in lifecycle.PERFORMED | lifecycle.CLOSED]
    verb = "discontinue" if command.discontinue else "cancel"
    lifecycle.check_all(ending, target, action=f"{verb} it (send DC to stop a procedure in progress)"
                        if not command.discontinue else f"{verb} it")
    order.status = OrderStatus.DISCONTINUED if command.discontinue else OrderStatus.CANCELLED
    final = StepStatus.DISCONTINUED if command.discontinue else StepStatus.CANCELLED
    for proc in order.procedures:
        for step in proc.steps:
            if step.status not in (StepStatus.COMPLETED, StepStatus.DISCONTINUED):
                step.status = final
    for proc in ending:
        lifecycle.transition(session, proc, target, cause)
    scheduling.release_bookings(session, order)
    if command.reason:
        order.reason = command.reason
    order_status_changed(session, order, previous, cause)
    session.flush()
    return order


def hold_order(session: Session, command: HoldOrder, cause: Cause) -> Order:
    """Hold (HD) or release (RL) an order: held steps are not offered in the worklist."""
    order = find_order(session, command.ref)
    if order is None:
        raise NotFound(f"unknown order: {command.ref.describe()}", location="order.placer_order_number")
    previous = order.status
    if command.release:
        if order.status is not OrderStatus.HELD:
            raise Conflict(f"order {order.accession_number} is {order.status.value}, not on hold", location="order.control")
        order.status, before, after = OrderStatus.SCHEDULED, StepStatus.HELD, StepStatus.SCHEDULED
    else:
        if order.status not in (OrderStatus.SCHEDULED, OrderStatus.HELD):
            raise Conflict(f"order {order.accession_number} is {order.status.value}; only a scheduled order can be "
                           "held", location="order.control")
        order.status, before, after = OrderStatus.HELD, StepStatus.SCHEDULED, StepStatus.HELD
    for proc in order.procedures:
        for step in proc.steps:
            if step.status is before:
                step.status = after
    order_status_changed(session, order, previous, cause)
    session.flush()
    return order


def apply_order_command(session: Session, command, cause: Cause, *, uid_root: str, accession_prefix: str = "RIS"):
    """Dispatch one order command to its service function."""
    if isinstance(command, PlaceOrder):
        return place_order(session, command, cause, uid_root=uid_root, accession_prefix=accession_prefix)
    if isinstance(command, UpdateOrder):
        return update_order(session, command, cause, uid_root=uid_root)
    if isinstance(command, CancelOrder):
        return cancel_order(session, command, cause)
    if isinstance(command, HoldOrder):
        return hold_order(session, command, cause)
    raise TypeError(f"not an order command: {command!r}")


# Helpers -------------------------------------------------------------------------------------
def _start_lifecycles(session: Session, procedures, cause: Cause) -> None:
    """A new procedure is ORDERED, then SCHEDULED once each step has a time (IHE RAD TF-2 4.4 RAD-4: the
    Department System Scheduler schedules what the placer ordered); a step that came without a time gets the
    next free slot of a resource that fits (app.services.scheduling)."""
    for proc in procedures:      # every step has its time before any lifecycle moves (and reports the move)
        _schedule_open_steps(session, proc, cause)
    for proc in procedures:
        lifecycle.begin(session, proc, cause)
        scheduling.settle(session, proc, cause)   # the one owner of ORDERED -> SCHEDULED


def _schedule_open_steps(session: Session, proc: RequestedProcedure, cause: Cause) -> None:
    for step in proc.steps:
        if step.scheduled_start is None:
            scheduling.book_next_free(session, step, cause)


def _check_order(data: OrderData) -> None:
    """Refuse identifiers that cannot be used as keys.

    The accession number must fit its DICOM attribute (SH, 16 characters): a modality that cut it
    would link its images to nothing. Requested Procedure and SPS IDs (also SH) and station AE
    titles (AE, 16) are taken up to 64 characters as senders use them (corpus: dcm4che's
    'ScheduledProcStepID', 'ScheduledStationAET1').
    """
    identifier(data.ref.placer_order_number, 64, "order.placer_order_number")
    identifier(data.ref.filler_order_number, 64, "order.filler_order_number")
    identifier(data.accession_number, 16, "order.accession_number")
    for proc in data.procedures:
        identifier(proc.requested_procedure_id, 64, "procedure.requested_procedure_id")
        uid(proc.study_instance_uid, "procedure.study_instance_uid")
        for step in proc.steps:
            identifier(step.sps_id, 64, "step.sps_id")
            if step.modality and step.modality not in MODALITIES:
                raise InvalidInput(f"modality {step.modality!r} is not a DICOM modality (PS3.3 C.7.3.1.1.1)",
                                   location="step.modality")
            for aet in step.station_aets:
                identifier(aet, 64, "step.station_aets")


def _write_order_fields(order: Order, data: OrderData) -> None:
    order.placer_order_number = data.ref.placer_order_number or order.placer_order_number or ""
    order.placer_issuer = data.ref.placer_issuer or order.placer_issuer or ""
    order.filler_order_number = data.ref.filler_order_number or order.filler_order_number or ""
    order.priority = clip(data.priority, 16)
    order.referring_physician = clip(data.referring_physician, 324)
    order.requesting_physician = clip(data.requesting_physician, 324)
    order.reason = data.reason


def _new_procedure(order: Order, data: ProcedureData, uid_root: str) -> RequestedProcedure:
    index = len(order.procedures) + 1
    default_rp = order.accession_number if index == 1 else f"{order.accession_number}.{index}"
    rp_id = data.requested_procedure_id or default_rp[:16]
    study_uid = data.study_instance_uid or derived_uid(uid_root, order.accession_number, rp_id)
    proc = RequestedProcedure(
        requested_procedure_id=rp_id, study_instance_uid=study_uid, code_value=clip(data.code_value, 64),
        code_scheme=clip(data.code_scheme, 64), code_meaning=clip(data.code_meaning, 128),
        description=clip(data.description, 64), priority=clip(data.priority, 16),
    )
    for step_data in data.steps:
        proc.steps.append(_new_step(step_data, rp_id))
    return proc


def _new_step(data, default_id: str) -> ProcedureStep:
    step = ProcedureStep(sps_id=data.sps_id or default_id, status=StepStatus.SCHEDULED)
    _write_step_fields(step, data)
    return step


def _write_step_fields(step: ProcedureStep, data) -> None:
    if not data.modality:
        raise InvalidInput("modality missing: not an imaging order the worklist can offer",
                           location="step.modality", missing=True)
    step.modality = data.modality
    if data.scheduled_start is not None:   # none: the scheduler books a slot (new step) or the time stays
        step.scheduled_start = data.scheduled_start
    step.station_name = clip(data.station_name, 16)
    step.description = clip(data.description, 64)
    step.performing_physician = clip(data.performing_physician, 324)
    wanted = list(dict.fromkeys(a for a in data.station_aets if a))
    if [s.ae_title for s in step.stations] != wanted:
        step.stations.clear()
        step.stations.extend(StepStation(ae_title=aet) for aet in wanted)


def _match_procedure(order: Order, data: ProcedureData, index: int) -> RequestedProcedure | None:
    for proc in order.procedures:
        if data.requested_procedure_id and proc.requested_procedure_id == data.requested_procedure_id:
            return proc
    return order.procedures[index] if index < len(order.procedures) else None


def _match_step(proc: RequestedProcedure, sps_id: str, index: int) -> ProcedureStep | None:
    for step in proc.steps:
        if sps_id and step.sps_id == sps_id:
            return step
    return proc.steps[index] if index < len(proc.steps) else None
