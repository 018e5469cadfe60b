"""Archive index and study-to-order linking (IHE RAD-8 Modality Images Stored).

Every stored instance is indexed by patient, study, series and instance. A study is linked to
its order by accession number, else by Study Instance UID (the UID the worklist gave it);
otherwise it is kept and listed as UNMATCHED, never rejected. Linking by accession checks the
patient: a study whose Patient ID differs from the order's patient is never linked (BUG-27), it
stays UNMATCHED with the reason. A study stored before its order is linked when the order is placed
(:func:`link_waiting_studies`, called by app.services.orders.place_order).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.commands import InstanceData
from app.errors import Conflict
from app.models import Instance, LinkStatus, Order, Patient, RequestedProcedure, Series, Study
from app.storage import ArchiveStore


class ResentPolicy(str, enum.Enum):
    """What a re-sent SOP Instance (its UID already archived) does (setting dicom_resent_instance)."""

    REPLACE = "replace"   # the new file and header replace the archived ones
    IGNORE = "ignore"     # the archived copy is kept; the sender is told it is stored
    REJECT = "reject"     # refused (Conflict)


def admit_instance(session: Session, store: ArchiveStore, sop_instance_uid: str, policy: ResentPolicy) -> bool:
    """Whether a received instance is to be written and indexed; Conflict when ``policy`` rejects it.

    An instance counts as archived only when it is indexed and its file is present: an index entry whose
    file is gone is replaced whatever the policy, so that the archive heals.
    """
    if policy is ResentPolicy.REPLACE:
        return True
    archived = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)).first()
    if archived is None or not store.absolute(archived.path).is_file():
        return True
    if policy is ResentPolicy.REJECT:
        raise Conflict("SOP Instance already archived (re-sent instances are rejected)", location="SOPInstanceUID")
    return False


class CommitmentFailure(str, enum.Enum):
    """Why an instance is not committed (PS3.4 J.3.3.1.1.2; the DICOM edge gives the Failure Reason)."""

    NOT_STORED = "NOT_STORED"            # not indexed, or its file is missing or truncated
    CLASS_CONFLICT = "CLASS_CONFLICT"    # archived under another SOP Class UID


@dataclass(frozen=True)
class CommitmentResult:
    committed: list[tuple[str, str]] = field(default_factory=list)                       # (class, instance)
    failed: list[tuple[str, str, CommitmentFailure]] = field(default_factory=list)


def check_commitment(session: Session, store: ArchiveStore, references: list[tuple[str, str]]) -> CommitmentResult:
    """Storage commitment (PS3.4 J.3.2, IHE RAD-10): an instance is committed only when it is durably stored,
    that is indexed with the same SOP Class and its file present with the indexed size (files are fsynced
    before they are indexed, app.storage)."""
    uids = [uid for _, uid in references]
    archived: dict[str, Instance] = {}
    for start in range(0, len(uids), 500):
        for inst in session.scalars(select(Instance).where(Instance.sop_instance_uid.in_(uids[start:start + 500]))):
            archived[inst.sop_instance_uid] = inst
    result = CommitmentResult()
    for sop_class, uid in references:
        inst = archived.get(uid)
        if inst is not None and inst.sop_class_uid != sop_class:
            result.failed.append((sop_class, uid, CommitmentFailure.CLASS_CONFLICT))
        elif inst is None or not _file_intact(store, inst):
            result.failed.append((sop_class, uid, CommitmentFailure.NOT_STORED))
        else:
            result.committed.append((sop_class, uid))
    return result


def _file_intact(store: ArchiveStore, inst: Instance) -> bool:
    try:
        return store.absolute(inst.path).stat().st_size == inst.size
    except OSError:
        return False


def check_identity(session: Session, data: InstanceData) -> None:
    """Refuse an instance that contradicts what the archive already holds (Conflict naming both values).

    UIDs are unique worldwide (DICOM PS3.5 9), and patient and accession number are attributes of the study
    (PS3.3 C.7.1.1, C.7.2.1): a study archived for one patient never takes instances of another, a series
    never moves to another study, a SOP instance never to another series. Without this a later instance
    would silently relabel a study that is linked to another patient's order. An instance naming a patient
    who was merged into the study's patient (ADT A40) is accepted: the study keeps the surviving patient.
    Runs before the file is written (a refused instance must not overwrite an archived file) and again
    inside the indexing transaction.
    """
    study = session.scalars(select(Study).where(Study.study_instance_uid == data.study_instance_uid)).first()
    if study is not None:
        if (data.patient_id and study.patient_id and data.patient_id != study.patient_id
                and not _merged_into(session, data.patient_id, study.patient_id)):
            raise Conflict(f"study {data.study_instance_uid} is archived for patient {study.patient_id}; this "
                           f"instance names patient {data.patient_id}", location="PatientID")
        if data.accession_number and study.accession_number and data.accession_number != study.accession_number:
            raise Conflict(f"study {data.study_instance_uid} is archived with accession number "
                           f"{study.accession_number}; this instance names {data.accession_number}",
                           location="AccessionNumber")
    series = session.scalars(select(Series).where(Series.series_instance_uid == data.series_instance_uid)).first()
    if series is not None and series.study.study_instance_uid != data.study_instance_uid:
        raise Conflict(f"series {data.series_instance_uid} belongs to study {series.study.study_instance_uid}; "
                       f"this instance names study {data.study_instance_uid}", location="SeriesInstanceUID")
    instance = session.scalars(select(Instance).where(Instance.sop_instance_uid == data.sop_instance_uid)).first()
    if instance is not None and instance.series.series_instance_uid != data.series_instance_uid:
        raise Conflict(f"SOP instance {data.sop_instance_uid} is archived in series "
                       f"{instance.series.series_instance_uid}; this copy names series {data.series_instance_uid}",
                       location="SeriesInstanceUID")


def _merged_into(session: Session, old_patient_id: str, survivor_patient_id: str) -> bool:
    """Whether a patient with identifier ``old_patient_id`` was merged (perhaps over several steps) into one
    with ``survivor_patient_id``."""
    for patient in session.scalars(select(Patient).where(Patient.patient_id == old_patient_id)):
        seen = 0
        while patient.merged_into is not None and seen < 20:
            patient, seen = patient.merged_into, seen + 1
            if patient.patient_id == survivor_patient_id:
                return True
    return False


def index_instance(session: Session, data: InstanceData) -> tuple[Instance, bool]:
    """Index one stored instance; returns (instance, created). A re-sent instance replaces the entry.

    Study attributes are kept from the instances already archived; later instances only fill what is empty
    (:func:`check_identity` refuses one that contradicts the study's patient or accession number).
    """
    check_identity(session, data)
    study = session.scalars(select(Study).where(Study.study_instance_uid == data.study_instance_uid)).first()
    if study is None:
        study = Study(study_instance_uid=data.study_instance_uid)
        session.add(study)
    study.patient_id = study.patient_id or data.patient_id or ""
    study.issuer = study.issuer or data.issuer or ""
    study.patient_name = study.patient_name or data.patient_name or ""
    study.patient_birth_date = study.patient_birth_date or data.patient_birth_date or ""
    study.patient_sex = study.patient_sex or data.patient_sex or ""
    study.accession_number = study.accession_number or data.accession_number or ""
    study.study_id = study.study_id or data.study_id or ""
    study.referring_physician = study.referring_physician or data.referring_physician or ""
    study.study_date = study.study_date or data.study_date or ""
    study.study_time = study.study_time or data.study_time or ""
    study.description = study.description or data.study_description or ""

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


def link_waiting_studies(session: Session, order: Order) -> list[Study]:
    """Link the UNMATCHED studies that name ``order`` (accession number or a procedure's Study Instance UID):
    images that arrived before their order are linked when it arrives (IHE RAD TF-1 Scheduled Workflow,
    "images stored before the order"). Each goes through :func:`link_study`, so the patient check holds."""
    uids = [p.study_instance_uid for p in order.procedures if p.study_instance_uid]
    named = [Study.study_instance_uid.in_(uids)] if uids else []
    if order.accession_number:
        named.append(Study.accession_number == order.accession_number)
    if not named:
        return []
    waiting = session.scalars(select(Study).where(Study.link_status == LinkStatus.UNMATCHED, or_(*named))
                              .order_by(Study.id)).all()
    return [study for study in waiting if link_study(session, study) is not None]


def _link(study: Study, order: Order, how: str) -> Order:
    study.order = order
    study.link_status = LinkStatus.LINKED
    study.link_reason = f"linked by {how}"
    return order


def unmatched_studies(session: Session, limit: int = 100) -> list[Study]:
    return list(session.scalars(
        select(Study).where(Study.link_status == LinkStatus.UNMATCHED).order_by(Study.id.desc()).limit(limit)
    ))
