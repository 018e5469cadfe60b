"""Patient registry: create or update patients by their identifier (IHE RAD-1, RAD-12)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.commands import PatientData
from app.errors import InvalidInput
from app.models import Patient
from app.validation import clip, identifier


def find_patient(session: Session, patient_id: str, issuer: str = "") -> Patient | None:
    return session.scalars(
        select(Patient).where(Patient.patient_id == patient_id, Patient.issuer == issuer)
    ).first()


def register_patient(session: Session, data: PatientData) -> tuple[Patient, bool]:
    """Create the patient or update the stored one; returns (patient, created).

    Only values the message gave are written: ``None`` keeps what is stored, so a sparse update
    (an A08 with no birth date) never erases data. Two registrations of one identifier give one
    patient: the (patient_id, issuer) pair is unique in the database as well.
    """
    if not data.patient_id:
        raise InvalidInput("patient identifier missing", location="patient.id", missing=True)
    identifier(data.patient_id, 64, "patient.id")
    identifier(data.issuer, 64, "patient.issuer")
    patient = find_patient(session, data.patient_id, data.issuer)
    created = patient is None
    if created:
        patient = Patient(patient_id=data.patient_id, issuer=data.issuer, name="", sex="")
        session.add(patient)
    if data.name is not None:
        patient.name = clip(data.name, 324)
    if data.birth_date_given:
        patient.birth_date = data.birth_date
    if data.sex is not None:
        patient.sex = clip(data.sex, 16)
    session.flush()
    return patient, created
