"""Order management as the Order Filler / Department System Scheduler (IHE RAD-2, RAD-4).

An order placed by the HIS becomes an Order with its Requested Procedures and Scheduled
Procedure Steps; the worklist (app.queries.worklist) reads those steps. Identifiers the order
did not carry are assigned here, by the policy of IHE RAD TF-2 4.4.4.1.2 (the Order Filler
assigns the Accession Number and the Study Instance UID): accession ``<prefix><order number>``,
Requested Procedure ID and SPS ID default to the accession, and the Study Instance UID is derived
from the accession, so it is the same if the order is sent again (BUG-03).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

from app.changes import note
from app.commands import CancelOrder, Cause, HoldOrder, OrderData, OrderRef, PlaceOrder, ProcedureData, UpdateOrder
from app.errors import Conflict, InvalidInput, NotFound
from app.models import (Appointment, AppointmentStatus, LinkStatus, Order, OrderStatus, Patient, ProcedureState,
                        ProcedureStep, RequestedProcedure, StepProtocolCode, StepStation, StepStatus, Study)
from app.rows import changed, children_changed, insert_row, insert_rows, plain, read, run, run_many, update_row
from app.services import lifecycle, scheduling
from app.services.archive import link_waiting_studies
from app.services.outbox import ORDER_STATUS, destinations_for, order_status_changed
from app.services.patients import PatientRecord, register, register_patient
from app.uids import derived_uid
from app.validation import clip, identifier, uid
from app.vocabulary import MODALITIES

OPEN_STEP_STATUSES = (StepStatus.SCHEDULED, StepStatus.HELD, StepStatus.ARRIVED, StepStatus.READY, StepStatus.UNSCHEDULED)


_O = Order.__table__
_P = Patient.__table__
_RP = RequestedProcedure.__table__
_S = ProcedureStep.__table__
_ST = StepStation.__table__
_PC = StepProtocolCode.__table__
_STUDY = Study.__table__
_APPT = Appointment.__table__

_ORDER_ROW = select(_O.c.id, _O.c.placer_order_number, _O.c.placer_issuer, _O.c.filler_order_number,
                    _O.c.accession_number, _O.c.status, _O.c.reason, _P.c.patient_id).join(_P, _P.c.id == _O.c.patient_fk)
_BY = {name: _ORDER_ROW.where(column == bindparam("v")).order_by(_O.c.id.desc())
       for name, column in (("placer", _O.c.placer_order_number), ("filler", _O.c.filler_order_number),
                            ("accession", _O.c.accession_number))}
_BY_PLACER_OR_ACCESSION = _ORDER_ROW.where(or_(_O.c.placer_order_number == bindparam("placer"),
                                              _O.c.accession_number == bindparam("accession"))).order_by(_O.c.id.desc())
_PROCEDURES = select(_RP.c.id, _RP.c.requested_procedure_id, _RP.c.state).where(
    _RP.c.order_fk == bindparam("order")).order_by(_RP.c.id)
_STEPS = select(_S.c.id, _S.c.procedure_fk, _S.c.status).join(_RP, _RP.c.id == _S.c.procedure_fk).where(
    _RP.c.order_fk == bindparam("order")).order_by(_S.c.id)
_SET_ACCESSION = update(_O).where(_O.c.id == bindparam("order")).values(accession_number=bindparam("accession"),
                                                                      filler_order_number=bindparam("filler"))
_SET_STEP_STATUS = update(_S).where(_S.c.id == bindparam("id")).values(status=bindparam("status"))
_SET_STATE = update(_RP).where(_RP.c.id == bindparam("id")).values(state=bindparam("state"))
_RELEASE = update(_APPT).where(_APPT.c.step_fk == bindparam("id"),
                               _APPT.c.status == AppointmentStatus.BOOKED).values(status=AppointmentStatus.CANCELLED)
# A study waiting for this order (app.services.archive.link_waiting_studies says which and links them)
_WAITING = select(_STUDY.c.id).where(
    _STUDY.c.link_status.in_((LinkStatus.UNMATCHED, LinkStatus.AMBIGUOUS)), _STUDY.c.link_manual.is_(False), or_(
        _STUDY.c.accession_number == bindparam("accession"),
        _STUDY.c.study_instance_uid.in_(bindparam("uids", expanding=True)),
        _STUDY.c.sps_id.in_(bindparam("sps", expanding=True)))).limit(1)

@dataclass
class OrderRecord:
    """An order as the hot paths return it (app.rows): its key, accession, status and patient."""

    id: int
    accession_number: str
    status: OrderStatus
    patient: PatientRecord | None = None
    patient_id: str = ""
    procedure_ids: list[int] = field(default_factory=list)


def find_order_row(session: Session, ref: OrderRef):
    """The order a message refers to, by placer number (+ issuer), filler number or accession: a row with
    its identifiers, status and the patient's id.

    The first identifier given selects the candidates; a candidate must agree with every other
    identifier the message gives (an order is never found by its accession number when the
    message names another placer order).
    """
    for name, value in (("placer", ref.placer_order_number), ("filler", ref.filler_order_number),
                        ("accession", ref.accession_number)):
        if value:
            for row in read(session, _BY[name], {"v": value}):
                if _agrees(row, ref):
                    return row
            return None
    return None


def find_order(session: Session, ref: OrderRef) -> Order | None:
    """:func:`find_order_row` as an ORM object."""
    row = find_order_row(session, ref)
    return session.get(Order, row.id) if row is not None else None


def _agrees(order, ref: OrderRef) -> bool:
    pairs = ((order.placer_order_number, ref.placer_order_number), (order.placer_issuer, ref.placer_issuer),
             (order.filler_order_number, ref.filler_order_number), (order.accession_number, ref.accession_number))
    return all(not mine or not theirs or mine == theirs for mine, theirs in pairs)


def place(session: Session, command: PlaceOrder, cause: Cause, *, uid_root: str,
          accession_prefix: str = "RIS") -> OrderRecord:
    """Create the order, its procedures and steps (ORC-1 NW). A known placer order is refused.

    Each requested procedure starts its lifecycle ORDERED and is SCHEDULED once each of its steps has a time
    (IHE RAD TF-2 4.4 RAD-4: the Department System Scheduler schedules what the placer ordered); a step that
    came without a time gets the next free slot of a resource that fits (app.services.scheduling).
    """
    data = command.order
    if not data.procedures:
        raise InvalidInput("order has no requested procedure", location="order.procedures", missing=True)
    if data.ref.placer_order_number and data.accession_number:   # the usual case: one query for both checks
        known = read(session, _BY_PLACER_OR_ACCESSION, {"placer": data.ref.placer_order_number,
                                                        "accession": data.accession_number}).all()
        placer_ref = OrderRef(data.ref.placer_order_number, data.ref.placer_issuer, data.ref.filler_order_number)
        existing = next((r for r in known if r.placer_order_number == data.ref.placer_order_number
                         and _agrees(r, placer_ref)), None)
        taken = any(r.accession_number == data.accession_number for r in known)
    else:
        existing = find_order_row(session, OrderRef(data.ref.placer_order_number, data.ref.placer_issuer,
                                                    data.ref.filler_order_number)) \
            if data.ref.placer_order_number or data.ref.filler_order_number else None
        taken = bool(data.accession_number) and read(session, _BY["accession"],
                                                     {"v": data.accession_number}).first() is not None
    if existing is not None:
        raise Conflict(f"order {data.ref.describe()} already exists (accession {existing.accession_number}); "
                       "send XO to change it", location="order.placer_order_number")
    if taken:
        raise Conflict(f"accession number {data.accession_number} already belongs to another order",
                       location="order.accession_number")
    _check_order(data)
    for proc in data.procedures:
        for step in proc.steps:
            _require_modality(step)
    patient = register(session, command.patient)
    values = {"patient_fk": patient.id, "status": OrderStatus.SCHEDULED, "sender": cause.sender,
              "source_message_fk": cause.message_fk, "accession_number": data.accession_number or "", "version": 1,
              **_order_fields(data)}
    # This engine is the order filler: an order that comes without a filler order number gets the accession
    # number as its own (HL7 v2.5.1 4.5.1.3, ORC-3 "assigned by the filler application"), which the status
    # messages to the HIS carry in ORC-3/OBR-3 from then on.
    values["filler_order_number"] = values["filler_order_number"] or values["accession_number"]
    order_id = insert_row(session, _O, values, record=False)
    if not data.accession_number:  # the order number is the basis of a generated accession
        values["accession_number"] = f"{accession_prefix}{order_id:08d}"[:16]
        values["filler_order_number"] = values["filler_order_number"] or values["accession_number"]
        run(session, _SET_ACCESSION, {"order": order_id, "accession": values["accession_number"],
                                      "filler": values["filler_order_number"]})
    note(session, {"action": "created", "entity": "orders", "id": order_id,
                   "values": {k: plain(v) for k, v in values.items()}})
    accession = values["accession_number"]
    record = OrderRecord(order_id, accession, OrderStatus.SCHEDULED, patient, patient.patient_id)
    study_uids, sps_ids = [], []
    for index, proc in enumerate(data.procedures, 1):
        default_rp = accession if index == 1 else f"{accession}.{index}"
        rp_id = proc.requested_procedure_id or default_rp[:16]
        study_uids.append(proc.study_instance_uid or derived_uid(uid_root, accession, rp_id))
        sps_ids.extend(step.sps_id or rp_id for step in proc.steps)
        fields = {"order_fk": order_id, "requested_procedure_id": rp_id, "study_instance_uid": study_uids[-1],
                  **_procedure_fields(proc)}
        if not all(step.scheduled_start is not None for step in proc.steps):
            # a step without a time needs its slot before its row can be written: built as ORM objects, booked,
            # then SCHEDULED when the last step has its slot (as XO's new procedures are)
            procedure = RequestedProcedure(state=ProcedureState.ORDERED, **fields)
            procedure.steps.extend(_new_step(step, rp_id) for step in proc.steps)
            with session.no_autoflush:    # a step is written once it has its slot
                procedure.order = session.get(Order, order_id)
                _start_lifecycles(session, [procedure], cause)
            session.flush()
            record.procedure_ids.append(procedure.id)
            continue
        proc_id = insert_row(session, _RP, {**fields, "state": ProcedureState.SCHEDULED})
        record.procedure_ids.append(proc_id)
        for step in proc.steps:
            step_id = insert_row(session, _S, {"procedure_fk": proc_id, "status": StepStatus.SCHEDULED,
                                               "sps_id": step.sps_id or rp_id, "scheduled_start": step.scheduled_start,
                                               **_step_fields(step)})
            insert_rows(session, _ST, [{"step_fk": step_id, "ae_title": aet} for aet in _stations(step)])
            insert_rows(session, _PC, [{"step_fk": step_id, **codes} for codes in _protocol_codes(step)])
        lifecycle.record(session, proc_id, [(None, ProcedureState.ORDERED),   # reported once its steps exist
                                            (ProcedureState.ORDERED, ProcedureState.SCHEDULED)], cause)
        children_changed(session, Order, [order_id], "procedures")   # loaded by a booking above, if any
    if read(session, _WAITING, {"accession": accession, "uids": study_uids, "sps": sps_ids}).first():
        link_waiting_studies(session, session.get(Order, order_id))   # images that arrived before their order
    return record


def place_order(session: Session, command: PlaceOrder, cause: Cause, *, uid_root: str,
                accession_prefix: str = "RIS") -> Order:
    """:func:`place` for callers that work with ORM objects."""
    return session.get(Order, place(session, command, cause, uid_root=uid_root, accession_prefix=accession_prefix).id)


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
        proc.priority, proc.body_part = clip(proc_data.priority, 16), clip(proc_data.body_part, 16)
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


def cancel(session: Session, command: CancelOrder, cause: Cause) -> OrderRecord:
    """Cancel (CA) or discontinue (DC) the order: open steps leave the worklist; studies stay linked.

    Every procedure that is not performed or closed moves to CANCELLED (DISCONTINUED); one that may not
    (a procedure in progress cannot be cancelled: send DC) refuses the whole change before anything is written.
    """
    row = find_order_row(session, command.ref)
    if row is None:
        raise NotFound(f"unknown order: {command.ref.describe()}", location="order.placer_order_number")
    if row.status == OrderStatus.COMPLETED:
        raise Conflict(f"order {row.accession_number} is already COMPLETED", location="order.control")
    target = ProcedureState.DISCONTINUED if command.discontinue else ProcedureState.CANCELLED
    verb = "discontinue" if command.discontinue else "cancel"
    action = f"{verb} it" if command.discontinue else f"{verb} it (send DC to stop a procedure in progress)"
    procedures = read(session, _PROCEDURES, {"order": row.id}).all()
    ending = [p for p in procedures if p.state not in lifecycle.PERFORMED | lifecycle.CLOSED]
    for proc in ending:
        lifecycle.check_state(proc.requested_procedure_id, row.accession_number, proc.state, target, action=action)
    status = OrderStatus.DISCONTINUED if command.discontinue else OrderStatus.CANCELLED
    after = {"status": status, "reason": command.reason or row.reason}
    update_row(session, Order, row.id, {"status": row.status, "reason": row.reason}, after, bump_version=True)
    final = StepStatus.DISCONTINUED if command.discontinue else StepStatus.CANCELLED
    steps = read(session, _STEPS, {"order": row.id}).all()
    closing = [s for s in steps if s.status not in (StepStatus.COMPLETED, StepStatus.DISCONTINUED, final)]
    if closing:
        run_many(session, _SET_STEP_STATUS, [{"id": s.id, "status": final} for s in closing])
        for step in closing:
            changed(session, ProcedureStep, step.id, before={"status": step.status})
            note(session, {"action": "updated", "entity": "procedure_steps", "id": step.id,
                           "changes": {"status": [plain(step.status), final.value]}})
    if ending:
        run_many(session, _SET_STATE, [{"id": p.id, "state": target} for p in ending])
        for proc in ending:
            changed(session, RequestedProcedure, proc.id, before={"state": proc.state})
            lifecycle.record(session, proc.id, [(proc.state, target)], cause)
    if steps:
        run_many(session, _RELEASE, [{"id": s.id} for s in steps])
    if destinations_for(session, ORDER_STATUS) and row.status != status:
        order_status_changed(session, session.get(Order, row.id), row.status, cause)
    return OrderRecord(row.id, row.accession_number, status, None, row.patient_id)


def cancel_order(session: Session, command: CancelOrder, cause: Cause) -> Order:
    """:func:`cancel` for callers that work with ORM objects."""
    return session.get(Order, cancel(session, command, cause).id)


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
                lifecycle.set_step_status(session, step, after, cause)
    order_status_changed(session, order, previous, cause)
    session.flush()
    return order


def apply_order_command(session: Session, command, cause: Cause, *, uid_root: str, accession_prefix: str = "RIS"):
    """Dispatch one order command to its service function."""
    if isinstance(command, PlaceOrder):
        return place(session, command, cause, uid_root=uid_root, accession_prefix=accession_prefix)
    if isinstance(command, UpdateOrder):
        return update_order(session, command, cause, uid_root=uid_root)
    if isinstance(command, CancelOrder):
        return cancel(session, command, cause)
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


def _order_fields(data: OrderData) -> dict:
    return {"placer_order_number": data.ref.placer_order_number, "placer_issuer": data.ref.placer_issuer,
            "filler_order_number": data.ref.filler_order_number, "priority": clip(data.priority, 16),
            "referring_physician": clip(data.referring_physician, 324),
            "requesting_physician": clip(data.requesting_physician, 324), "reason": data.reason}


def _write_order_fields(order: Order, data: OrderData) -> None:
    fields = _order_fields(data)
    for column in ("placer_order_number", "placer_issuer", "filler_order_number"):
        fields[column] = fields[column] or getattr(order, column) or ""   # kept when the message does not repeat it
    for column, value in fields.items():
        setattr(order, column, value)


def _new_procedure(order: Order, data: ProcedureData, uid_root: str) -> RequestedProcedure:
    index = len(order.procedures) + 1
    default_rp = order.accession_number if index == 1 else f"{order.accession_number}.{index}"
    rp_id = data.requested_procedure_id or default_rp[:16]
    study_uid = data.study_instance_uid or derived_uid(uid_root, order.accession_number, rp_id)
    proc = RequestedProcedure(requested_procedure_id=rp_id, study_instance_uid=study_uid, **_procedure_fields(data))
    for step_data in data.steps:
        proc.steps.append(_new_step(step_data, rp_id))
    return proc


def _procedure_fields(data: ProcedureData) -> dict:
    """The columns of a requested procedure that the order sets (its identifiers apart)."""
    return {"code_value": clip(data.code_value, 64), "code_scheme": clip(data.code_scheme, 64),
            "code_meaning": clip(data.code_meaning, 128), "description": clip(data.description, 64),
            "priority": clip(data.priority, 16), "body_part": clip(data.body_part, 16)}


def _new_step(data, default_id: str) -> ProcedureStep:
    step = ProcedureStep(sps_id=data.sps_id or default_id, status=StepStatus.SCHEDULED)
    _write_step_fields(step, data)
    return step


def _require_modality(data) -> None:
    if not data.modality:
        raise InvalidInput("modality missing: not an imaging order the worklist can offer",
                           location="step.modality", missing=True)


def _step_fields(data) -> dict:
    """The columns of a step that the order sets (its time apart: none means "book a slot" or "keep it")."""
    _require_modality(data)
    return {"modality": data.modality, "station_name": clip(data.station_name, 16),
            "description": clip(data.description, 64), "performing_physician": clip(data.performing_physician, 324),
            "expected_duration_minutes": data.expected_duration_minutes}


def _stations(data) -> list[str]:
    return list(dict.fromkeys(a for a in data.station_aets if a))


def _protocol_codes(data) -> list[dict]:
    """The step's Scheduled Protocol Code Sequence items as rows (each code once, in the order given)."""
    codes = dict.fromkeys((clip(c.value, 64), clip(c.scheme, 64), clip(c.meaning, 128)) for c in data.protocol_codes
                          if c.value)
    return [{"code_value": v, "code_scheme": s, "code_meaning": m} for v, s, m in codes]


def _write_step_fields(step: ProcedureStep, data) -> None:
    for column, value in _step_fields(data).items():
        setattr(step, column, value)
    if data.scheduled_start is not None:   # none: the scheduler books a slot (new step) or the time stays
        step.scheduled_start = data.scheduled_start
    wanted = _stations(data)
    if [s.ae_title for s in step.stations] != wanted:
        step.stations.clear()
        step.stations.extend(StepStation(ae_title=aet) for aet in wanted)
    codes = _protocol_codes(data)
    if [{"code_value": c.code_value, "code_scheme": c.code_scheme, "code_meaning": c.code_meaning}
            for c in step.protocol_codes] != codes:
        step.protocol_codes.clear()
        step.protocol_codes.extend(StepProtocolCode(**row) for row in codes)


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
