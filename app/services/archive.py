"""Archive index and study-to-order linking (IHE RAD TF-2 RAD-8 Modality Images Stored; RAD TF-1 Scheduled
Workflow, "image acquisition without a worklist item" and "patient and order reconciliation").

Every stored instance is indexed by patient, study, series and instance. A study is linked to its order
automatically, by what the images say about it, in this order (:func:`find_link`):

1. the Accession Number (0008,0050);
2. the Study Instance UID, when it is the one the order filler gave a requested procedure (the worklist's);
3. the Scheduled Procedure Step ID, then the Requested Procedure ID, of the Request Attributes Sequence
   (0040,0275).

Each rule checks the patient: a study whose Patient ID differs from the order's patient is never linked
(BUG-27). A study that fits no rule is kept and listed as UNMATCHED with the reason, never rejected and never
linked on a guess: ranked candidates (same patient, modality, time window) are offered to a person by
app.queries.reconciliation, and a person links it (app.services.reconciliation). A study stored before its
order is linked when the order is placed (:func:`link_waiting_studies`, called by app.services.orders).

Several studies for one order (BUG-27): when a study of the order's patient claims an order that another study
already claims, the order has several studies, and every study concerned says so in its link reason (the
reconciliation API lists the order under "several studies"). The setting ``dicom_accession_studies``
(:class:`AccessionStudies`) says what else happens: ``link-all`` links each of them; ``flag`` links none of them
automatically but the order's own study (one carrying a procedure's Study Instance UID) and a person's choice:
the others are AMBIGUOUS, naming the rest, until a person decides. Nothing is ever chosen by "first row" order:
the outcome is the same whichever study arrives first.

A study a person linked or unlinked (``link_manual``) is left alone by automatic linking.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sqlalchemy import bindparam, insert, or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.commands import InstanceData
from app.errors import Conflict
from app.models import (Instance, LinkStatus, Order, OrderStatus, Patient, ProcedureStep, RequestedProcedure, Series,
                        Study, utcnow)
from app.storage import ArchiveStore

POLICY_KEY = "ris.archive.accession_studies"
CLOSED_ORDERS = (OrderStatus.CANCELLED, OrderStatus.DISCONTINUED)
REASON_LIMIT = 255


class ResentPolicy(str, enum.Enum):
    """What a re-sent SOP Instance (its UID already archived) does (setting dicom_resent_instance)."""

    REPLACE = "replace"   # the new file and header replace the archived ones
    IGNORE = "ignore"     # the archived copy is kept; the sender is told it is stored
    REJECT = "reject"     # refused (Conflict)


class AccessionStudies(str, enum.Enum):
    """Several studies of one patient claiming one order (setting dicom_accession_studies, BUG-27)."""

    LINK_ALL = "link-all"
    FLAG = "flag"


def configure(session_factory: sessionmaker, accession_studies: AccessionStudies) -> None:
    """Let every session of ``session_factory`` link by ``accession_studies`` (default: link-all)."""
    info = dict(session_factory.kw.get("info") or {})
    info[POLICY_KEY] = AccessionStudies(accession_studies)
    session_factory.configure(info=info)


def _policy(session: Session) -> AccessionStudies:
    return session.info.get(POLICY_KEY, AccessionStudies.LINK_ALL)


def admit_instance(session: Session, store: ArchiveStore, sop_instance_uid: str, policy: ResentPolicy,
                   archived: Instance | None = None) -> bool:
    """Whether a received instance is to be written and indexed; Conflict when ``policy`` rejects it.

    An instance counts as archived only when it is indexed and its file is present: an index entry whose
    file is gone is replaced whatever the policy, so that the archive heals. ``archived`` is the index entry
    when the caller has it already.
    """
    if policy is ResentPolicy.REPLACE:
        return True
    if archived is None:
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
    that is indexed with the same SOP Class and its file present with the indexed size (C-STORE success is
    answered only when both the index entry and the file are durable; a file lost in a crash before that
    answer is missing or short, and so not committed)."""
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


