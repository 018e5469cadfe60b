"""Archive index and study-to-order linking (IHE RAD-8 Modality Images Stored).

Every stored instance is indexed by patient, study, series and instance. A study is linked to
its order by accession number, else by Study Instance UID (the UID the worklist gave it);
otherwise it is kept and listed as UNMATCHED, never rejected. Linking by accession checks the
patient: a study whose Patient ID differs from the order's patient is never linked (BUG-27), it
stays UNMATCHED with the reason.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.commands import InstanceData
from app.models import Instance, LinkStatus, Order, RequestedProcedure, Series, Study


def index_instance(session: Session, data: InstanceData) -> tuple[Instance, bool]:
    """Index one stored instance; returns (instance, created). A re-sent instance replaces the entry."""
    study = session.scalars(select(Study).where(Study.study_instance_uid == data.study_instance_uid)).first()
    if study is None:
        study = Study(study_instance_uid=data.study_instance_uid)
        session.add(study)
    study.patient_id = data.patient_id or study.patient_id or ""
    study.issuer = data.issuer or study.issuer or ""
    study.patient_name = data.patient_name or study.patient_name or ""
    study.accession_number = data.accession_number or study.accession_number or ""
    study.study_date = data.study_date or study.study_date or ""
    study.study_time = data.study_time or study.study_time or ""
    study.description = data.study_description or study.description or ""

    series = session.scalars(select(Series).where(Series.series_instance_uid == data.series_instance_uid)).first()
    if series is None:
        series = Series(series_instance_uid=data.series_instance_uid, study=study)
        session.add(series)
    series.modality = data.modality or series.modality or ""
    series.series_number = data.series_number or series.series_number or ""
    series.description = data.series_description or series.description or ""

    instance = session.scalars(select(Instance).where(Instance.sop_instance_uid == data.sop_instance_uid)).first()
    created = instance is None
    if created:
        instance = Instance(sop_instance_uid=data.sop_instance_uid)
        session.add(instance)
    instance.series = series
    instance.sop_class_uid = data.sop_class_uid
    instance.transfer_syntax_uid = data.transfer_syntax_uid
    instance.instance_number = data.instance_number
    instance.path = data.path
    instance.size = data.size
    instance.calling_aet = data.calling_aet
    session.flush()
    if study.link_status is not LinkStatus.LINKED:
        link_study(session, study)
    return instance, created


def link_study(session: Session, study: Study) -> Order | None:
    """Link ``study`` to its order by accession number, then by Study Instance UID."""
    reasons = []
    if study.accession_number:
        orders = session.scalars(
            select(Order).where(Order.accession_number == study.accession_number).order_by(Order.id)
        ).all()
        same_patient = [o for o in orders if not study.patient_id or o.patient.patient_id == study.patient_id]
        if len(same_patient) == 1:
            return _link(study, same_patient[0], f"accession number {study.accession_number}")
        if len(same_patient) > 1:
            reasons.append(f"accession number {study.accession_number} names {len(same_patient)} orders")
        elif orders:
            reasons.append(f"accession number {study.accession_number} belongs to patient "
                           f"{orders[0].patient.patient_id}, the study to {study.patient_id}")
        else:
            reasons.append(f"no order has accession number {study.accession_number}")
    else:
        reasons.append("the study has no accession number")
    proc = session.scalars(
        select(RequestedProcedure).where(RequestedProcedure.study_instance_uid == study.study_instance_uid)
    ).first()
    if proc is not None:
        order = proc.order
        if not study.patient_id or order.patient.patient_id == study.patient_id:
            return _link(study, order, f"study instance UID {study.study_instance_uid}")
        reasons.append(f"study instance UID matches order {order.accession_number} of another patient")
    else:
        reasons.append("no order has its study instance UID")
    study.order = None
    study.link_status = LinkStatus.UNMATCHED
    study.link_reason = "; ".join(reasons)[:255]
    session.flush()
    return None


def _link(study: Study, order: Order, how: str) -> Order:
    study.order = order
    study.link_status = LinkStatus.LINKED
    study.link_reason = f"linked by {how}"
    return order


def unmatched_studies(session: Session, limit: int = 100) -> list[Study]:
    return list(session.scalars(
        select(Study).where(Study.link_status == LinkStatus.UNMATCHED).order_by(Study.id.desc()).limit(limit)
    ))
