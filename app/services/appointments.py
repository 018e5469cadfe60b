"""Appointments for orders (HL7 v2.5.1 chapter 10, SIU): booked, modified, cancelled, no-show.

An appointment is found again by its filler appointment id, else its placer appointment id; it is
linked to the order whose placer (or filler) order number it names. An appointment for an order
the engine does not know is kept unlinked. What an appointment does to its order's step (its time, its room,
conflicts) is the scheduling service's (app.services.scheduling.apply_appointment); a no-show (S26) is the
tracking service's.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.commands import Cause, OrderRef, RecordAppointment
from app.errors import NotFound
from app.models import Appointment, AppointmentStatus, ProcedureState
from app.services import scheduling, tracking
from app.services.orders import find_order
from app.services.patients import register_patient
from app.validation import clip, identifier


def find_appointment(session: Session, placer_id: str, filler_id: str) -> Appointment | None:
    for column, value in ((Appointment.filler_appointment_id, filler_id), (Appointment.placer_appointment_id, placer_id)):
        if value:
            found = session.scalars(select(Appointment).where(column == value).order_by(Appointment.id.desc())).first()
            if found is not None:
                return found
    return None


def record_appointment(session: Session, command: RecordAppointment, cause: Cause | None = None) -> Appointment:
    data = command.appointment
    identifier(data.placer_appointment_id, 64, "appointment.placer_id")
    identifier(data.filler_appointment_id, 64, "appointment.filler_id")
    appointment = find_appointment(session, data.placer_appointment_id, data.filler_appointment_id)
    if appointment is None:
        if command.event in ("cancel", "noshow"):
            raise NotFound(f"unknown appointment {data.filler_appointment_id or data.placer_appointment_id or '(no id)'}",
                           location="appointment.filler_id")
        appointment = Appointment(placer_appointment_id=data.placer_appointment_id,
                                  filler_appointment_id=data.filler_appointment_id)
        session.add(appointment)
    if command.patient is not None and command.patient.patient_id:
        appointment.patient_fk = register_patient(session, command.patient)[0].id
    if data.placer_order_number or data.filler_order_number:
        appointment.placer_order_number = data.placer_order_number[:64]
        appointment.order = find_order(session, OrderRef(data.placer_order_number, "", data.filler_order_number))
    if data.start is not None:
        appointment.start = data.start
    if data.duration_minutes is not None:
        appointment.duration_minutes = data.duration_minutes
    appointment.resource = clip(data.resource, 128) or appointment.resource or ""
    appointment.location = clip(data.location, 128) or appointment.location or ""
    appointment.status = {"cancel": AppointmentStatus.CANCELLED, "noshow": AppointmentStatus.NOSHOW}.get(
        command.event, AppointmentStatus.BOOKED)
    session.flush()
    cause = cause or Cause("hl7")
    if command.event == "noshow":
        step = appointment.step
        if step is not None and step.procedure.state in (ProcedureState.SCHEDULED, ProcedureState.ARRIVED):
            tracking.no_show(session, step.procedure, cause, note="no-show (appointment)")
    else:   # the order's step takes the appointment's time and room (app.services.scheduling)
        scheduling.apply_appointment(session, appointment, command.event, cause)
    return appointment