@dataclass
class Archived:
    """The index entries an instance's UIDs name (any may be None)."""

    study: Study | None
    series: Series | None
    instance: Instance | None


def archived_entries(session: Session, data: InstanceData) -> Archived:
    return Archived(
        session.scalars(select(Study).where(Study.study_instance_uid == data.study_instance_uid)).first(),
        session.scalars(select(Series).where(Series.series_instance_uid == data.series_instance_uid)).first(),
        session.scalars(select(Instance).where(Instance.sop_instance_uid == data.sop_instance_uid)).first())


def check_identity(session: Session, data: InstanceData, found: Archived | None = None) -> Archived:
    """Refuse an instance that contradicts what the archive already holds (Conflict naming both values);
    returns the index entries its UIDs name.

    UIDs are unique worldwide (DICOM PS3.5 9), and patient and accession number are attributes of the study
    (PS3.3 C.7.1.1, C.7.2.1): a study archived for one patient never takes instances of another, a series
    never moves to another study, a SOP instance never to another series. Without this a later instance
    would silently relabel a study that is linked to another patient's order. An instance naming a patient
    who was merged into the study's patient (ADT A40) is accepted: the study keeps the surviving patient; so
    is one bringing the accession number the study had before a person linked it to an order (the archive
    changed it, not the modality).
    """
    found = found or archived_entries(session, data)
    study = found.study
    if study is not None:
        if (data.patient_id and study.patient_id and data.patient_id != study.patient_id
                and not _merged_into(session, data.patient_id, study.patient_id)):
            raise Conflict(f"study {data.study_instance_uid} is archived for patient {study.patient_id}; this "
                           f"instance names patient {data.patient_id}", location="PatientID")
        if (data.accession_number and study.accession_number and data.accession_number != study.accession_number
                and data.accession_number != (study.received or {}).get("accession_number")):
            raise Conflict(f"study {data.study_instance_uid} is archived with accession number "
                           f"{study.accession_number}; this instance names {data.accession_number}",
                           location="AccessionNumber")
    series = found.series
    if series is not None and series.study.study_instance_uid != data.study_instance_uid:
        raise Conflict(f"series {data.series_instance_uid} belongs to study {series.study.study_instance_uid}; "
                       f"this instance names study {data.study_instance_uid}", location="SeriesInstanceUID")
    instance = found.instance
    if instance is not None and instance.series.series_instance_uid != data.series_instance_uid:
        raise Conflict(f"SOP instance {data.sop_instance_uid} is archived in series "
                       f"{instance.series.series_instance_uid}; this copy names series {data.series_instance_uid}",
                       location="SeriesInstanceUID")
    return found


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


_STUDY_FIELDS = (("patient_id", "patient_id"), ("issuer", "issuer"), ("patient_name", "patient_name"),
                 ("patient_birth_date", "patient_birth_date"), ("patient_sex", "patient_sex"),
                 ("accession_number", "accession_number"), ("study_id", "study_id"),
                 ("referring_physician", "referring_physician"), ("study_date", "study_date"),
                 ("study_time", "study_time"), ("description", "study_description"),
                 ("requested_procedure_id", "requested_procedure_id"), ("sps_id", "sps_id"))
_LINK_FIELDS = ("accession_number", "requested_procedure_id", "sps_id", "patient_id")


