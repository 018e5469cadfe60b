"""Reconciliation by a person: link a study to an order, unlink it, link a performed step to a scheduled step
(IHE RAD TF-1 Scheduled Workflow, "image acquisition without a worklist item" / "patient and order
reconciliation"; BUG-05). What to choose from is in app.queries.reconciliation; every change here is recorded
in the audit trail (app.services.audit) with who, why, and the values before and after.

Linking a study (:func:`link_study`) is the manual counterpart of the automatic linking of
app.services.archive, with the same guard: a study is never linked to an order of another patient (correct
the patient first: ADT A40 merge or A47; the study is relabelled with the patient). The link

- gives the study, in the archive index, the order's accession number and the request attributes of the
  requested procedure it performs (Requested Procedure ID, Scheduled Procedure Step ID) and the order's
  patient demographics; instances leave the archive with these values (coercion on the way out,
  interfaces.dicom.coercion), the files stay as received;
- completes the procedure: its open steps are COMPLETED, the procedure COMPLETED, the order settled, each change
  reported to the HIS (app.services.tracking.complete_from_images), so the worklist item is no longer offered;
- marks the study ``link_manual``: automatic linking leaves it alone from then on.

Unlinking (:func:`unlink_study`) detaches the study and gives it back the accession number and request
identifiers it was received with; what the link did to the order (a completed procedure) stays, because a
performed procedure does not become unperformed; the study is held as UNMATCHED for a new decision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.commands import Cause
from app.errors import Conflict, InvalidInput, NotFound
from app.models import LinkStatus, Order, PerformedStep, ProcedureStep, RequestedProcedure, Series, Study
from app.services import audit, tracking
from app.services.archive import CLOSED_ORDERS, _merged_into, procedure_of


@dataclass(frozen=True)
class Actor:
    """Who reconciles, for the audit trail and the causes recorded with the changes."""

    username: str = ""
    role: str = ""
    source: str = ""
    channel: str = "api"


def _study(session: Session, study_uid: str) -> Study:
    study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
    if study is None:
        raise NotFound(f"no archived study {study_uid}", location="study_instance_uid")
    return study


def _order(session: Session, order_id: int | None, accession: str) -> Order:
    if order_id is None and not accession:
        raise InvalidInput("name the order: order_id or accession_number", location="order_id", missing=True)
    if order_id is not None:
        order = session.get(Order, order_id)
        if order is None:
            raise NotFound(f"no order {order_id}", location="order_id")
        if accession and order.accession_number != accession:
            raise InvalidInput(f"order {order_id} has accession number {order.accession_number}, not {accession}",
                               location="accession_number")
        return order
    order = session.scalars(select(Order).where(Order.accession_number == accession).order_by(Order.id)).first()
    if order is None:
        raise NotFound(f"no order has accession number {accession}", location="accession_number")
    return order


def _check_patient(session: Session, patient_id: str, order: Order, what: str) -> None:
    owner = order.patient.patient_id
    if patient_id and owner != patient_id and not _merged_into(session, patient_id, owner):
        raise Conflict(f"{what} is of patient {patient_id}, order {order.accession_number} of patient {owner}: "
                       "images and performed steps are never linked to another patient's order; correct the patient "
                       "first (ADT A40 merge or A47)", location="patient_id")


def _snapshot(study: Study) -> dict:
    return {"order": study.order.accession_number if study.order is not None else "",
            "link_status": study.link_status.value, "accession_number": study.accession_number,
            "requested_procedure_id": study.requested_procedure_id, "sps_id": study.sps_id,
            "patient_name": study.patient_name, "patient_birth_date": study.patient_birth_date,
            "patient_sex": study.patient_sex}


def link_study(session: Session, study_uid: str, *, actor: Actor, order_id: int | None = None,
               accession: str = "", requested_procedure_id: str = "", reason: str = "") -> Study:
    """Link a study to an order by hand (module docstring). Linking it again to the same order changes nothing."""
    study = _study(session, study_uid)
    order = _order(session, order_id, accession)
    if study.order is order and study.link_status is LinkStatus.LINKED:
        return study
    if study.order is not None:
        raise Conflict(f"study {study_uid} is linked to order {study.order.accession_number}; unlink it first",
                       location="study_instance_uid")
    if order.status in CLOSED_ORDERS:
        raise Conflict(f"order {order.accession_number} is {order.status.value}: no study can be linked to it",
                       location="order_id")
    _check_patient(session, study.patient_id, order, f"study {study_uid}")
    proc, step = _procedure(session, study, order, requested_procedure_id)
    before = _snapshot(study)
    patient = order.patient
    study.accession_number = order.accession_number
    study.requested_procedure_id = proc.requested_procedure_id[:64]
    study.sps_id = (step.sps_id if step is not None else "")[:64]
    study.patient_name = patient.name or study.patient_name
    study.patient_birth_date = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else study.patient_birth_date
    study.patient_sex = patient.sex or study.patient_sex
    study.order = order
    study.link_status = LinkStatus.LINKED
    study.link_manual = True
    study.link_reason = f"linked by {actor.username or 'a person'}" + (f": {reason}" if reason else "")
    study.link_reason = study.link_reason[:255]
    cause = Cause("user", reference=f"study {study_uid}", sender=actor.username)
    tracking.complete_from_images(session, proc, list(proc.steps), cause)
    _audit(session, actor, study, "link", reason, before)
    session.flush()
    return study


def _procedure(session: Session, study: Study, order: Order,
               requested_procedure_id: str) -> tuple[RequestedProcedure, ProcedureStep | None]:
    if requested_procedure_id:
        proc = next((p for p in order.procedures if p.requested_procedure_id == requested_procedure_id), None)
        if proc is None:
            raise NotFound(f"order {order.accession_number} has no requested procedure {requested_procedure_id}",
                           location="requested_procedure_id")
        modalities = _modalities(session, study)
        steps = [s for s in proc.steps if s.modality in modalities] or list(proc.steps)
        return proc, steps[0] if len(steps) == 1 else None
    proc, step = procedure_of(order, study.study_instance_uid, study.sps_id, study.requested_procedure_id,
                              _modalities(session, study))
    if proc is None:
        raise InvalidInput(f"order {order.accession_number} has {len(order.procedures)} requested procedures; say "
                           "which one the study performs (requested_procedure_id)", location="requested_procedure_id",
                           missing=True)
    return proc, step


def _modalities(session: Session, study: Study) -> tuple[str, ...]:
    return tuple(sorted(m for (m,) in session.execute(
        select(Series.modality).where(Series.study_fk == study.id).distinct()) if m))


def unlink_study(session: Session, study_uid: str, *, actor: Actor, reason: str = "") -> Study:
    """Detach a linked study from its order by hand (module docstring); Conflict when it is not linked."""
    study = _study(session, study_uid)
    if study.order is None:
        raise Conflict(f"study {study_uid} is not linked to an order", location="study_instance_uid")
    before = _snapshot(study)
    received = study.received or {}
    study.accession_number = received.get("accession_number", "")[:16]
    study.requested_procedure_id = received.get("requested_procedure_id", "")[:64]
    study.sps_id = received.get("sps_id", "")[:64]
    study.order = None
    study.link_status = LinkStatus.UNMATCHED
    study.link_manual = True
    study.link_reason = (f"unlinked by {actor.username or 'a person'}" + (f": {reason}" if reason else ""))[:255]
    _audit(session, actor, study, "unlink", reason, before)
    session.flush()
    return study


def _audit(session: Session, actor: Actor, study: Study, what: str, reason: str, before: dict) -> None:
    detail = {"reconciliation": what, "study_instance_uid": study.study_instance_uid, "reason": reason,
              "before": before, "after": _snapshot(study)}
    audit.record(session, "change", username=actor.username, role=actor.role, entity="study",
                 entity_id=study.study_instance_uid, patient_key=study.patient_id, detail=json.dumps(detail),
                 source=actor.source, channel=actor.channel)


def link_performed(session: Session, sop_uid: str, *, actor: Actor, step_id: int | None = None, sps_id: str = "",
                   accession: str = "", reason: str = "") -> PerformedStep:
    """Link a performed step recorded without a scheduled step to one (by its id, or its SPS ID within the order
    of ``accession``) and apply what it reported (app.services.tracking.link_performed_step). Never to a step of
    another patient's order."""
    performed = session.scalars(select(PerformedStep).where(PerformedStep.sop_instance_uid == sop_uid)).first()
    if performed is None:
        raise NotFound(f"no performed procedure step {sop_uid}", location="sop_instance_uid")
    step = _step(session, step_id, sps_id, accession)
    order = step.procedure.order
    if order.status in CLOSED_ORDERS:
        raise Conflict(f"order {order.accession_number} is {order.status.value}: its steps cannot be performed",
                       location="step_id")
    _check_patient(session, performed.patient_id, order, f"performed procedure step {sop_uid}")
    cause = Cause("user", reference=f"mpps {sop_uid}", sender=actor.username)
    tracking.link_performed_step(session, performed, step, cause)
    detail = {"reconciliation": "link-performed-step", "sop_instance_uid": sop_uid, "reason": reason,
              "step": {"sps_id": step.sps_id, "accession_number": order.accession_number,
                       "status": step.status.value}}
    audit.record(session, "change", username=actor.username, role=actor.role, entity="performed_step",
                 entity_id=sop_uid, patient_key=order.patient.patient_id, detail=json.dumps(detail),
                 source=actor.source, channel=actor.channel)
    session.flush()
    return performed


def _step(session: Session, step_id: int | None, sps_id: str, accession: str) -> ProcedureStep:
    if step_id is not None:
        step = session.get(ProcedureStep, step_id)
        if step is None:
            raise NotFound(f"no scheduled procedure step {step_id}", location="step_id")
        return step
    if not sps_id:
        raise InvalidInput("name the scheduled step: step_id, or sps_id (with accession_number)", location="step_id",
                           missing=True)
    q = (select(ProcedureStep).join(ProcedureStep.procedure).join(RequestedProcedure.order)
         .where(ProcedureStep.sps_id == sps_id))
    if accession:
        q = q.where(Order.accession_number == accession)
    steps = session.scalars(q.order_by(ProcedureStep.id)).all()
    if not steps:
        raise NotFound(f"no scheduled procedure step {sps_id}" + (f" in order {accession}" if accession else ""),
                       location="sps_id")
    if len(steps) > 1:
        raise InvalidInput(f"{len(steps)} steps have id {sps_id}; give accession_number or step_id",
                           location="sps_id")
    return steps[0]
