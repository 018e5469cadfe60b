"""The archive read model: patients, studies, series and instances of the archive index, by indexed queries.

This is the core of the Query/Retrieve Information Models (DICOM PS3.4 Annex C; IHE RAD-14 Query Images,
RAD-16 Retrieve Images), free of DICOM encoding: the DICOM adapter turns a C-FIND, C-MOVE or C-GET Identifier
into an :class:`ArchiveQuery` and each :class:`ArchiveRecord` into a response. Both information models (Patient
Root, Study Root, PS3.4 C.6.1 and C.6.2) are served by the same query: a patient of the archive is a distinct
(Patient ID, Issuer of Patient ID) of its studies.

Matching types (PS3.4 C.2.2.2), as in the worklist read model (app.queries.worklist): single value and
wildcard as :class:`Text` (SQL ``=`` / ``LIKE``), universal matching as ``None``, list of UID matching as tuples,
range matching of dates and times as :class:`DateTimeRange` (a date range and a time range given together are one
date-time range, C.2.2.2.5). Dates and times are kept as their DICOM strings (DA ``YYYYMMDD``, TM ``HHMMSS...``),
so ranges compare strings; an entity with an empty value never matches a range.

Keys are applied from the patient level down to the query level; keys of lower levels are not matching keys
(C.4.1.2.1). Every filter is a WHERE clause on an indexed column or a join along indexed foreign keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.models import Instance, Series, Study
from app.queries.worklist import DateTimeRange, Text, text_clause

_CHUNK = 500


class Level(str, enum.Enum):
    """Query/Retrieve Level (0008,0052), PS3.4 C.6.1.1 / C.6.2.1, from the top."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return list(Level).index(self)


@dataclass(frozen=True)
class ArchiveQuery:
    level: Level
    # patient level
    patient_id: Text | None = None
    issuer: Text | None = None
    patient_name: Text | None = None
    patient_birth_date: DateTimeRange | None = None
    patient_sex: Text | None = None
    # study level
    study_uids: tuple[str, ...] | None = None
    accession_number: Text | None = None
    study_id: Text | None = None
    study_description: Text | None = None
    referring_physician: Text | None = None
    study_date_time: DateTimeRange | None = None
    modalities_in_study: tuple[Text, ...] | None = None
    # series level
    series_uids: tuple[str, ...] | None = None
    modality: Text | None = None
    series_number: Text | None = None
    series_description: Text | None = None
    # image level
    sop_uids: tuple[str, ...] | None = None
    sop_class_uids: tuple[str, ...] | None = None
    instance_number: Text | None = None
    names_case_insensitive: bool = False
    limit: int = 0


@dataclass(frozen=True)
class ArchiveRecord:
    """One match: the attributes of its level and of the levels above it (counts when asked for)."""

    level: Level
    patient_id: str = ""
    issuer: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_instance_uid: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    referring_physician: str = ""
    modalities: tuple[str, ...] = ()
    series_instance_uid: str = ""
    modality: str = ""
    series_number: str = ""
    series_description: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    instance_number: str = ""
    related_studies: int = 0
    related_series: int = 0
    related_instances: int = 0