def index_instance(session: Session, data: InstanceData, found: Archived | None = None) -> tuple[Instance, bool]:
    """Index one stored instance; returns (instance, created). A re-sent instance replaces the entry.

    Study attributes are kept from the instances already archived; later instances only fill what is empty
    (:func:`check_identity` refuses one that contradicts the study's patient or accession number). The study
    is (re)linked when it is new or an instance filled one of the attributes linking uses.
    """
    found = check_identity(session, data, found)
    study = found.study
    new_study = study is None
    if new_study:
        study = Study(study_instance_uid=data.study_instance_uid, link_status=LinkStatus.UNMATCHED)
        session.add(study)
    filled = False
    for column, attribute in _STUDY_FIELDS:
        value = getattr(data, attribute) or ""
        if value and not getattr(study, column):
            setattr(study, column, value)
            filled = filled or column in _LINK_FIELDS
        elif new_study:
            setattr(study, column, getattr(study, column) or "")
    received = dict(study.received or {})
    for column in ("accession_number", "requested_procedure_id", "sps_id"):
        if not received.get(column):
            received[column] = getattr(data, column) or ""
    if received != (study.received or {}):
        study.received = received

    series = found.series
    if series is None:
        series = Series(series_instance_uid=data.series_instance_uid, study=study)
        session.add(series)
    for column, attribute in (("modality", "modality"), ("series_number", "series_number"),
                              ("description", "series_description")):
        value = getattr(data, attribute) or getattr(series, column) or ""
        if getattr(series, column) != value:
            setattr(series, column, value)

    instance = found.instance
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
    if (new_study or filled) and study.link_status is not LinkStatus.LINKED and not study.link_manual:
        session.flush()
        link_study(session, study)
    return instance, created


# The next instance of an archived series: the common case of a C-STORE, by prepared statements -------------
_INSTANCE_OF = select(Instance.id).where(Instance.sop_instance_uid == bindparam("sop_uid")).scalar_subquery()
_SERIES_OF = (select(Series.id, Series.modality, Series.series_number, Series.description, Study.study_instance_uid,
                     Study.received, _INSTANCE_OF.label("archived_instance"),
                     *[getattr(Study, column) for column, _ in _STUDY_FIELDS])
              .join(Study, Series.study_fk == Study.id)
              .where(Series.series_instance_uid == bindparam("series_uid")))
_ADD_INSTANCE = insert(Instance.__table__)


def next_instance_of_series(session: Session, data: InstanceData) -> int | None:
    """The series id when ``data`` is a new instance of a series the archive holds, in the same study, agreeing
    with the study's patient and accession number, bringing no study or series attribute the index lacks: then
    :func:`add_instance` indexes it with one INSERT. None otherwise (use :func:`index_instance`, which also
    refuses contradictions)."""
    row = session.connection().execute(         # one Core statement, no ORM round trip
        _SERIES_OF, {"series_uid": data.series_instance_uid, "sop_uid": data.sop_instance_uid}).first()
    if row is None or row.study_instance_uid != data.study_instance_uid or row.archived_instance is not None:
        return None
    for column, attribute in _STUDY_FIELDS:
        value, archived = getattr(data, attribute) or "", getattr(row, column)
        if value and value != archived and not (column == "accession_number"
                                                and value == (row.received or {}).get("accession_number")):
            return None        # something to fill, or a contradiction for index_instance to refuse
    if any((getattr(data, attribute) or getattr(row, column) or "") != getattr(row, column)
           for column, attribute in (("modality", "modality"), ("series_number", "series_number"),
                                     ("description", "series_description"))):
        return None
    return row.id


def add_instance(session: Session, series_id: int, data: InstanceData) -> None:
    session.connection().execute(_ADD_INSTANCE, {"series_fk": series_id, "sop_instance_uid": data.sop_instance_uid,
                                    "sop_class_uid": data.sop_class_uid, "transfer_syntax_uid": data.transfer_syntax_uid,
                                    "instance_number": data.instance_number, "path": data.path, "size": data.size,
                                    "calling_aet": data.calling_aet, "created_at": utcnow()})


# Linking ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """What a study (or an instance about to be stored) says about its order."""

    study_instance_uid: str
    patient_id: str = ""
    accession_number: str = ""
    sps_id: str = ""
    requested_procedure_id: str = ""

    @classmethod
    def of(cls, item: Study | InstanceData) -> "Claim":
        return cls(item.study_instance_uid, item.patient_id or "", item.accession_number or "", item.sps_id or "",
                   item.requested_procedure_id or "")


@dataclass
class Finding:
    """The order a claim names (or None), how, and why no other rule linked it."""

    order: Order | None = None
    how: str = ""
    by_uid: bool = False          # the claim carries one of the order's Study Instance UIDs
    reasons: list[str] = field(default_factory=list)


