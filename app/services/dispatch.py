"""Apply one domain command with the service that owns it (the core's single entry for commands)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.commands import CancelOrder, Cause, PlaceOrder, RegisterPatient, UpdateOrder
from app.services.orders import apply_order_command
from app.services.patients import register_patient


def apply_command(session: Session, command, cause: Cause, *, uid_root: str, accession_prefix: str = "RIS"):
    if isinstance(command, RegisterPatient):
        patient, _ = register_patient(session, command.patient)
        return patient
    if isinstance(command, (PlaceOrder, UpdateOrder, CancelOrder)):
        return apply_order_command(session, command, cause, uid_root=uid_root, accession_prefix=accession_prefix)
    raise TypeError(f"no service for command {type(command).__name__}")
