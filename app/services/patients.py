"""Patient registry: create or update patients by their identifier (IHE RAD-1, RAD-12)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from app.changes import note
from app.commands import ChangePatientId, MergePatient, PatientData
from app.errors import Conflict, InvalidInput, NotFound
from app.models import Order, Patient, Study, Visit
from app.rows import insert_row, read, update_row
from app.validation import clip, identifier


_P = Patient.__table__
_COLUMNS = (_P.c.id, _P.c.patient_id, _P.c.issuer, _P.c.name, _P.c.birth_date, _P.c.sex, _P.c.merged_into_fk)
_BY_KEY = select(*_COLUMNS).where(_P.c.patient_id == bindparam("pid"), _P.c.issuer == bindparam("issuer"))
_BY_ID = select(*_COLUMNS).where(_P.c.id == bindparam("id"))


@dataclass
class PatientRecord:
    """A patient row as the hot paths use it (app.rows): the record that holds the patient's data now."""

    id: int
    patient_id: str
    issuer: str
    name: str
    birth_date: dt.date | None
    sex: str
    merged_into_fk: int | None = None
    created: bool = False

    @property
    def patient(self) -> "PatientRecord":  # what the intake's message index reads (changed.patient.patient_id)
        return self


def find_patient(session: Session, patient_id: str, issuer: str = "") -> Patient | None:
    """The patient record with exactly this identifier (merged records included)."""
    return session.scalars(
        select(Patient).where(Patient.patient_id == patient_id, Patient.issuer == issuer)
    ).first()


def survivor_of(patient: Patient) -> Patient:
    """Follow merges to the record that holds the patient's data now."""
    seen = set()
    while patient.merged_into is not None and patient.id not in seen:
        seen.add(patient.id)
        patient = patient.merged_into
    return patient


def find_record(session: Session, patient_id: str, issuer: str = "") -> PatientRecord | None:
    """The record that holds the data of the patient with this identifier now (merges followed)."""
    row = read(session, _BY_KEY, {"pid": patient_id, "issuer": issuer}).first()
    seen = set()
    while row is not None and row.merged_into_fk is not None and row.id not in seen:
        seen.add(row.id)
        row = session.execute(_BY_ID, {"id": row.merged_into_fk}).first()
    return PatientRecord(*row) if row is not None else None


def register(session: Session, data: PatientData) -> PatientRecord:
    """Create the patient or update the stored one (IHE RAD-1/RAD-12); the record that holds its data.

    Only values the message gave are written: ``None`` keeps what is stored, so a sparse update
    (an A08 with no birth date) never erases data. Two registrations of one identifier give one
    patient: the (patient_id, issuer) pair is unique in the database as well. A merged-away
    identifier lands on the survivor.
    """
    if not data.patient_id:
        raise InvalidInput("patient identifier missing", location="patient.id", missing=True)
    identifier(data.patient_id, 64, "patient.id")
    identifier(data.issuer, 64, "patient.issuer")
    record = find_record(session, data.patient_id, data.issuer)
    wanted = {}
    if data.name is not None:
        wanted["name"] = clip(data.name, 324)
    if data.birth_date_given:
        wanted["birth_date"] = data.birth_date
    if data.sex is not None:
        wanted["sex"] = clip(data.sex, 16)
    if record is None:
        values = {"patient_id": data.patient_id, "issuer": data.issuer, "name": "", "sex": "", "birth_date": None,
                  "version": 1, **wanted}
        key = insert_row(session, _P, values)
        return PatientRecord(key, data.patient_id, data.issuer, values["name"], values["birth_date"], values["sex"],
                             None, True)
    before = {"name": record.name, "birth_date": record.birth_date, "sex": record.sex}
    for column, value in update_row(session, Patient, record.id, before, wanted, bump_version=True).items():
        setattr(record, column, value)
    return record


def register_patient(session: Session, data: PatientData) -> tuple[Patient, bool]:
    """:func:`register` for callers that work with ORM objects: (patient, created)."""
    record = register(session, data)
    return session.get(Patient, record.id), record.created


def _move_patient_data(session: Session, source: Patient, target: Patient) -> None:
    """Orders, visits and archived studies of ``source`` now belong to ``target``."""
    moved = {}
    for model in (Order, Visit):
        result = session.execute(update(model).where(model.patient_fk == source.id).values(patient_fk=target.id))
        moved[model.__tablename__] = result.rowcount
    moved["studies"] = _relabel_studies(session, source.patient_id, source.issuer, target)
    note(session, {"action": "moved", "entity": "patients", "id": source.id, "to": target.id, "rows": moved})
    session.expire_all()