def _same_patient(session: Session, claim: Claim, order: Order) -> bool:
    owner = order.patient.patient_id
    return (not claim.patient_id or owner == claim.patient_id
            or _merged_into(session, claim.patient_id, owner))


def find_link(session: Session, claim: Claim) -> Finding:
    """The order ``claim`` names by accession number, Study Instance UID, then SPS / Requested Procedure ID
    (module docstring); never an order of another patient, never a cancelled or discontinued one."""
    finding = Finding()

    def accept(order: Order, how: str) -> bool:
        if order.status in CLOSED_ORDERS:
            finding.reasons.append(f"{how} names order {order.accession_number}, which is {order.status.value}")
            return False
        if not _same_patient(session, claim, order):
            finding.reasons.append(f"{how} names order {order.accession_number} of patient "
                                   f"{order.patient.patient_id}; the study is of patient {claim.patient_id}")
            return False
        finding.order, finding.how = order, how
        finding.by_uid = claim.study_instance_uid in {p.study_instance_uid for p in order.procedures}
        return True

    if claim.accession_number:
        orders = session.scalars(select(Order).where(Order.accession_number == claim.accession_number)
                                 .order_by(Order.id)).all()
        if not orders:
            finding.reasons.append(f"no order has accession number {claim.accession_number}")
        for order in orders:
            if accept(order, f"accession number {claim.accession_number}"):
                return finding
    else:
        finding.reasons.append("the study has no accession number")
    proc = session.scalars(select(RequestedProcedure)
                           .where(RequestedProcedure.study_instance_uid == claim.study_instance_uid)).first()
    if proc is not None:
        if accept(proc.order, f"study instance UID {claim.study_instance_uid}"):
            return finding
    else:
        finding.reasons.append("no order has its study instance UID")
    if claim.sps_id:
        steps = session.scalars(select(ProcedureStep).where(ProcedureStep.sps_id == claim.sps_id)
                                .order_by(ProcedureStep.id)).all()
        orders = list(dict.fromkeys(s.procedure.order for s in steps))
        if len(orders) > 1:
            finding.reasons.append(f"scheduled procedure step id {claim.sps_id} names {len(orders)} orders")
        elif orders and accept(orders[0], f"scheduled procedure step id {claim.sps_id}"):
            return finding
        elif not orders:
            finding.reasons.append(f"no order has scheduled procedure step id {claim.sps_id}")
    if claim.requested_procedure_id:
        procs = session.scalars(select(RequestedProcedure).where(
            RequestedProcedure.requested_procedure_id == claim.requested_procedure_id)).all()
        orders = list(dict.fromkeys(p.order for p in procs))
        if len(orders) == 1 and accept(orders[0], f"requested procedure id {claim.requested_procedure_id}"):
            return finding
        if len(orders) > 1:
            finding.reasons.append(f"requested procedure id {claim.requested_procedure_id} names {len(orders)} "
                                   "orders")
    return finding


def _rivals(session: Session, study: Study, order: Order) -> list[Study]:
    """The other studies of this patient claiming ``order``: linked to it, or AMBIGUOUS for it."""
    linked = [s for s in order.studies if s.id != study.id]
    waiting = session.scalars(select(Study).where(Study.id != study.id, Study.order_fk.is_(None),
                                                  Study.link_status == LinkStatus.AMBIGUOUS,
                                                  Study.accession_number == order.accession_number)
                              ).all() if order.accession_number else []
    rivals = list(dict.fromkeys(linked + list(waiting)))
    return [s for s in rivals if not study.patient_id or not s.patient_id or s.patient_id == study.patient_id]