@dataclass(frozen=True)
class StoredInstance:
    """An instance to retrieve: where its file is and what it is."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    study_instance_uid: str = ""


# Clauses -----------------------------------------------------------------------------------------------
def _dicom_date_time_clauses(date_col, time_col, rng: DateTimeRange) -> list:
    """Range matching on DA/TM strings (PS3.4 C.2.2.2.5); empty values never match a range."""
    clauses = []
    if rng.has_date and rng.has_time and time_col is not None:
        stamp = date_col + func.substr(time_col, 1, 6)
        clauses += [date_col != "", time_col != ""]
        if rng.date_from:
            clauses.append(stamp >= rng.date_from.strftime("%Y%m%d") + (rng.time_from.strftime("%H%M%S")
                                                                        if rng.time_from else "000000"))
        if rng.date_to:
            clauses.append(stamp <= rng.date_to.strftime("%Y%m%d") + (rng.time_to.strftime("%H%M%S")
                                                                      if rng.time_to else "235959"))
        return clauses
    if rng.has_date:
        clauses.append(date_col != "")
        if rng.date_from:
            clauses.append(date_col >= rng.date_from.strftime("%Y%m%d"))
        if rng.date_to:
            clauses.append(date_col <= rng.date_to.strftime("%Y%m%d"))
    if rng.has_time and time_col is not None:
        of_day = func.substr(time_col, 1, 6)
        clauses.append(time_col != "")
        if rng.time_from:
            clauses.append(of_day >= rng.time_from.strftime("%H%M%S"))
        if rng.time_to:
            clauses.append(of_day <= rng.time_to.strftime("%H%M%S"))
    return clauses


def _text_clauses(keys) -> list:
    """Clauses of (column, key, case_insensitive) triples; universal keys add none."""
    clauses = []
    for column, key, ci in keys:
        clause = text_clause(column, key, case_insensitive=ci)
        if clause is not None:
            clauses.append(clause)
    return clauses


def _patient_clauses(q: ArchiveQuery) -> list:
    ci = q.names_case_insensitive
    clauses = _text_clauses([(Study.patient_id, q.patient_id, False), (Study.issuer, q.issuer, False),
                             (Study.patient_name, q.patient_name, ci), (Study.patient_sex, q.patient_sex, False)])
    if q.patient_birth_date is not None:
        clauses += _dicom_date_time_clauses(Study.patient_birth_date, None, q.patient_birth_date)
    return clauses


def _study_clauses(q: ArchiveQuery) -> list:
    ci = q.names_case_insensitive
    clauses = _text_clauses([(Study.accession_number, q.accession_number, False),
                             (Study.study_id, q.study_id, False), (Study.description, q.study_description, False),
                             (Study.referring_physician, q.referring_physician, ci)])
    if q.study_uids:
        clauses.append(Study.study_instance_uid.in_(q.study_uids))
    if q.study_date_time is not None:
        clauses += _dicom_date_time_clauses(Study.study_date, Study.study_time, q.study_date_time)
    if q.modalities_in_study:
        any_of = [c for c in (text_clause(Series.modality, m) for m in q.modalities_in_study) if c is not None]
        if any_of:
            clauses.append(Study.id.in_(select(Series.study_fk).where(or_(*any_of))))
    return clauses


def _series_clauses(q: ArchiveQuery) -> list:
    clauses = _text_clauses([(Series.modality, q.modality, False), (Series.series_number, q.series_number, False),
                             (Series.description, q.series_description, False)])
    if q.series_uids:
        clauses.append(Series.series_instance_uid.in_(q.series_uids))
    return clauses


def _image_clauses(q: ArchiveQuery) -> list:
    clauses = _text_clauses([(Instance.instance_number, q.instance_number, False)])
    if q.sop_uids:
        clauses.append(Instance.sop_instance_uid.in_(q.sop_uids))
    if q.sop_class_uids:
        clauses.append(Instance.sop_class_uid.in_(q.sop_class_uids))
    return clauses


def _clauses(q: ArchiveQuery, down_to: Level) -> list:
    clauses = _patient_clauses(q)
    for level, build in ((Level.STUDY, _study_clauses), (Level.SERIES, _series_clauses),
                         (Level.IMAGE, _image_clauses)):
        if level.depth <= down_to.depth:
            clauses += build(q)
    return clauses


# Queries -----------------------------------------------------------------------------------------------
def find_archive_records(session: Session, q: ArchiveQuery, *, counts: bool = False) -> list[ArchiveRecord]:
    """The entities of ``q.level`` that match ``q``; ``counts`` adds the Number of ... Related ... values."""
    finder = {Level.PATIENT: _patients, Level.STUDY: _studies, Level.SERIES: _series,
              Level.IMAGE: _instances}[q.level]
    return finder(session, q, counts)


def find_stored_instances(session: Session, q: ArchiveQuery) -> list[StoredInstance]:
    """Every instance at or below the entities ``q`` selects (the sub-operations of a C-MOVE or C-GET)."""
    stmt = (select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.transfer_syntax_uid, Instance.path,
                   Instance.size, Study.study_instance_uid)
            .join(Instance.series).join(Series.study)
            .where(*_clauses(q, q.level))
            .order_by(Study.id, Series.id, Instance.id))
    return [StoredInstance(*row) for row in session.execute(stmt)]


def _limited(stmt, q: ArchiveQuery):
    return stmt.limit(q.limit) if q.limit else stmt


def _patients(session: Session, q: ArchiveQuery, counts: bool) -> list[ArchiveRecord]:
    stmt = _limited(select(Study.patient_id, Study.issuer, func.max(Study.patient_name),
                           func.max(Study.patient_birth_date), func.max(Study.patient_sex),
                           func.count(Study.id))
                    .where(*_patient_clauses(q))
                    .group_by(Study.patient_id, Study.issuer)
                    .order_by(Study.patient_id, Study.issuer), q)
    rows = session.execute(stmt).all()
    series_counts: dict = {}
    instance_counts: dict = {}
    if counts and rows:
        key = (Study.patient_id, Study.issuer)
        series_counts = {(pid, issuer): n for pid, issuer, n in session.execute(
            select(*key, func.count(Series.id)).join(Series.study).where(*_patient_clauses(q)).group_by(*key))}
        instance_counts = {(pid, issuer): n for pid, issuer, n in session.execute(
            select(*key, func.count(Instance.id)).join(Instance.series).join(Series.study)
            .where(*_patient_clauses(q)).group_by(*key))}
    return [ArchiveRecord(Level.PATIENT, patient_id=pid, issuer=issuer, patient_name=name or "",
                          patient_birth_date=birth or "", patient_sex=sex or "", related_studies=n,
                          related_series=series_counts.get((pid, issuer), 0),
                          related_instances=instance_counts.get((pid, issuer), 0))
            for pid, issuer, name, birth, sex, n in rows]


def _study_fields(study: Study) -> dict:
    return dict(patient_id=study.patient_id, issuer=study.issuer, patient_name=study.patient_name,
                patient_birth_date=study.patient_birth_date, patient_sex=study.patient_sex,
                study_instance_uid=study.study_instance_uid, accession_number=study.accession_number,
                study_id=study.study_id, study_date=study.study_date, study_time=study.study_time,
                study_description=study.description, referring_physician=study.referring_physician)


def _series_fields(series: Series) -> dict:
    return dict(series_instance_uid=series.series_instance_uid, modality=series.modality,
                series_number=series.series_number, series_description=series.description)


def _studies(session: Session, q: ArchiveQuery, counts: bool) -> list[ArchiveRecord]:
    stmt = _limited(select(Study).where(*_clauses(q, Level.STUDY))
                    .order_by(Study.study_date, Study.study_time, Study.id), q)
    studies = list(session.scalars(stmt))
    ids = [s.id for s in studies]
    modalities: dict[int, list[str]] = {}
    for start in range(0, len(ids), _CHUNK):
        for study_fk, modality in session.execute(
                select(Series.study_fk, Series.modality).where(Series.study_fk.in_(ids[start:start + _CHUNK]))
                .distinct().order_by(Series.study_fk, Series.modality)):
            if modality:
                modalities.setdefault(study_fk, []).append(modality)
    series_n: dict = {}
    instance_n: dict = {}
    if counts:
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            series_n.update(session.execute(select(Series.study_fk, func.count(Series.id))
                                            .where(Series.study_fk.in_(chunk)).group_by(Series.study_fk)).all())
            instance_n.update(session.execute(select(Series.study_fk, func.count(Instance.id))
                                              .join(Instance.series).where(Series.study_fk.in_(chunk))
                                              .group_by(Series.study_fk)).all())
    return [ArchiveRecord(Level.STUDY, **_study_fields(s), modalities=tuple(modalities.get(s.id, ())),
                          related_series=series_n.get(s.id, 0), related_instances=instance_n.get(s.id, 0))
            for s in studies]


def _series(session: Session, q: ArchiveQuery, counts: bool) -> list[ArchiveRecord]:
    stmt = _limited(select(Series, Study).join(Series.study).where(*_clauses(q, Level.SERIES))
                    .order_by(Study.id, Series.id), q)
    rows = session.execute(stmt).all()
    ids = [series.id for series, _ in rows]
    instance_n: dict = {}
    if counts:
        for start in range(0, len(ids), _CHUNK):
            instance_n.update(session.execute(select(Instance.series_fk, func.count(Instance.id))
                                              .where(Instance.series_fk.in_(ids[start:start + _CHUNK]))
                                              .group_by(Instance.series_fk)).all())
    return [ArchiveRecord(Level.SERIES, **_study_fields(study), **_series_fields(series),
                          related_instances=instance_n.get(series.id, 0))
            for series, study in rows]


def _instances(session: Session, q: ArchiveQuery, counts: bool) -> list[ArchiveRecord]:
    stmt = _limited(select(Instance, Series, Study).join(Instance.series).join(Series.study)
                    .where(*_clauses(q, Level.IMAGE)).order_by(Study.id, Series.id, Instance.id), q)
    return [ArchiveRecord(Level.IMAGE, **_study_fields(study), **_series_fields(series),
                          sop_instance_uid=inst.sop_instance_uid, sop_class_uid=inst.sop_class_uid,
                          instance_number=inst.instance_number)
            for inst, series, study in session.execute(stmt)]

