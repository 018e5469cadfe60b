"""The worklist read model: scheduled procedure steps selected by an indexed database query.

This is the core of the Modality Worklist Information Model (DICOM PS3.4 Annex K, IHE RAD-5),
free of DICOM encoding: the DICOM adapter turns a C-FIND identifier into a :class:`WorklistQuery`
and each :class:`WorklistItem` into a response dataset. Matching types (PS3.4 C.2.2.2):

- single value matching: ``Text("CT")``; universal matching: the key is ``None`` (not used);
- wildcard matching (``*`` any sequence, ``?`` one character): ``Text("SMI*")``, done as SQL LIKE;
- list of UID matching: ``study_uids=("1.2", "1.3")``;
- range matching of dates and times: ``start`` as a :class:`DateTimeRange`.

Every filter is a WHERE clause on indexed columns (patients.patient_id, orders.accession_number,
procedure_steps.modality/scheduled_start/sps_id, step_stations.ae_title, ...): no item is read
unless it matches.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session, contains_eager, selectinload

from app.models import Order, Patient, ProcedureStep, RequestedProcedure, StepStation, StepStatus


@dataclass(frozen=True)
class Text:
    """A string key: single value, or wildcard when it holds ``*`` or ``?``."""

    value: str

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.value or "?" in self.value

    @property
    def is_universal(self) -> bool:
        return self.value != "" and set(self.value) == {"*"}


@dataclass(frozen=True)
class DateTimeRange:
    """A range of scheduled start: dates inclusive; ``None`` ends are open. Times optional.

    PS3.4 C.2.2.2.5: with a date and a time range both given, they combine into one date-time
    range (from start date + start time to end date + end time); a time range alone applies to
    the time of day on any date.
    """

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    time_from: dt.time | None = None
    time_to: dt.time | None = None
    has_date: bool = False
    has_time: bool = False


@dataclass(frozen=True)
class WorklistQuery:
    patient_id: Text | None = None
    issuer: Text | None = None
    patient_name: Text | None = None
    accession_number: Text | None = None
    modality: Text | None = None
    station_aet: Text | None = None
    station_name: Text | None = None
    sps_id: Text | None = None
    requested_procedure_id: Text | None = None
    study_uids: tuple[str, ...] | None = None
    start: DateTimeRange | None = None
    statuses: tuple[StepStatus, ...] = (StepStatus.SCHEDULED, StepStatus.ARRIVED, StepStatus.READY)
    names_case_insensitive: bool = False
    limit: int = 0


@dataclass(frozen=True)
class WorklistItem:
    """Everything a worklist answer may need about one scheduled procedure step."""

    patient_id: str
    issuer: str
    patient_name: str
    birth_date: dt.date | None
    sex: str
    accession_number: str
    placer_order_number: str
    placer_issuer: str
    filler_order_number: str
    referring_physician: str
    requesting_physician: str
    reason: str
    order_priority: str
    requested_procedure_id: str
    study_instance_uid: str
    code_value: str
    code_scheme: str
    code_meaning: str
    procedure_description: str
    procedure_priority: str
    sps_id: str
    modality: str
    station_aets: tuple[str, ...]
    station_name: str
    scheduled_start: dt.datetime
    step_description: str
    performing_physician: str
    step_status: str
    step_pk: int = field(default=0, compare=False)


def like_pattern(value: str) -> str:
    """DICOM wildcard to SQL LIKE (escape character '\\')."""
    out = []
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def text_clause(column, key: Text | None, *, case_insensitive: bool = False):
    """The WHERE clause of a single value or wildcard key (PS3.4 C.2.2.2.1, C.2.2.2.4); None if universal."""
    if key is None or key.value == "" or key.is_universal:
        return None
    col = func.lower(column) if case_insensitive else column
    value = key.value.lower() if case_insensitive else key.value
    if key.is_wildcard:
        return col.like(like_pattern(value), escape="\\")
    return col == value


def _time_of_day(session: Session, column):
    if session.get_bind().dialect.name == "sqlite":
        return func.strftime("%H:%M:%S", column)
    return func.to_char(column, "HH24:MI:SS")


def _range_clauses(session: Session, rng: DateTimeRange) -> list:
    col = ProcedureStep.scheduled_start
    clauses = []
    if rng.has_date and rng.has_time:
        if rng.date_from:
            clauses.append(col >= dt.datetime.combine(rng.date_from, rng.time_from or dt.time.min))
        if rng.date_to:
            end_time = rng.time_to or dt.time.max
            clauses.append(col <= dt.datetime.combine(rng.date_to, end_time))
        return clauses
    if rng.has_date:
        if rng.date_from:
            clauses.append(col >= dt.datetime.combine(rng.date_from, dt.time.min))
        if rng.date_to:
            clauses.append(col < dt.datetime.combine(rng.date_to + dt.timedelta(days=1), dt.time.min))
    if rng.has_time:
        tod = _time_of_day(session, col)
        if rng.time_from:
            clauses.append(tod >= rng.time_from.strftime("%H:%M:%S"))
        if rng.time_to:
            clauses.append(tod <= rng.time_to.strftime("%H:%M:%S"))
    return clauses


def build_query(session: Session, q: WorklistQuery) -> Select:
    stmt = (
        select(ProcedureStep)
        .join(ProcedureStep.procedure)
        .join(RequestedProcedure.order)
        .join(Order.patient)
        .options(
            contains_eager(ProcedureStep.procedure).contains_eager(RequestedProcedure.order)
            .contains_eager(Order.patient),
            selectinload(ProcedureStep.stations),
        )
    )
    clauses = [ProcedureStep.status.in_(q.statuses)]
    for column, key, ci in (
        (Patient.patient_id, q.patient_id, False),
        (Patient.issuer, q.issuer, False),
        (Patient.name, q.patient_name, q.names_case_insensitive),
        (Order.accession_number, q.accession_number, False),
        (ProcedureStep.modality, q.modality, False),
        (ProcedureStep.station_name, q.station_name, False),
        (ProcedureStep.sps_id, q.sps_id, False),
        (RequestedProcedure.requested_procedure_id, q.requested_procedure_id, False),
    ):
        clause = text_clause(column, key, case_insensitive=ci)
        if clause is not None:
            clauses.append(clause)
    station = text_clause(StepStation.ae_title, q.station_aet)
    if station is not None:
        # Multi-valued attribute: the step matches if any of its station AE titles matches.
        clauses.append(ProcedureStep.id.in_(select(StepStation.step_fk).where(station)))
    if q.study_uids:
        clauses.append(RequestedProcedure.study_instance_uid.in_(q.study_uids))
    if q.start is not None:
        clauses.extend(_range_clauses(session, q.start))
    stmt = stmt.where(and_(*clauses)).order_by(ProcedureStep.scheduled_start, ProcedureStep.id)
    if q.limit:
        stmt = stmt.limit(q.limit)
    return stmt


def find_worklist_items(session: Session, q: WorklistQuery) -> list[WorklistItem]:
    return [to_item(step) for step in session.scalars(build_query(session, q)).unique()]


def to_item(step: ProcedureStep) -> WorklistItem:
    proc = step.procedure
    order = proc.order
    patient = order.patient
    return WorklistItem(
        patient_id=patient.patient_id, issuer=patient.issuer, patient_name=patient.name,
        birth_date=patient.birth_date, sex=patient.sex, accession_number=order.accession_number,
        placer_order_number=order.placer_order_number, placer_issuer=order.placer_issuer,
        filler_order_number=order.filler_order_number, referring_physician=order.referring_physician,
        requesting_physician=order.requesting_physician, reason=order.reason, order_priority=order.priority,
        requested_procedure_id=proc.requested_procedure_id, study_instance_uid=proc.study_instance_uid,
        code_value=proc.code_value, code_scheme=proc.code_scheme, code_meaning=proc.code_meaning,
        procedure_description=proc.description, procedure_priority=proc.priority, sps_id=step.sps_id,
        modality=step.modality, station_aets=tuple(step.station_aets), station_name=step.station_name,
        scheduled_start=step.scheduled_start, step_description=step.description,
        performing_physician=step.performing_physician, step_status=step.status.value, step_pk=step.id,
    )
