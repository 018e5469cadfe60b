"""Read model of patients for people: search by identifier or name, and one patient with orders and studies."""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.models import Order, Patient, Report, Study
from app.queries.orders import patient_view


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search_patients(session: Session, text: str, *, limit: int = 100) -> list[dict]:
    """Patients whose identifier is ``text`` or whose name contains it (any case; '^' or ' ' between parts)."""
    text = text.strip()
    words = [w for w in text.replace("^", " ").replace(",", " ").split() if w]
    q = select(Patient)
    name_match = [func.lower(Patient.name).like(_like(w.lower()), escape="\\") for w in words]
    q = q.where(or_(Patient.patient_id == text, *([and_(*name_match)] if name_match else [])))
    return [{"id": p.id, **patient_view(p), "merged_into": p.merged_into_fk}
            for p in session.scalars(q.order_by(Patient.name, Patient.id).limit(limit))]


def get_patient(session: Session, pk: int) -> dict | None:
    """One patient with orders (newest first), archived studies and merge history."""
    patient = session.get(Patient, pk)
    if patient is None:
        return None
    orders = session.scalars(select(Order).where(Order.patient_fk == pk).order_by(Order.id.desc())).all()
    studies = session.scalars(select(Study).where(Study.patient_id == patient.patient_id,
                                                  Study.issuer.in_([patient.issuer, ""]))
                              .order_by(Study.id.desc())).all()
    merged_from = session.scalars(select(Patient).where(Patient.merged_into_fk == pk)).all()
    target = patient.merged_into
    return {
        "id": patient.id, **patient_view(patient), "version": patient.version,
        "merged_into": {"id": target.id, "patient_id": target.patient_id, "issuer": target.issuer} if target else None,
        "merged_from": [{"id": p.id, "patient_id": p.patient_id, "issuer": p.issuer} for p in merged_from],
        "orders": [{"id": o.id, "accession_number": o.accession_number, "status": o.status.value,
                    "placer_order_number": o.placer_order_number, "created_at": o.created_at.isoformat(),
                    "procedures": [p.description or p.code_meaning for p in o.procedures]} for o in orders],
        "studies": [{"study_instance_uid": s.study_instance_uid, "accession_number": s.accession_number,
                     "study_date": s.study_date, "description": s.description, "link_status": s.link_status.value,
                     "order_id": s.order_fk} for s in studies],
    }


def order_reports(session: Session, order_id: int) -> list[dict]:
    """The reports of an order (ORU results), newest first."""
    rows = session.scalars(select(Report).where(Report.order_fk == order_id).order_by(Report.id.desc()))
    return [{"status": r.status, "text": r.text, "observed_at": r.observed_at.isoformat() if r.observed_at else None,
             "study_instance_uid": r.study_instance_uid} for r in rows]
