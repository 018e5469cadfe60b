"""Domain models of the RIS core (SQLAlchemy 2, typed declarative).

The order hierarchy follows DICOM PS3.3 Annex C.4 / IHE RAD TF-1 "Scheduled Workflow":
an Order (the placer's order, identified by its placer order number and by the accession
number the department gives it) holds Requested Procedures (one Study Instance UID each), each
carried out by Scheduled Procedure Steps (one modality, one or more station AE titles, one
start time). Performed Procedure Steps (MPPS) record what was actually done. Studies, series
and instances index the archive. InboundMessage keeps every received message byte for byte.

Times: ``scheduled_start`` and the other clinical times are naive datetimes in the site's
zone (setting RIS_SITE_TIMEZONE), because DICOM dates and times carry no zone and modalities
query in local time. Audit times (``created_at``, ``received_at``) are naive UTC.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Optional

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    JSON,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from app.rows import VERSIONS_BUMPED, version_counted


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


# Shared column types -------------------------------------------------------------------------
intpk = Annotated[int, mapped_column(Integer, primary_key=True)]
created = Annotated[dt.datetime, mapped_column(DateTime, default=utcnow, nullable=False)]
updated = Annotated[dt.datetime, mapped_column(DateTime, default=utcnow, onupdate=utcnow, nullable=False)]
ident = Annotated[str, mapped_column(String(64), nullable=False, default="")]
uid = Annotated[str, mapped_column(String(64), nullable=False)]
pn = Annotated[str, mapped_column(String(324), nullable=False, default="")]
text = Annotated[str, mapped_column(Text, nullable=False, default="")]


def _enum(kind: type[enum.Enum]) -> Enum:
    return Enum(kind, native_enum=False, length=24, values_callable=lambda e: [m.value for m in e],
                validate_strings=True, create_constraint=False)


class Base(DeclarativeBase):
    pass


# Status enums --------------------------------------------------------------------------------
class OrderStatus(str, enum.Enum):
    SCHEDULED = "SCHEDULED"
    HELD = "HELD"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    DISCONTINUED = "DISCONTINUED"


class StepStatus(str, enum.Enum):
    """Scheduled Procedure Step Status (0040,0020), DICOM PS3.3 C.4.10, plus CANCELLED."""

    SCHEDULED = "SCHEDULED"
    HELD = "HELD"              # order on hold (ORC-1 HD): not offered until released (RL)
    ARRIVED = "ARRIVED"
    READY = "READY"
    STARTED = "STARTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELLED = "CANCELLED"
    UNSCHEDULED = "UNSCHEDULED"  # its booking was cancelled or the patient did not show: waits for a new slot


class ProcedureState(str, enum.Enum):
    """Lifecycle of a requested procedure, from order to signed report (app.services.lifecycle has the
    transition table)."""

    ORDERED = "ORDERED"
    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    PRELIMINARY = "PRELIMINARY"      # a preliminary report is signed
    FINAL = "FINAL"                  # the final report is signed
    CANCELLED = "CANCELLED"
    DISCONTINUED = "DISCONTINUED"


class PerformedStatus(str, enum.Enum):
    """Performed Procedure Step Status (0040,0252), DICOM PS3.3 C.4.14."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


class MessageStatus(str, enum.Enum):
    """Lifecycle of an inbound message (Mirth's model: stored first, then one final state)."""

    RECEIVED = "RECEIVED"      # stored durably, not yet applied
    PROCESSED = "PROCESSED"    # applied, positive ACK
    ERROR = "ERROR"            # processing failed (AE): can be reprocessed
    REJECTED = "REJECTED"      # refused as a message (AR): unsupported or unreadable
    DUPLICATE = "DUPLICATE"    # same sender + control id + content seen before: original ACK


class LinkStatus(str, enum.Enum):
    """How an archived study stands to the orders (app.services.archive)."""

    LINKED = "LINKED"
    UNMATCHED = "UNMATCHED"      # no order found: held for reconciliation, never rejected
    AMBIGUOUS = "AMBIGUOUS"      # an order fits, but it has another study (BUG-27, policy "flag"): a person decides


