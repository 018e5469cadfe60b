"""Patient visits from ADT events (HL7 v2.5.1 chapter 3: A01 admit ... A13 cancel discharge).

Each event registers or updates the patient, then changes the visit named by its visit number
(PV1-19). An event without a visit number changes only the patient. A cancel event for a visit
the engine does not know is refused (NotFound), so the sender learns its feeds disagree.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.commands import Cause, RecordVisit
from app.errors import InvalidInput, NotFound
from app.models import Patient, Visit, VisitStatus
from app.services.patients import register_patient
from app.services.tracking import patient_arrived
from app.validation import clip, identifier

_OPENING = {"admit": VisitStatus.ADMITTED, "register": VisitStatus.ADMITTED, "preadmit": VisitStatus.PREADMITTED}
_CANCELS = ("cancel_admit", "cancel_transfer", "cancel_discharge")


def find_visit(session: Session, patient: Patient, visit_number: str) -> Visit | None:
    return session.scalars(
        select(Visit).where(Visit.patient_fk == patient.id, Visit.visit_number == visit_number)
    ).first()


def record_visit(session: Session, command: RecordVisit, cause: Cause | None = None) -> Patient:
    """Apply one ADT visit event; A10 "arrive" also marks the patient's procedures of that day ARRIVED."""
    patient, _ = register_patient(session, command.patient)
    data, event = command.visit, command.event
    if event == "arrive":
        patient_arrived(session, patient, data.arrived_at, cause or Cause("hl7"))
    if not data.visit_number:
        if event in _CANCELS:
            raise InvalidInput(f"{event.replace('_', ' ')} needs the visit number", location="visit.number",
                               missing=True)
        return patient
    identifier(data.visit_number, 64, "visit.number")
    visit = find_visit(session, patient, data.visit_number)
    if visit is None:
        if event in _CANCELS:
            raise NotFound(f"unknown visit {data.visit_number} of patient {patient.patient_id}",
                           location="visit.number")
        visit = Visit(patient=patient, visit_number=data.visit_number, status=_OPENING.get(event, VisitStatus.ADMITTED))
        session.add(visit)
    if data.patient_class:
        visit.patient_class = clip(data.patient_class, 16)
    if event == "transfer" and data.location and data.location != visit.location:
        visit.prior_location = visit.location
    if data.location and event != "cancel_transfer":
        visit.location = clip(data.location, 128)
    if data.admitted_at is not None:
        visit.admitted_at = data.admitted_at
    if event in _OPENING:
        visit.status = _OPENING[event]
    elif event == "discharge":
        visit.status = VisitStatus.DISCHARGED
        visit.discharged_at = data.discharged_at or visit.discharged_at
    elif event == "cancel_admit":
        visit.status = VisitStatus.CANCELLED
    elif event == "cancel_discharge":
        visit.status, visit.discharged_at = VisitStatus.ADMITTED, None
    elif event == "cancel_transfer":
        visit.location, visit.prior_location = (data.prior_location or visit.prior_location), ""
    session.flush()
    return patient