def link_study(session: Session, study: Study) -> Order | None:
    """Link ``study`` to the order :func:`find_link` finds, or mark it UNMATCHED / AMBIGUOUS with the reason."""
    if study.link_manual:
        return study.order
    finding = find_link(session, Claim.of(study))
    order = finding.order
    if order is None:
        _set_link(study, None, LinkStatus.UNMATCHED, "; ".join(finding.reasons))
        session.flush()
        return None
    rivals = _rivals(session, study, order)
    if not rivals:
        _set_link(study, order, LinkStatus.LINKED, f"linked by {finding.how}")
        session.flush()
        return order
    own = {p.study_instance_uid for p in order.procedures}
    note = _several(order, [study, *rivals])
    flag = _policy(session) is AccessionStudies.FLAG
    for claimant in (study, *rivals):
        first = f"linked by {finding.how}" if claimant is study else claimant.link_reason.split("; several")[0]
        if claimant.link_manual:                          # a person decided: only the note changes
            if claimant.order is order:
                claimant.link_reason = f"{first}; {note}"[:REASON_LIMIT]
        elif not flag or claimant.study_instance_uid in own:
            _set_link(claimant, order, LinkStatus.LINKED, f"{first}; {note}")
        else:
            _set_link(claimant, None, LinkStatus.AMBIGUOUS, f"{finding.how} names order {order.accession_number}, "
                      f"which has other studies: {note}; link by hand")
    session.flush()
    return study.order


def _several(order: Order, studies: list[Study]) -> str:
    uids = ", ".join(sorted(s.study_instance_uid for s in studies))
    return f"several studies for order {order.accession_number} ({len(studies)}: {uids})"


def _set_link(study: Study, order: Order | None, status: LinkStatus, reason: str) -> None:
    study.order = order
    study.link_status = status
    study.link_reason = reason[:REASON_LIMIT]


def link_waiting_studies(session: Session, order: Order) -> list[Study]:
    """Link the waiting studies (UNMATCHED, or AMBIGUOUS) that name ``order`` (accession number, a procedure's
    Study Instance UID, or a step's SPS ID): images that arrived before their order are linked when it
    arrives (IHE RAD TF-1 Scheduled Workflow, "images stored before the order"). Each goes through
    :func:`link_study`, so the patient check and the several-studies policy hold."""
    uids = [p.study_instance_uid for p in order.procedures if p.study_instance_uid]
    sps_ids = [s.sps_id for p in order.procedures for s in p.steps if s.sps_id]
    named = [Study.study_instance_uid.in_(uids)] if uids else []
    if order.accession_number:
        named.append(Study.accession_number == order.accession_number)
    if sps_ids:
        named.append(Study.sps_id.in_(sps_ids))
    if not named:
        return []
    waiting = session.scalars(select(Study).where(Study.link_status.in_((LinkStatus.UNMATCHED, LinkStatus.AMBIGUOUS)),
                                                  Study.link_manual.is_(False), or_(*named))
                              .order_by(Study.id)).all()
    # Those with the order's own Study Instance UIDs first: they are never ambiguous, the others then see them.
    waiting = sorted(waiting, key=lambda s: s.study_instance_uid not in uids)
    for study in waiting:
        link_study(session, study)
    return [study for study in waiting if study.link_status is LinkStatus.LINKED]


def unmatched_studies(session: Session, limit: int = 100) -> list[Study]:
    return list(session.scalars(
        select(Study).where(Study.link_status != LinkStatus.LINKED).order_by(Study.id.desc()).limit(limit)
    ))


# What the archive says about a study's patient and order (attribute coercion) --------------------------
@dataclass(frozen=True)
class RequestAttributes:
    """One item of the Request Attributes Sequence (0040,0275), DICOM PS3.3 Table 10-9."""

    accession_number: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    sps_id: str = ""
    sps_description: str = ""
    study_instance_uid: str = ""


@dataclass(frozen=True)
class StudyAttributes:
    """The patient and order attributes the archive holds for a study: what its instances should say
    (DICOM keywords -> values via :meth:`as_keywords`). ``request`` is empty for a study linked to no order."""

    patient_id: str = ""
    issuer: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    referring_physician: str = ""
    request: tuple[RequestAttributes, ...] = ()

    def as_keywords(self) -> dict:
        values = {"PatientID": self.patient_id, "IssuerOfPatientID": self.issuer, "PatientName": self.patient_name,
                  "PatientBirthDate": self.patient_birth_date, "PatientSex": self.patient_sex,
                  "AccessionNumber": self.accession_number}
        if self.referring_physician:
            values["ReferringPhysicianName"] = self.referring_physician
        return values