# Patients ------------------------------------------------------------------------------------
class Patient(Base):
    __tablename__ = "patients"
    # AUTOINCREMENT: SQLite never gives the key of a deleted patient to a new one (FHIR ids are these keys,
    # and a deleted resource's id answers 410 Gone with its history; PostgreSQL sequences never reuse).
    __table_args__ = (
        UniqueConstraint("patient_id", "issuer", name="uq_patient_key"),
        # Worklist and Q/R name keys ("SMI*": LIKE with a literal prefix; text_pattern_ops for PostgreSQL's LIKE)
        Index("ix_patients_name", "name", postgresql_ops={"name": "text_pattern_ops"}),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[intpk]
    patient_id: Mapped[ident]
    issuer: Mapped[ident]
    name: Mapped[pn]
    birth_date: Mapped[Optional[dt.date]] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1, server_default="1")
    merged_into_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("patients.id"), index=True)
    created_at: Mapped[created]
    updated_at: Mapped[updated]

    orders: Mapped[list["Order"]] = relationship(back_populates="patient")
    merged_into: Mapped[Optional["Patient"]] = relationship(remote_side="Patient.id")
    visits: Mapped[list["Visit"]] = relationship(back_populates="patient")


class VisitStatus(str, enum.Enum):
    PREADMITTED = "PREADMITTED"
    ADMITTED = "ADMITTED"
    DISCHARGED = "DISCHARGED"
    CANCELLED = "CANCELLED"


class Visit(Base):
    """A patient visit (encounter) as ADT reports it: PV1-19 visit number, class, location."""

    __tablename__ = "visits"
    __table_args__ = (UniqueConstraint("visit_number", "patient_fk", name="uq_visit_number"),)

    id: Mapped[intpk]
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), nullable=False, index=True)
    visit_number: Mapped[ident]
    patient_class: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    location: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    prior_location: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    status: Mapped[VisitStatus] = mapped_column(_enum(VisitStatus), nullable=False, default=VisitStatus.ADMITTED)
    admitted_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    discharged_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    created_at: Mapped[created]
    updated_at: Mapped[updated]

    patient: Mapped[Patient] = relationship(back_populates="visits")


# Orders --------------------------------------------------------------------------------------
class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_placer", "placer_order_number", "placer_issuer"),
        Index("ix_orders_filler", "filler_order_number"),
        Index("ix_orders_accession", "accession_number"),
    )

    id: Mapped[intpk]
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patients.id"), nullable=False, index=True)
    placer_order_number: Mapped[ident]
    placer_issuer: Mapped[ident]
    filler_order_number: Mapped[ident]
    accession_number: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[OrderStatus] = mapped_column(_enum(OrderStatus), nullable=False, default=OrderStatus.SCHEDULED)
    priority: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    referring_physician: Mapped[pn]
    requesting_physician: Mapped[pn]
    reason: Mapped[text]
    sender: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    source_message_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("inbound_messages.id", ondelete="SET NULL"))
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1, server_default="1")
    created_at: Mapped[created]
    updated_at: Mapped[updated]

    patient: Mapped[Patient] = relationship(back_populates="orders")
    procedures: Mapped[list["RequestedProcedure"]] = relationship(
        back_populates="order", cascade="all, delete-orphan", order_by="RequestedProcedure.id"
    )
    studies: Mapped[list["Study"]] = relationship(back_populates="order", order_by="Study.id")


class RequestedProcedure(Base):
    __tablename__ = "requested_procedures"

    id: Mapped[intpk]
    order_fk: Mapped[int] = mapped_column(ForeignKey("orders.id"), nullable=False, index=True)
    requested_procedure_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    code_value: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    code_scheme: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    code_meaning: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    description: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    priority: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    state: Mapped[ProcedureState] = mapped_column(_enum(ProcedureState), nullable=False, default=ProcedureState.ORDERED,
                                                  index=True)
    # The elements of the FHIR ServiceRequest last written for this procedure that the core keeps no field
    # for, as the client sent them (contained resources, notes, references into them; interfaces.fhir);
    # None for a procedure never written over FHIR.
    fhir_elements: Mapped[Optional[dict]] = mapped_column(JSON)
    body_part: Mapped[str] = mapped_column(String(16), nullable=False, default="", server_default="")  # (0018,0015)

    order: Mapped[Order] = relationship(back_populates="procedures")
    transitions: Mapped[list["ProcedureTransition"]] = relationship(
        back_populates="procedure", cascade="all, delete-orphan", order_by="ProcedureTransition.id"
    )
    steps: Mapped[list["ProcedureStep"]] = relationship(
        back_populates="procedure", cascade="all, delete-orphan", order_by="ProcedureStep.id"
    )


