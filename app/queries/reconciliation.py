"""Read model of reconciliation: what the archive could not link, and the ranked candidates for a person to
choose from (IHE RAD TF-1 Scheduled Workflow, "patient/order reconciliation"; BUG-05, BUG-27).

- Unmatched studies: archived studies that are UNMATCHED or AMBIGUOUS (app.services.archive), each with its
  link reason and its candidate orders.
- Unmatched orders: orders whose steps were performed (an MPPS put one IN PROGRESS or COMPLETED) but that have
  no study; orders still scheduled for which an unmatched study is a candidate; orders with several studies.
- Unmatched performed steps: MPPS that named no known scheduled step, with candidate steps.

A candidate is never linked automatically, however well it fits: that is exactly the guess BUG-05 forbids.
Candidates are ranked by a score built from plain evidence, each piece given as a reason a person can check:
same patient (+40), same accession number (+30), same scheduled procedure step id (+30), a step of the study's
modality (+20; another modality -10), the step's scheduled time within ``window_hours`` of the study's date and
time (up to +20, less the further apart), a step still open (+10), an order that already has studies (-5 each).
An order of another patient is listed when it carries the study's accession number, as not linkable.
Cancelled and discontinued orders are never candidates.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session

from app.models import (LinkStatus, Order, OrderStatus, PerformedStep, Patient, ProcedureStep, RequestedProcedure,
                        Series, Study, StepStatus)
from app.services.patients import survivor_of

OPEN_STEPS = (StepStatus.SCHEDULED, StepStatus.ARRIVED, StepStatus.READY, StepStatus.IN_PROGRESS,
              StepStatus.HELD, StepStatus.UNSCHEDULED)
PERFORMED_STEPS = (StepStatus.IN_PROGRESS, StepStatus.COMPLETED)
CLOSED_ORDERS = (OrderStatus.CANCELLED, OrderStatus.DISCONTINUED)
WAITING = (LinkStatus.UNMATCHED, LinkStatus.AMBIGUOUS)
MAX_CANDIDATES = 10


@dataclass(frozen=True)
class Evidence:
    """What is known of the thing to place: a study, or a performed step."""

    patient_id: str
    accession_number: str = ""
    sps_id: str = ""
    modalities: tuple[str, ...] = ()
    at: dt.datetime | None = None        # site-local acquisition time (study date/time, MPPS start)


@dataclass
class Candidate:
    order: Order
    step: ProcedureStep | None
    score: int = 0
    reasons: list[str] = field(default_factory=list)
    linkable: bool = True


def dicom_datetime(date: str, time: str = "") -> dt.datetime | None:
    """A DICOM DA (+ TM) as a naive site-local datetime; None when the date is absent or not a date."""
    try:
        day = dt.datetime.strptime((date or "")[:8], "%Y%m%d")
    except ValueError:
        return None
    digits = (time or "").split(".")[0]
    if digits.isdigit() and len(digits) in (2, 4, 6):
        try:
            return day.replace(hour=int(digits[:2]), minute=int(digits[2:4] or 0), second=int(digits[4:6] or 0))
        except ValueError:
            return day
    return day


def _study_evidence(session: Session, study: Study) -> Evidence:
    modalities = tuple(sorted(m for (m,) in session.execute(
        select(Series.modality).where(Series.study_fk == study.id).distinct()) if m))
    return Evidence(study.patient_id, study.accession_number, study.sps_id, modalities,
                    dicom_datetime(study.study_date, study.study_time))


def _performed_evidence(performed: PerformedStep) -> Evidence:
    return Evidence(performed.patient_id, performed.accession_number, performed.sps_id,
                    (performed.modality,) if performed.modality else (), performed.started_at)


def _patients_orders(session: Session, patient_id: str) -> list[Order]:
    if not patient_id:
        return []
    owners = {survivor_of(p).id for p in session.scalars(select(Patient).where(Patient.patient_id == patient_id))}
    if not owners:
        return []
    return list(session.scalars(select(Order).where(Order.patient_fk.in_(owners), Order.status.notin_(CLOSED_ORDERS))
                                .order_by(Order.id)))


def score(evidence: Evidence, order: Order, window_hours: float) -> Candidate:
    """How well ``order`` fits ``evidence``, with the reasons (module docstring)."""
    steps = [s for p in order.procedures for s in p.steps]
    same_patient = bool(evidence.patient_id) and order.patient.patient_id == evidence.patient_id
    candidate = Candidate(order=order, step=None, linkable=same_patient or not evidence.patient_id)
    if same_patient:
        candidate.score += 40
        candidate.reasons.append(f"same patient {evidence.patient_id}")
    elif evidence.patient_id:
        candidate.reasons.append(f"order of patient {order.patient.patient_id}, the images are of "
                                 f"{evidence.patient_id}: never linked (correct the patient first)")
    if evidence.accession_number and evidence.accession_number == order.accession_number:
        candidate.score += 30
        candidate.reasons.append(f"same accession number {order.accession_number}")
    by_sps = [s for s in steps if evidence.sps_id and s.sps_id == evidence.sps_id]
    if by_sps:
        candidate.score += 30
        candidate.reasons.append(f"same scheduled procedure step id {evidence.sps_id}")
    fitting = [s for s in steps if s.modality in evidence.modalities]
    if fitting:
        candidate.score += 20
        candidate.reasons.append(f"modality {fitting[0].modality} matches step {fitting[0].sps_id}")
    elif evidence.modalities and steps:
        candidate.score -= 10
        candidate.reasons.append(f"modality {'/'.join(evidence.modalities)}, but the steps are "
                                 f"{'/'.join(sorted({s.modality for s in steps}))}")
    pool = by_sps or fitting or steps
    best = None
    if evidence.at is not None and pool:
        best = min(pool, key=lambda s: abs((s.scheduled_start - evidence.at).total_seconds()))
        hours = abs((best.scheduled_start - evidence.at).total_seconds()) / 3600
        if hours <= window_hours:
            points = round(20 * (1 - hours / window_hours)) if window_hours else 20
            candidate.score += points
            candidate.reasons.append(f"step {best.sps_id} scheduled {best.scheduled_start:%Y-%m-%d %H:%M}, "
                                     f"{hours:.1f} h from the acquisition")
        else:
            candidate.reasons.append(f"step {best.sps_id} scheduled {best.scheduled_start:%Y-%m-%d %H:%M}, "
                                     f"{hours:.0f} h from the acquisition (outside {window_hours:g} h)")
    if by_sps:
        candidate.step = by_sps[0]
    elif best is not None:
        candidate.step = best
    elif len(pool) == 1:
        candidate.step = pool[0]
    open_steps = [s for s in pool if s.status in OPEN_STEPS]
    if open_steps:
        candidate.score += 10
        candidate.reasons.append(f"step {open_steps[0].sps_id} is still {open_steps[0].status.value}")
    if order.studies:
        candidate.score -= 5 * len(order.studies)
        candidate.reasons.append(f"already has {len(order.studies)} stud{'y' if len(order.studies) == 1 else 'ies'}")
    return candidate


def _ranked(candidates: list[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (not c.linkable, -c.score, c.order.id))[:MAX_CANDIDATES]


def study_candidates(session: Session, study: Study, window_hours: float) -> list[Candidate]:
    """Ranked candidate orders for ``study``: the patient's open orders, the order of its accession number and
    the orders of its step id (another patient's listed as not linkable)."""
    evidence = _study_evidence(session, study)
    orders = _patients_orders(session, study.patient_id)
    if study.accession_number:
        orders += session.scalars(select(Order).where(Order.accession_number == study.accession_number,
                                                      Order.status.notin_(CLOSED_ORDERS)))
    if study.sps_id:
        orders += session.scalars(select(Order).join(Order.procedures).join(RequestedProcedure.steps)
                                  .where(ProcedureStep.sps_id == study.sps_id, Order.status.notin_(CLOSED_ORDERS)))
    orders = [o for o in dict.fromkeys(orders) if o is not study.order]
    return _ranked([score(evidence, order, window_hours) for order in orders])


def candidate_view(candidate: Candidate) -> dict:
    order, step = candidate.order, candidate.step
    return {"order_id": order.id, "accession_number": order.accession_number, "order_status": order.status.value,
            "patient_id": order.patient.patient_id, "patient_name": order.patient.name,
            "step_id": step.id if step is not None else None,
            "requested_procedure_id": step.procedure.requested_procedure_id if step is not None else "",
            "sps_id": step.sps_id if step is not None else "",
            "modality": step.modality if step is not None else "",
            "scheduled_start": step.scheduled_start.isoformat() if step is not None else None,
            "step_status": step.status.value if step is not None else "",
            "score": candidate.score, "linkable": candidate.linkable, "reasons": candidate.reasons}


def study_summary(session: Session, study: Study) -> dict:
    series = session.execute(select(Series.modality, func.count(Series.id)).where(Series.study_fk == study.id)
                             .group_by(Series.modality)).all()
    return {"study_instance_uid": study.study_instance_uid, "patient_id": study.patient_id,
            "patient_name": study.patient_name, "accession_number": study.accession_number,
            "study_date": study.study_date, "study_time": study.study_time, "description": study.description,
            "modalities": sorted(m for m, _ in series if m), "sps_id": study.sps_id,
            "requested_procedure_id": study.requested_procedure_id,
            "link_status": study.link_status.value, "link_reason": study.link_reason,
            "link_manual": study.link_manual, "order_id": study.order_fk,
            "order_accession_number": study.order.accession_number if study.order is not None else ""}


def unmatched_studies(session: Session, *, status: str = "", limit: int = 100, window_hours: float = 24.0) -> list[dict]:
    """Studies UNMATCHED or AMBIGUOUS (or only ``status``), newest first, each with ranked candidates."""
    statuses = (LinkStatus(status),) if status else WAITING
    studies = session.scalars(select(Study).where(Study.link_status.in_(statuses))
                              .order_by(Study.id.desc()).limit(limit)).all()
    return [{**study_summary(session, s),
             "candidates": [candidate_view(c) for c in study_candidates(session, s, window_hours)]}
            for s in studies]


def order_summary(order: Order) -> dict:
    return {"order_id": order.id, "accession_number": order.accession_number, "status": order.status.value,
            "patient_id": order.patient.patient_id, "patient_name": order.patient.name,
            "placer_order_number": order.placer_order_number,
            "steps": [{"requested_procedure_id": p.requested_procedure_id, "sps_id": s.sps_id,
                       "modality": s.modality, "status": s.status.value,
                       "scheduled_start": s.scheduled_start.isoformat() if s.scheduled_start else None}
                      for p in order.procedures for s in p.steps],
            "study_instance_uids": [s.study_instance_uid for s in order.studies]}


def _study_candidates_for(session: Session, order: Order, window_hours: float) -> list[dict]:
    """Waiting studies that could be ``order``'s, ranked by the same evidence."""
    patient_ids = {order.patient.patient_id}
    claims = [Study.patient_id.in_(patient_ids)]
    if order.accession_number:
        claims.append(Study.accession_number == order.accession_number)
    studies = session.scalars(select(Study).where(Study.link_status.in_(WAITING), or_(*claims))
                              .order_by(Study.id).limit(50)).all()
    ranked = []
    for study in studies:
        candidate = score(_study_evidence(session, study), order, window_hours)
        ranked.append((not candidate.linkable, -candidate.score, study.id, study, candidate))
    ranked.sort(key=lambda r: r[:3])
    return [{**study_summary(session, study), "score": c.score, "linkable": c.linkable, "reasons": c.reasons}
            for *_, study, c in ranked[:MAX_CANDIDATES]]


def unmatched_orders(session: Session, *, limit: int = 100, window_hours: float = 24.0) -> dict:
    """Orders that reconciliation should look at, in three lists (module docstring), newest first."""
    has_study = exists().where(Study.order_fk == Order.id, Study.link_status == LinkStatus.LINKED)
    performed = session.scalars(
        select(Order).join(Order.procedures).join(RequestedProcedure.steps)
        .where(ProcedureStep.status.in_(PERFORMED_STEPS), ~has_study, Order.status.notin_(CLOSED_ORDERS))
        .distinct().order_by(Order.id.desc()).limit(limit)).all()
    waiting_patients = [pid for (pid,) in session.execute(
        select(Study.patient_id).where(Study.link_status.in_(WAITING), Study.patient_id != "").distinct().limit(500))]
    waiting_accessions = [acc for (acc,) in session.execute(
        select(Study.accession_number).where(Study.link_status.in_(WAITING), Study.accession_number != "")
        .distinct().limit(500))]
    scheduled: list[Order] = []
    if waiting_patients or waiting_accessions:
            scheduled = session.scalars(
            select(Order).join(Order.patient).join(Order.procedures).join(RequestedProcedure.steps)
            .where(ProcedureStep.status.in_((StepStatus.SCHEDULED, StepStatus.ARRIVED, StepStatus.READY)), ~has_study,
                   or_(Patient.patient_id.in_(waiting_patients), Order.accession_number.in_(waiting_accessions)))
            .distinct().order_by(Order.id.desc()).limit(limit)).all()
    several = session.scalars(
        select(Order).join(Study, Study.order_fk == Order.id).where(Study.link_status == LinkStatus.LINKED)
        .group_by(Order.id).having(func.count(Study.id) > 1).order_by(Order.id.desc()).limit(limit)).all()
    several = [o for o in several if any(s.study_instance_uid not in {p.study_instance_uid for p in o.procedures}
                                         for s in o.studies)]
    ambiguous = session.scalars(
        select(Order).join(Study, Study.accession_number == Order.accession_number)
        .where(Study.link_status == LinkStatus.AMBIGUOUS).distinct().order_by(Order.id.desc()).limit(limit)).all()
    return {
        "performed_without_images": [{**order_summary(o), "candidates": _study_candidates_for(session, o, window_hours)}
                                     for o in performed],
        "scheduled_with_candidates": [{**order_summary(o), "candidates": _study_candidates_for(session, o, window_hours)}
                                      for o in scheduled
                                      if _study_candidates_for(session, o, window_hours)],
        "several_studies": [{**order_summary(o), "studies": [study_summary(session, s) for s in _claimants(session, o)]}
                            for o in dict.fromkeys([*several, *ambiguous])],
    }


def _claimants(session: Session, order: Order) -> list[Study]:
    ambiguous = session.scalars(select(Study).where(Study.accession_number == order.accession_number,
                                                    Study.link_status == LinkStatus.AMBIGUOUS)).all()
    return list(dict.fromkeys([*order.studies, *ambiguous]))


def step_candidates(session: Session, performed: PerformedStep, window_hours: float) -> list[Candidate]:
    evidence = _performed_evidence(performed)
    orders = _patients_orders(session, performed.patient_id)
    if performed.accession_number:
        orders += session.scalars(select(Order).where(Order.accession_number == performed.accession_number,
                                                      Order.status.notin_(CLOSED_ORDERS)))
    return _ranked([score(evidence, order, window_hours) for order in dict.fromkeys(orders)])


def performed_view(performed: PerformedStep) -> dict:
    return {"sop_instance_uid": performed.sop_instance_uid, "status": performed.status.value,
            "patient_id": performed.patient_id, "patient_name": performed.patient_name,
            "accession_number": performed.accession_number, "sps_id": performed.sps_id,
            "study_instance_uid": performed.study_instance_uid, "modality": performed.modality,
            "station_aet": performed.station_aet, "description": performed.description,
            "started_at": performed.started_at.isoformat() if performed.started_at else None,
            "ended_at": performed.ended_at.isoformat() if performed.ended_at else None,
            "step_sps_id": performed.step.sps_id if performed.step is not None else "",
            "series": [{"series_instance_uid": s.series_instance_uid, "description": s.description,
                        "protocol_name": s.protocol_name, "retrieve_aet": s.retrieve_aet, "operator": s.operator,
                        "instances": len(s.instances)} for s in performed.series]}


def unmatched_performed_steps(session: Session, *, limit: int = 100, window_hours: float = 24.0) -> list[dict]:
    """Performed steps linked to no scheduled step, newest first, with candidate steps."""
    rows = session.scalars(select(PerformedStep).where(PerformedStep.step_fk.is_(None))
                           .order_by(PerformedStep.id.desc()).limit(limit)).all()
    return [{**performed_view(p), "candidates": [candidate_view(c) for c in step_candidates(session, p, window_hours)]}
            for p in rows]
