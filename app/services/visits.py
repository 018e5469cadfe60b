"""Patient visits from ADT events (HL7 v2.5.1 chapter 3: A01 admit ... A13 cancel discharge).

Each event registers or updates the patient, then changes the visit named by its visit number
(PV1-19). An event without a visit number changes only the patient. A cancel event for a visit
the engine does not know is refused (NotFound), so the sender learns its feeds disagree.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from app.commands import Cause, RecordVisit
from app.errors import InvalidInput, NotFound
from app.models import Patient, Visit, VisitStatus
from app.rows import insert_row, read, update_row
from app.services.patients import PatientRecord, register
from app.services.tracking import patient_arrived
from app.validation import clip, identifier

_OPENING = {"admit": VisitStatus.ADMITTED, "register": VisitStatus.ADMITTED, "preadmit": VisitStatus.PREADMITTED}
_CANCELS = ("cancel_admit", "cancel_transfer", "cancel_discharge")


_V = Visit.__table__
_VISIT = select(_V.c.id, _V.c.patient_class, _V.c.location, _V.c.prior_location, _V.c.status, _V.c.admitted_at,
                _V.c.discharged_at).where(_V.c.patient_fk == bindparam("patient"), _V.c.visit_number == bindparam("number"))


def record_visit(session: Session, command: RecordVisit, cause: Cause | None = None) -> PatientRecord:
    """Apply one ADT visit event; A10 "arrive" also marks the patient's procedures of that day ARRIVED.
    Returns the patient's record (app.services.patients.PatientRecord)."""
    patient = register(session, command.patient)
    data, event = command.visit, command.event
    if event == "arrive":
        patient_arrived(session, session.get(Patient, patient.id), data.arrived_at, cause or Cause("hl7"))
    if not data.visit_number:
        if event in _CANCELS:
            raise InvalidInput(f"{event.replace('_', ' ')} needs the visit number", location="visit.number",
                               missing=True)
        return patient
    identifier(data.visit_number, 64, "visit.number")
    row = read(session, _VISIT, {"patient": patient.id, "number": data.visit_number}).first()
    if row is None and event in _CANCELS:
        raise NotFound(f"unknown visit {data.visit_number} of patient {patient.patient_id}", location="visit.number")
    before = row._asdict() if row is not None else {
        "patient_class": "", "location": "", "prior_location": "", "status": _OPENING.get(event, VisitStatus.ADMITTED),
        "admitted_at": None, "discharged_at": None}
    after = dict(before)
    if data.patient_class:
        after["patient_class"] = clip(data.patient_class, 16)
    if event == "transfer" and data.location and data.location != before["location"]:
        after["prior_location"] = before["location"]
    if data.location and event != "cancel_transfer":
        after["location"] = clip(data.location, 128)
    if data.admitted_at is not None:
        after["admitted_at"] = data.admitted_at
    if event in _OPENING:
        after["status"] = _OPENING[event]
    elif event == "discharge":
        after["status"] = VisitStatus.DISCHARGED
        after["discharged_at"] = data.discharged_at or before["discharged_at"]
    elif event == "cancel_admit":
        after["status"] = VisitStatus.CANCELLED
    elif event == "cancel_discharge":
        after["status"], after["discharged_at"] = VisitStatus.ADMITTED, None
    elif event == "cancel_transfer":
        after["location"], after["prior_location"] = (data.prior_location or before["prior_location"]), ""
    if row is None:
        after.pop("id", None)
        insert_row(session, _V, {"patient_fk": patient.id, "visit_number": data.visit_number, **after})
    else:
        update_row(session, Visit, row.id, before, {k: v for k, v in after.items() if k != "id"})
    return patient