class ProcedureStep(Base):
    """A Scheduled Procedure Step: the unit a modality sees as one worklist item."""

    __tablename__ = "procedure_steps"
    __table_args__ = (
        Index("ix_steps_status_start", "status", "scheduled_start"),
        Index("ix_steps_modality_start", "modality", "scheduled_start"),
    )

    id: Mapped[intpk]
    procedure_fk: Mapped[int] = mapped_column(ForeignKey("requested_procedures.id"), nullable=False, index=True)
    sps_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    modality: Mapped[str] = mapped_column(String(16), nullable=False)
    station_name: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    scheduled_start: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False, index=True)
    description: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    performing_physician: Mapped[pn]
    status: Mapped[StepStatus] = mapped_column(_enum(StepStatus), nullable=False, default=StepStatus.SCHEDULED)
    # minutes the step is expected to take: its end (0040,0004)/(0040,0005) is the start plus this
    expected_duration_minutes: Mapped[Optional[float]] = mapped_column(Float)
    updated_at: Mapped[updated]

    procedure: Mapped[RequestedProcedure] = relationship(back_populates="steps")
    stations: Mapped[list["StepStation"]] = relationship(
        back_populates="step", cascade="all, delete-orphan", order_by="StepStation.id"
    )
    protocol_codes: Mapped[list["StepProtocolCode"]] = relationship(
        back_populates="step", cascade="all, delete-orphan", order_by="StepProtocolCode.id"
    )

    @property
    def station_aets(self) -> list[str]:
        return [s.ae_title for s in self.stations]


class StepStation(Base):
    """One Scheduled Station AE Title of a step (the attribute is multi-valued: any value matches)."""

    __tablename__ = "step_stations"

    id: Mapped[intpk]
    step_fk: Mapped[int] = mapped_column(ForeignKey("procedure_steps.id", ondelete="CASCADE"), nullable=False, index=True)
    ae_title: Mapped[str] = mapped_column(String(64), nullable=False, index=True)

    step: Mapped[ProcedureStep] = relationship(back_populates="stations")


class StepProtocolCode(Base):
    """One item of a step's Scheduled Protocol Code Sequence (0040,0008), DICOM PS3.3 C.4.10 (code items: 8.8)."""

    __tablename__ = "step_protocol_codes"

    id: Mapped[intpk]
    step_fk: Mapped[int] = mapped_column(ForeignKey("procedure_steps.id", ondelete="CASCADE"), nullable=False, index=True)
    code_value: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    code_scheme: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    code_meaning: Mapped[str] = mapped_column(String(128), nullable=False, default="")

    step: Mapped[ProcedureStep] = relationship(back_populates="protocol_codes")


class PerformedStep(Base):
    """A Modality Performed Procedure Step (DICOM PS3.4 F.7, IHE RAD-6/RAD-7)."""

    __tablename__ = "performed_steps"

    id: Mapped[intpk]
    sop_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    step_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("procedure_steps.id"), index=True)
    status: Mapped[PerformedStatus] = mapped_column(_enum(PerformedStatus), nullable=False)
    station_aet: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    modality: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    accession_number: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    started_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    ended_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    created_at: Mapped[created]
    updated_at: Mapped[updated]
    # What the modality said, kept for reconciling a performed step that names no known scheduled step.
    patient_id: Mapped[ident]
    patient_name: Mapped[pn]
    sps_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    description: Mapped[str] = mapped_column(String(64), nullable=False, default="")

    step: Mapped[Optional[ProcedureStep]] = relationship()
    series: Mapped[list["PerformedSeries"]] = relationship(
        back_populates="performed", cascade="all, delete-orphan", order_by="PerformedSeries.id")