def procedure_of(order: Order, study_uid: str = "", sps_id: str = "", rp_id: str = "",
                 modalities: tuple[str, ...] = ()) -> tuple[RequestedProcedure | None, ProcedureStep | None]:
    """The requested procedure (and step) of ``order`` a study performs: by Study Instance UID, SPS ID,
    Requested Procedure ID, the only procedure, the only one whose step has one of ``modalities``; else none."""
    procs = list(order.procedures)
    for proc in procs:
        if study_uid and proc.study_instance_uid == study_uid:
            return proc, _step_of(proc, sps_id, modalities)
    for proc in procs:
        for step in proc.steps:
            if sps_id and step.sps_id == sps_id:
                return proc, step
    for proc in procs:
        if rp_id and proc.requested_procedure_id == rp_id:
            return proc, _step_of(proc, sps_id, modalities)
    if len(procs) == 1:
        return procs[0], _step_of(procs[0], sps_id, modalities)
    fitting = [p for p in procs if any(s.modality in modalities for s in p.steps)]
    if len(fitting) == 1:
        return fitting[0], _step_of(fitting[0], sps_id, modalities)
    return None, None


def _step_of(proc: RequestedProcedure, sps_id: str, modalities: tuple[str, ...]) -> ProcedureStep | None:
    steps = list(proc.steps)
    for step in steps:
        if sps_id and step.sps_id == sps_id:
            return step
    fitting = [s for s in steps if s.modality in modalities] or steps
    return fitting[0] if len(fitting) == 1 else None


def order_attributes(order: Order, proc: RequestedProcedure | None, step: ProcedureStep | None) -> StudyAttributes:
    """The attributes an instance of ``order``'s procedure should carry (its patient, accession, request)."""
    patient = order.patient
    procs = [proc] if proc is not None else list(order.procedures)
    request = tuple(RequestAttributes(
        accession_number=order.accession_number, requested_procedure_id=p.requested_procedure_id,
        requested_procedure_description=p.description or p.code_meaning,
        sps_id=(step.sps_id if step is not None and step.procedure is p else
                (p.steps[0].sps_id if len(p.steps) == 1 else "")),
        sps_description=(step.description if step is not None and step.procedure is p else
                         (p.steps[0].description if len(p.steps) == 1 else "")),
        study_instance_uid=p.study_instance_uid) for p in procs)
    return StudyAttributes(
        patient_id=patient.patient_id, issuer=patient.issuer, patient_name=patient.name,
        patient_birth_date=patient.birth_date.strftime("%Y%m%d") if patient.birth_date else "",
        patient_sex=patient.sex, accession_number=order.accession_number,
        referring_physician=order.referring_physician, request=request)


def study_attributes(session: Session, study_uids: list[str]) -> dict[str, StudyAttributes]:
    """What the archive index says about each study's patient and order (for coercion on the way out):
    the study's own index values, with the request attributes of the order it is linked to."""
    result: dict[str, StudyAttributes] = {}
    for start in range(0, len(study_uids), 500):
        for study in session.scalars(select(Study).where(Study.study_instance_uid.in_(study_uids[start:start + 500]))):
            request: tuple[RequestAttributes, ...] = ()
            referring = study.referring_physician
            if study.order is not None and study.link_status is LinkStatus.LINKED:
                modalities = tuple(sorted({s.modality for s in study.series if s.modality}))
                proc, step = procedure_of(study.order, study.study_instance_uid, study.sps_id,
                                          study.requested_procedure_id, modalities)
                request = order_attributes(study.order, proc, step).request
                referring = study.order.referring_physician or referring
            result[study.study_instance_uid] = StudyAttributes(
                patient_id=study.patient_id, issuer=study.issuer, patient_name=study.patient_name,
                patient_birth_date=study.patient_birth_date, patient_sex=study.patient_sex,
                accession_number=study.accession_number, referring_physician=referring, request=request)
    return result