def _relabel_studies(session: Session, patient_id: str, issuer: str, target: Patient) -> int:
    same = Study.patient_id == patient_id
    same_issuer = (Study.issuer == issuer) | (Study.issuer == "")
    return session.execute(update(Study).where(same, same_issuer).values(
        patient_id=target.patient_id, issuer=target.issuer, patient_name=target.name)).rowcount


def merge_patient(session: Session, command: MergePatient) -> Patient:
    """Merge one patient record into another (ADT A40/A34; IHE RAD-12 Patient Update).

    Guards: a merge of a record into itself is refused; repeating a merge changes nothing; a merge
    against the direction of an earlier one (the survivor was merged into this record) is refused.
    """
    survivor_key = (command.survivor.patient_id, command.survivor.issuer)
    merged_key = (command.merged.patient_id, command.merged.issuer or command.survivor.issuer)
    if not command.merged.patient_id:
        raise InvalidInput("identifier of the patient to merge missing", location="merge.prior_id", missing=True)
    if survivor_key == merged_key:
        raise InvalidInput(f"cannot merge patient {merged_key[0]} into itself", location="merge.prior_id")
    merged = find_patient(session, *merged_key)
    survivor_row = find_patient(session, *survivor_key)
    if merged is not None and survivor_row is not None and survivor_of(survivor_row) is merged:
        raise Conflict(f"patient {survivor_key[0]} was merged into {merged_key[0]}; a merge the other way "
                       "round is refused", location="merge.prior_id")
    survivor, _ = register_patient(session, command.survivor)
    if merged is None or survivor_of(merged) is survivor:
        return survivor  # nothing to move, or merged already: the same merge again changes nothing
    if merged.merged_into is not None:
        raise Conflict(f"patient {merged_key[0]} was already merged into "
                       f"{survivor_of(merged).patient_id}", location="merge.prior_id")
    _move_patient_data(session, merged, survivor)
    merged = session.get(Patient, merged.id)
    merged.merged_into = session.get(Patient, survivor.id)
    session.flush()
    return survivor


def change_patient_id(session: Session, command: ChangePatientId) -> Patient:
    """Rename a patient's identifier (ADT A47); to an identifier another patient holds: refused."""
    new_key = (command.patient.patient_id, command.patient.issuer)
    prior_key = (command.prior.patient_id, command.prior.issuer or command.patient.issuer)
    identifier(new_key[0], 64, "patient.id")
    prior = find_patient(session, *prior_key)
    if prior is None:
        raise NotFound(f"no patient {prior_key[0]} to change", location="merge.prior_id")
    prior = survivor_of(prior)
    holder = find_patient(session, *new_key)
    if holder is not None and survivor_of(holder) is not prior:
        raise Conflict(f"patient id {new_key[0]} already belongs to another patient; send A40 to merge them",
                       location="patient.id")
    if holder is None:
        old_id, old_issuer = prior.patient_id, prior.issuer
        prior.patient_id, prior.issuer = new_key
        session.flush()
        _relabel_studies(session, old_id, old_issuer, prior)
    return register_patient(session, command.patient)[0]


def delete_patient(session: Session, patient: Patient) -> None:
    """Remove a patient record registered in error: only one nothing else refers to.

    Refused (Conflict, naming what holds it) while the patient has orders, visits, appointments, studies in the
    archive, or a merge history (merged into another record, or others merged into it): those are clinical and
    audit records the department keeps, and a merge is undone only by the HIS (HL7 v2.5.1 3.6.2 A40).
    """
    from app.models import Appointment   # noqa: PLC0415 (one import for this one guard)

    holders = []
    for one, many, count in (
            ("order", "orders",
             session.scalar(select(func.count()).select_from(Order).where(Order.patient_fk == patient.id))),
            ("visit", "visits",
             session.scalar(select(func.count()).select_from(Visit).where(Visit.patient_fk == patient.id))),
            ("appointment", "appointments", session.scalar(select(func.count()).select_from(Appointment)
                                                           .where(Appointment.patient_fk == patient.id))),
            ("study in the archive", "studies in the archive", session.scalar(
                select(func.count()).select_from(Study).where(
                    Study.patient_id == patient.patient_id, (Study.issuer == patient.issuer) | (Study.issuer == "")))),
            ("record merged into it", "records merged into it", session.scalar(
                select(func.count()).select_from(Patient).where(Patient.merged_into_fk == patient.id)))):
        if count:
            holders.append(f"{count} {one if count == 1 else many}")
    if patient.merged_into_fk is not None:
        holders.append("a merge into another record")
    if holders:
        raise Conflict(f"patient {patient.patient_id} cannot be deleted: it has {', '.join(holders)}",
                       location="patient.id")
    note(session, {"action": "deleted", "entity": "patients", "id": patient.id, "patient_id": patient.patient_id})
    session.delete(patient)
    session.flush()
