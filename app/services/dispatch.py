"""Apply one domain command with the service that owns it (the core's single entry for commands)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.commands import (CancelOrder, Cause, ChangePatientId, HoldOrder, MergePatient, PlaceOrder,
                          RecordAppointment, RecordReport, RecordVisit, RegisterPatient, SetStepStatus, UpdateOrder)
from app.models import Order, Patient
from app.services.appointments import record_appointment
from app.services.orders import OrderRecord, apply_order_command
from app.services.patients import PatientRecord, change_patient_id, merge_patient, register
from app.services.reports import record_report
from app.services.step_statuses import set_step_status
from app.services.visits import record_visit


def apply(session: Session, command, cause: Cause, *, uid_root: str, accession_prefix: str = "RIS"):
    """Apply ``command``; the result is what the service returns: a light record (app.services.patients
    PatientRecord, app.services.orders OrderRecord) on the hot paths, an ORM object elsewhere. Both name
    the patient (``.patient.patient_id``) and, for orders, the ``accession_number``."""
    if isinstance(command, RegisterPatient):
        return register(session, command.patient)
    if isinstance(command, RecordAppointment):
        return record_appointment(session, command, cause)
    if isinstance(command, RecordReport):
        return record_report(session, command)
    if isinstance(command, RecordVisit):
        return record_visit(session, command, cause)
    if isinstance(command, MergePatient):
        return merge_patient(session, command)
    if isinstance(command, ChangePatientId):
        return change_patient_id(session, command)
    if isinstance(command, (PlaceOrder, UpdateOrder, CancelOrder, HoldOrder)):
        return apply_order_command(session, command, cause, uid_root=uid_root, accession_prefix=accession_prefix)
    if isinstance(command, SetStepStatus):
        return set_step_status(session, command, cause)
    raise TypeError(f"no service for command {type(command).__name__}")


def apply_command(session: Session, command, cause: Cause, *, uid_root: str, accession_prefix: str = "RIS"):
    """:func:`apply` for callers that work with ORM objects: a Patient or Order instead of a record."""
    return as_orm(session, apply(session, command, cause, uid_root=uid_root, accession_prefix=accession_prefix))


def as_orm(session: Session, result):
    """The ORM object of a service's result (records are loaded by their key; ORM objects pass through)."""
    if isinstance(result, PatientRecord):
        return session.get(Patient, result.id)
    if isinstance(result, OrderRecord):
        return session.get(Order, result.id)
    return result
