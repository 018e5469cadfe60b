"""Read model of the procedure board: one day's scheduled procedure steps, per modality and station."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from app.models import Order, ProcedureStep, RequestedProcedure, StepStation


def day_steps(session: Session, day: dt.date, *, modality: str = "", station: str = "", status: str = "",
              limit: int = 2000) -> list[dict]:
    """The steps scheduled on ``day`` (site-local times), by modality, station and start time."""
    start = dt.datetime.combine(day, dt.time())
    q = (select(ProcedureStep)
         .where(ProcedureStep.scheduled_start >= start, ProcedureStep.scheduled_start < start + dt.timedelta(days=1))
         .options(selectinload(ProcedureStep.stations),
                  selectinload(ProcedureStep.procedure).selectinload(RequestedProcedure.order)
                  .selectinload(Order.patient)))
    if modality:
        q = q.where(ProcedureStep.modality == modality)
    if status:
        q = q.where(ProcedureStep.status == status)
    if station:
        q = q.where(or_(ProcedureStep.station_name == station,
                        ProcedureStep.id.in_(select(StepStation.step_fk).where(StepStation.ae_title == station))))
    rows = []
    for step in session.scalars(q.order_by(ProcedureStep.scheduled_start, ProcedureStep.id).limit(limit)):
        order = step.procedure.order
        rows.append({
            "sps_id": step.sps_id, "modality": step.modality,
            "station": step.station_name or (step.station_aets[0] if step.station_aets else ""),
            "station_aets": step.station_aets, "scheduled_start": step.scheduled_start.isoformat(),
            "time": step.scheduled_start.strftime("%H:%M"), "description": step.description,
            "status": step.status.value, "procedure": step.procedure.description or step.procedure.code_meaning,
            "procedure_id": step.procedure.id, "procedure_state": step.procedure.state.value,
            "order_id": order.id, "accession_number": order.accession_number, "priority": order.priority,
            "patient_id": order.patient.patient_id, "patient_name": order.patient.name,
            "patient_pk": order.patient.id,
        })
    rows.sort(key=lambda r: (r["modality"], r["station"], r["scheduled_start"]))
    return rows


def modalities(session: Session) -> list[str]:
    """Every modality that has a step (for the board's filter)."""
    return sorted(m for m in session.scalars(select(ProcedureStep.modality).distinct()) if m)
