"""Read models of orders, studies and messages for the JSON API (plain dicts, no web types)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.models import (InboundMessage, LinkStatus, Order, ProcedureStep, RequestedProcedure, Series, Study)
from app.services import lifecycle


def _iso(value):
    return value.isoformat() if value is not None else None


def patient_view(patient) -> dict:
    return {"patient_id": patient.patient_id, "issuer": patient.issuer, "name": patient.name,
            "birth_date": _iso(patient.birth_date), "sex": patient.sex}


def study_view(study: Study) -> dict:
    return {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "study_date": study.study_date,
        "link_status": study.link_status.value,
        "link_reason": study.link_reason,
        "order_id": study.order_fk,
        "series": [{"series_instance_uid": s.series_instance_uid, "modality": s.modality,
                    "instances": len(s.instances)} for s in study.series],
    }


def order_view(order: Order) -> dict:
    return {
        "id": order.id,
        "accession_number": order.accession_number,
        "status": order.status.value,
        "placer_order_number": order.placer_order_number,
        "placer_issuer": order.placer_issuer,
        "filler_order_number": order.filler_order_number,
        "priority": order.priority,
        "referring_physician": order.referring_physician,
        "requesting_physician": order.requesting_physician,
        "reason": order.reason,
        "sender": order.sender,
        "created_at": _iso(order.created_at),
        "updated_at": _iso(order.updated_at),
        "patient": patient_view(order.patient),
        "procedures": [
            {
                "id": p.id,
                "requested_procedure_id": p.requested_procedure_id,
                "state": p.state.value,
                "history": lifecycle.history_view(p),     # every transition: from, to, at (UTC), cause
                "study_instance_uid": p.study_instance_uid,
                "code": {"value": p.code_value, "scheme": p.code_scheme, "meaning": p.code_meaning},
                "description": p.description,
                "steps": [
                    {"sps_id": s.sps_id, "modality": s.modality, "station_aets": s.station_aets,
                     "station_name": s.station_name, "scheduled_start": _iso(s.scheduled_start),
                     "description": s.description, "status": s.status.value}
                    for s in p.steps
                ],
            }
            for p in order.procedures
        ],
        "study_instance_uids": [s.study_instance_uid for s in order.studies],
        "studies": [study_view(s) for s in order.studies],
    }


def _order_query():
    return select(Order).options(
        selectinload(Order.patient),
        selectinload(Order.procedures).selectinload(RequestedProcedure.steps).selectinload(ProcedureStep.stations),
        selectinload(Order.procedures).selectinload(RequestedProcedure.transitions),
        selectinload(Order.studies).selectinload(Study.series).selectinload(Series.instances),
    )


def search_orders(session: Session, *, accession: str = "", patient_id: str = "", status: str = "",
                  limit: int = 100) -> list[dict]:
    from app.models import Patient

    q = _order_query()
    if accession:
        q = q.where(Order.accession_number == accession)
    if patient_id:
        q = q.join(Order.patient).where(Patient.patient_id == patient_id)
    if status:
        q = q.where(Order.status == status)
    return [order_view(o) for o in session.scalars(q.order_by(Order.id.desc()).limit(limit))]


def get_order(session: Session, order_id: int) -> dict | None:
    order = session.scalars(_order_query().where(Order.id == order_id)).first()
    return order_view(order) if order else None


def search_studies(session: Session, *, link_status: str = "", accession: str = "", limit: int = 100) -> list[dict]:
    q = select(Study).options(selectinload(Study.series).selectinload(Series.instances))
    if link_status:
        q = q.where(Study.link_status == LinkStatus(link_status))
    if accession:
        q = q.where(Study.accession_number == accession)
    return [study_view(s) for s in session.scalars(q.order_by(Study.id.desc()).limit(limit))]


def message_view(msg: InboundMessage, *, with_raw: bool = False) -> dict:
    view = {
        "id": msg.id, "received_at": _iso(msg.received_at), "transport": msg.transport, "peer": msg.peer,
        "sender": msg.sender, "control_id": msg.control_id, "message_type": msg.message_type,
        "charset": msg.charset, "size": msg.size, "status": msg.status.value, "ack_code": msg.ack_code,
        "error": msg.error, "warnings": [w for w in msg.warnings.split("\n") if w], "profile": msg.profile,
        "duplicate_of": msg.duplicate_of_fk, "batch": msg.batch_fk, "patient_id": msg.patient_key,
        "accession_number": msg.accession_number, "attempts": msg.attempts,
        "processed_at": _iso(msg.processed_at), "duration_ms": msg.duration_ms,
    }
    if with_raw:
        view["changes"] = msg.changes or []
        view["raw"] = msg.raw.decode(msg.charset or "latin-1", errors="replace")
        view["ack"] = msg.ack.decode(msg.charset or "latin-1", errors="replace") if msg.ack else None
        if msg.reply is not None:  # enhanced mode: what was answered on the connection instead ("": nothing)
            view["reply"] = msg.reply.decode(msg.charset or "latin-1", errors="replace")
    return view


def message_query(*, control_id: str = "", status: str = "", message_type: str = "", patient_id: str = "",
                  accession: str = "", since=None, until=None, transport: str = ""):
    """Messages matching every given criterion (the analyst's search), newest first."""
    q = select(InboundMessage)
    if transport:
        q = q.where(InboundMessage.transport == transport)
    if control_id:
        q = q.where(InboundMessage.control_id == control_id)
    if status:
        q = q.where(InboundMessage.status == status)
    if message_type:
        q = q.where(InboundMessage.message_type == message_type)
    if patient_id:
        q = q.where(InboundMessage.patient_key == patient_id)
    if accession:
        q = q.where(InboundMessage.accession_number == accession)
    if since is not None:
        q = q.where(InboundMessage.received_at >= since)
    if until is not None:
        q = q.where(InboundMessage.received_at < until)
    return q.order_by(InboundMessage.id.desc())


def search_messages(session: Session, *, limit: int = 100, **criteria) -> list[dict]:
    return [message_view(m) for m in session.scalars(message_query(**criteria).limit(limit))]


def message_ids(session: Session, *, limit: int = 100, **criteria) -> list[int]:
    """Ids of matching messages, oldest first (the order to reprocess them in)."""
    q = message_query(**criteria).with_only_columns(InboundMessage.id).limit(limit)
    return sorted(session.scalars(q))


def get_message(session: Session, message_id: int) -> dict | None:
    msg = session.get(InboundMessage, message_id)
    return message_view(msg, with_raw=True) if msg else None
