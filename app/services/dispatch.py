"""Apply one domain command with the service that owns it (the core's single entry for commands)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.commands import (CancelOrder, Cause, ChangePatientId, HoldOrder, MergePatient, PlaceOrder,
                          RecordAppointment, RecordReport, RecordVisit, RegisterPatient, UpdateOrder)
from app.services.appointments import record_appointment
from app.services.reports import record_report
from app.services.orders import apply_order_command
from app.services.patients import change_patient_id, merge_patient, register_patient
from app.services.visits import record_visit


def apply_command(session: Session, command, cause: Cause, *, uid_root: str, accession_prefix: str = "RIS"):
    if isinstance(command, RegisterPatient):
        patient, _ = register_patient(session, command.patient)
        return patient
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
    raise TypeError(f"no service for command {type(command).__name__}")