class PerformedSeries(Base):
    """One item of an MPPS's Performed Series Sequence (0040,0340), DICOM PS3.3 C.4.17: what was acquired."""

    __tablename__ = "performed_series"

    id: Mapped[intpk]
    performed_fk: Mapped[int] = mapped_column(ForeignKey("performed_steps.id", ondelete="CASCADE"), nullable=False,
                                              index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    description: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    protocol_name: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    retrieve_aet: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    operator: Mapped[pn]
    # Referenced Image / Non-Image Composite SOP Instance Sequences: [[SOP Class UID, SOP Instance UID], ...]
    instances: Mapped[list] = mapped_column(JSON, nullable=False, default=list)

    performed: Mapped[PerformedStep] = relationship(back_populates="series")


# Archive index -------------------------------------------------------------------------------
class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        Index("ix_studies_accession", "accession_number"),
        Index("ix_studies_patient", "patient_id", "issuer"),
        Index("ix_studies_date", "study_date", "study_time"),
    )

    id: Mapped[intpk]
    study_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    patient_id: Mapped[ident]
    issuer: Mapped[ident]
    patient_name: Mapped[pn]
    patient_birth_date: Mapped[str] = mapped_column(String(8), nullable=False, default="")
    patient_sex: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    accession_number: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    study_id: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    referring_physician: Mapped[pn]
    study_date: Mapped[str] = mapped_column(String(8), nullable=False, default="")
    study_time: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    description: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    # Request Attributes Sequence (0040,0275) of its instances: linking by SPS / Requested Procedure ID
    requested_procedure_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    sps_id: Mapped[str] = mapped_column(String(64), nullable=False, default="", index=True)
    order_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("orders.id"), index=True)
    link_status: Mapped[LinkStatus] = mapped_column(_enum(LinkStatus), nullable=False, default=LinkStatus.UNMATCHED)
    link_reason: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    # A person linked or unlinked it (reconciliation): automatic linking leaves it alone from then on.
    link_manual: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # The accession number and request identifiers as the first instance brought them, restored by an unlink.
    received: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[created]
    updated_at: Mapped[updated]

    order: Mapped[Optional[Order]] = relationship(back_populates="studies")
    series: Mapped[list["Series"]] = relationship(back_populates="study", order_by="Series.id")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[intpk]
    study_fk: Mapped[int] = mapped_column(ForeignKey("studies.id"), nullable=False, index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    modality: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    series_number: Mapped[str] = mapped_column(String(12), nullable=False, default="")
    description: Mapped[str] = mapped_column(String(64), nullable=False, default="")

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list["Instance"]] = relationship(back_populates="series", order_by="Instance.id")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[intpk]
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"), nullable=False, index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), nullable=False)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    instance_number: Mapped[str] = mapped_column(String(12), nullable=False, default="")
    path: Mapped[str] = mapped_column(String(512), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    calling_aet: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    created_at: Mapped[created]

    series: Mapped[Series] = relationship(back_populates="instances")


# Messages ------------------------------------------------------------------------------------
class InboundMessage(Base):
    """Every received message, stored byte for byte before anything else happens to it."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        Index("ix_inbound_dedup", "sender", "control_id", "digest"),
        Index("ix_inbound_status", "status", "received_at"),
    )

    id: Mapped[intpk]
    received_at: Mapped[created]
    transport: Mapped[str] = mapped_column(String(16), nullable=False, default="mllp")
    peer: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    digest: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    sender: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    control_id: Mapped[str] = mapped_column(String(199), nullable=False, default="")
    message_type: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    charset: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    status: Mapped[MessageStatus] = mapped_column(_enum(MessageStatus), nullable=False, default=MessageStatus.RECEIVED)
    ack_code: Mapped[str] = mapped_column(String(2), nullable=False, default="")
    ack: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    # What was answered on the connection when it is not ``ack`` (HL7 enhanced acknowledgment mode): the
    # accept ACK, or b"" when nothing was sent. NULL: ``ack`` itself was the answer (original mode).
    reply: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    error: Mapped[text]
    warnings: Mapped[text]
    profile: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    duplicate_of_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("inbound_messages.id", ondelete="SET NULL"))
    batch_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("inbound_messages.id", ondelete="CASCADE"), index=True)
    patient_key: Mapped[str] = mapped_column(String(64), nullable=False, default="", index=True)
    accession_number: Mapped[str] = mapped_column(String(16), nullable=False, default="", index=True)
    changes: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    processed_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    duration_ms: Mapped[Optional[float]] = mapped_column(Float)
    # A RECEIVED message the recovery job took on (app.services.messages.claim): who, and until when nobody else
    # may (a lease, so a job that died leaves it to the next one).
    claimed_by: Mapped[str] = mapped_column(String(128), nullable=False, default="", server_default="")
    claimed_until: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)


# Appointments and reports --------------------------------------------------------------------
class AppointmentStatus(str, enum.Enum):
    PROPOSED = "PROPOSED"    # requested, no fixed time yet (FHIR Appointment proposed/pending/waitlist)
    BOOKED = "BOOKED"
    CANCELLED = "CANCELLED"
    NOSHOW = "NOSHOW"


class Appointment(Base):
    """A booked slot for an order (HL7 v2.5.1 chapter 10, SIU S12-S26)."""

    __tablename__ = "appointments"
    __table_args__ = (Index("ix_appointments_ids", "filler_appointment_id", "placer_appointment_id"),
                      Index("ix_appointments_resource", "resource_fk", "start"))

    id: Mapped[intpk]
    order_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("orders.id"), index=True)
    patient_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("patients.id"), index=True)
    placer_appointment_id: Mapped[ident]
    filler_appointment_id: Mapped[ident]
    placer_order_number: Mapped[ident]
    start: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    duration_minutes: Mapped[Optional[float]] = mapped_column(Float)
    resource: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    location: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    status: Mapped[AppointmentStatus] = mapped_column(_enum(AppointmentStatus), nullable=False,
                                                      default=AppointmentStatus.BOOKED)
    # A booking of one of our resources for one step (app.services.scheduling); NULL for SIU appointments.
    resource_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("resources.id"))
    step_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("procedure_steps.id", ondelete="SET NULL"), index=True)
    end: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    created_at: Mapped[created]
    updated_at: Mapped[updated]

    order: Mapped[Optional[Order]] = relationship()
    booked_resource: Mapped[Optional["Resource"]] = relationship()
    step: Mapped[Optional[ProcedureStep]] = relationship()


class ReportState(str, enum.Enum):
    """A report written in the engine: DRAFT until signed; PRELIMINARY or FINAL once signed (HL7 table 0123
    P / F); AMENDED when a signed amendment replaced it (its replacement went out as a correction, C)."""

    DRAFT = "DRAFT"
    PRELIMINARY = "PRELIMINARY"
    FINAL = "FINAL"
    AMENDED = "AMENDED"


class Report(Base):
    """A result report for an order, as ORU^R01 carries it (HL7 v2.5.1 chapter 7, OBR + OBX): received (``state``
    NULL) or written here (``state`` set; ``kind`` report, addendum or amendment). What every column means, and how
    a row reads as a FHIR DiagnosticReport, is in app.services.reports."""

    __tablename__ = "reports"

    id: Mapped[intpk]
    order_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("orders.id"), index=True)
    accession_number: Mapped[str] = mapped_column(String(16), nullable=False, default="", index=True)
    placer_order_number: Mapped[ident]
    filler_order_number: Mapped[ident]
    study_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    text: Mapped[text]
    observed_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    created_at: Mapped[created]
    # Reports written here (app.services.reports): NULL ``state`` for a report received by ORU^R01.
    state: Mapped[Optional["ReportState"]] = mapped_column(_enum(ReportState))
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="report")   # report, addendum, amendment
    procedure_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("requested_procedures.id"), index=True)
    parent_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("reports.id"), index=True)
    author: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    signed_by: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    signed_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    updated_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    order: Mapped[Optional[Order]] = relationship()
    procedure: Mapped[Optional[RequestedProcedure]] = relationship()
    parent: Mapped[Optional["Report"]] = relationship(remote_side="Report.id")


# Versions ------------------------------------------------------------------------------------
class ResourceVersion(Base):
    """One kept version of a resource as an edge served it (FHIR R4 http.html#vread): ``content`` is
    the rendered resource; ``version`` is the Patient/Order ``version`` it was rendered from."""

    __tablename__ = "resource_versions"
    __table_args__ = (UniqueConstraint("resource_type", "resource_id", "version", name="uq_resource_version"),)

    id: Mapped[intpk]
    resource_type: Mapped[str] = mapped_column(String(32), nullable=False)
    resource_id: Mapped[int] = mapped_column(Integer, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    recorded_at: Mapped[created]
    content: Mapped[dict] = mapped_column(JSON, nullable=False)


@event.listens_for(Session, "before_flush")
def _bump_versions(session: Session, _context, _instances) -> None:
    """Patients and orders count their versions: +1 once per transaction that changes them, whoever
    changes them (HL7, FHIR, MPPS), through the ORM or with Core (app.rows.version_counted keeps the one
    record of both); a change of an order's procedures or steps is a change of the order.
    A record created in the transaction stays at version 1."""
    seen = session.info.setdefault(VERSIONS_BUMPED, set())
    for obj in session.new:
        if isinstance(obj, (Patient, Order)):
            seen.add(obj)
    for obj in list(session.dirty) + list(session.new):
        if isinstance(obj, (ProcedureStep, RequestedProcedure)):
            proc = obj.procedure if isinstance(obj, ProcedureStep) else obj
            obj = proc.order if proc is not None else None
        elif not isinstance(obj, (Patient, Order)) or not session.is_modified(obj, include_collections=False):
            continue
        if obj is None or obj in seen or (obj.id is not None and version_counted(session, obj.__tablename__, obj.id)):
            continue
        seen.add(obj)
        obj.version = (obj.version or 1) + 1


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _forget_bumps(session: Session) -> None:
    session.info.pop(VERSIONS_BUMPED, None)


# Outbox --------------------------------------------------------------------------------------
class OutboxStatus(str, enum.Enum):
    """Lifecycle of an outbound message (DESIGN.md 3, "Out")."""

    PENDING = "PENDING"    # written with the change that caused it; waits for its first attempt
    SENDING = "SENDING"    # claimed by one dispatcher (claimed_by) until claimed_until
    SENT = "SENT"          # the destination accepted it (final)
    FAILED = "FAILED"      # the last attempt failed transiently: tried again at next_attempt_at
    DEAD = "DEAD"          # refused permanently or out of attempts (final until retried by hand)


class OutboxMessage(Base):
    """One message for one destination, written in the same transaction as the change it reports.

    ``payload`` is what to send, as plain domain data (e.g. an order's identifiers and new status);
    ``rendered`` the bytes made from it by the destination's adapter at the first attempt, kept so
    every retry sends the same bytes with the same ``message_id`` (a receiver can drop duplicates).
    """

    __tablename__ = "outbox_messages"
    __table_args__ = (
        Index("ix_outbox_queue", "destination", "status", "id"),
        Index("ix_outbox_status_due", "status", "next_attempt_at"),
    )

    id: Mapped[intpk]
    destination: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    message_id: Mapped[str] = mapped_column(String(64), nullable=False, default="", index=True)
    payload: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    rendered: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    status: Mapped[OutboxStatus] = mapped_column(_enum(OutboxStatus), nullable=False, default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    last_error: Mapped[text]
    reply: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    claimed_by: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    claimed_until: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    order_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("orders.id", ondelete="SET NULL"), index=True)
    cause_kind: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    cause_reference: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    cause_message_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("inbound_messages.id", ondelete="SET NULL"))
    created_at: Mapped[created]
    updated_at: Mapped[updated]
    sent_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)


class SubscriptionStatus(str, enum.Enum):
    """FHIR R4 subscription-status (subscription.html): requested, active, error, off."""

    REQUESTED = "requested"
    ACTIVE = "active"
    ERROR = "error"
    OFF = "off"


class Subscription(Base):
    """A client's standing request to be told of changes (FHIR R4 Subscription, rest-hook channel):
    notifications are outbox rows (destination ``subscription/<id>``) written with the change."""

    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_topic", "topic", "status"),)

    id: Mapped[intpk]
    status: Mapped[SubscriptionStatus] = mapped_column(_enum(SubscriptionStatus), nullable=False,
                                                       default=SubscriptionStatus.ACTIVE)
    topic: Mapped[str] = mapped_column(String(32), nullable=False)           # the resource type watched
    criteria: Mapped[str] = mapped_column(String(1000), nullable=False, default="")
    endpoint: Mapped[str] = mapped_column(String(1000), nullable=False)
    base_url: Mapped[str] = mapped_column(String(255), nullable=False, default="")   # the server as the client saw it
    headers: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    payload: Mapped[str] = mapped_column(String(64), nullable=False, default="")      # mime type, "" = empty
    content: Mapped[str] = mapped_column(String(16), nullable=False, default="id-only")
    reason: Mapped[text]
    end_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    events: Mapped[int] = mapped_column(Integer, nullable=False, default=0)  # eventsSinceSubscriptionStart
    error: Mapped[text]
    created_at: Mapped[created]
    updated_at: Mapped[updated]


# Users and audit -----------------------------------------------------------------------------
class Role(str, enum.Enum):
    """What a person does in the department; the pages and actions each may use are in app.services.auth."""

    TECHNOLOGIST = "technologist"
    SCHEDULER = "scheduler"
    RADIOLOGIST = "radiologist"
    ANALYST = "analyst"            # interface analyst
    ADMINISTRATOR = "administrator"


class ApiToken(Base):
    """A bearer token for a system that uses the JSON API or FHIR (``ris token add``): only the SHA-256 of the
    secret is kept (a token is 256 random bits, so a fast hash is enough); ``role`` says what it may do."""

    __tablename__ = "api_tokens"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role), nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    revoked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[created]
    updated_at: Mapped[updated]


class User(Base):
    """A person who signs in to the web pages; ``password_hash`` is a salted scrypt hash (never the password)."""

    __tablename__ = "users"

    id: Mapped[intpk]
    username: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    full_name: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    role: Mapped[Role] = mapped_column(_enum(Role), nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    last_login_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime)
    created_at: Mapped[created]
    updated_at: Mapped[updated]


class AuditEvent(Base):
    """One view of a patient's data or one change by a person: who, when, what, from where."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_at", "at"),
        Index("ix_audit_user", "username", "at"),
        Index("ix_audit_patient", "patient_key", "at"),
    )

    id: Mapped[intpk]
    at: Mapped[created]
    username: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    role: Mapped[str] = mapped_column(String(24), nullable=False, default="")
    action: Mapped[str] = mapped_column(String(32), nullable=False)        # view, change, login, login-failed ...
    entity: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    entity_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    patient_key: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    detail: Mapped[text]
    source: Mapped[str] = mapped_column(String(128), nullable=False, default="")   # address of the client
    channel: Mapped[str] = mapped_column(String(16), nullable=False, default="")   # web, api, fhir, cli


# Tracking, scheduling resources, statistics --------------------------------------------------
class ProcedureTransition(Base):
    """One step of a requested procedure's lifecycle: from, to, when and why (app.services.lifecycle)."""

    __tablename__ = "procedure_transitions"
    __table_args__ = (Index("ix_transitions_at", "at"), Index("ix_transitions_to_at", "to_state", "at"))

    id: Mapped[intpk]
    procedure_fk: Mapped[int] = mapped_column(ForeignKey("requested_procedures.id", ondelete="CASCADE"), nullable=False,
                                              index=True)
    from_state: Mapped[Optional[ProcedureState]] = mapped_column(_enum(ProcedureState))
    to_state: Mapped[ProcedureState] = mapped_column(_enum(ProcedureState), nullable=False)
    at: Mapped[created]
    cause_kind: Mapped[str] = mapped_column(String(32), nullable=False, default="")       # hl7, mpps, user, job ...
    cause_reference: Mapped[str] = mapped_column(String(255), nullable=False, default="")  # control id, SOP UID ...
    cause_sender: Mapped[str] = mapped_column(String(255), nullable=False, default="")     # sender, station, user
    cause_message_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("inbound_messages.id", ondelete="SET NULL"))
    note: Mapped[str] = mapped_column(String(255), nullable=False, default="")

    procedure: Mapped[RequestedProcedure] = relationship(back_populates="transitions")


class Resource(Base):
    """A room or modality that can be booked (app.services.scheduling): its DICOM identity, what it does
    and when it is open. ``opening_hours``: weekday (mon..sun) -> list of ["HH:MM", "HH:MM"] (site-local);
    ``slot_minutes``: procedure code -> minutes, with ``default_minutes`` for any other code."""

    __tablename__ = "resources"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    ae_title: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    station_name: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    modalities: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    opening_hours: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    default_minutes: Mapped[int] = mapped_column(Integer, nullable=False, default=15)
    slot_minutes: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[created]
    updated_at: Mapped[updated]


class DailyStatistics(Base):
    """The department's figures for one site-local day, computed once by the daily job (unique ``day``)."""

    __tablename__ = "daily_statistics"

    id: Mapped[intpk]
    day: Mapped[dt.date] = mapped_column(Date, nullable=False, unique=True)
    figures: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    computed_by: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    computed_at: Mapped[created]
