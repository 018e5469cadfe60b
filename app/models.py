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
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


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
    LINKED = "LINKED"
    UNMATCHED = "UNMATCHED"


# Patients ------------------------------------------------------------------------------------
class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_key"),)

    id: Mapped[intpk]
    patient_id: Mapped[ident]
    issuer: Mapped[ident]
    name: Mapped[pn]
    birth_date: Mapped[Optional[dt.date]] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(16), nullable=False, default="")
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

    order: Mapped[Order] = relationship(back_populates="procedures")
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
    updated_at: Mapped[updated]

    procedure: Mapped[RequestedProcedure] = relationship(back_populates="steps")
    stations: Mapped[list["StepStation"]] = relationship(
        back_populates="step", cascade="all, delete-orphan", order_by="StepStation.id"
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

    step: Mapped[Optional[ProcedureStep]] = relationship()


# Archive index -------------------------------------------------------------------------------
class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_accession", "accession_number"),)

    id: Mapped[intpk]
    study_instance_uid: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    patient_id: Mapped[ident]
    issuer: Mapped[ident]
    patient_name: Mapped[pn]
    accession_number: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    study_date: Mapped[str] = mapped_column(String(8), nullable=False, default="")
    study_time: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    description: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    order_fk: Mapped[Optional[int]] = mapped_column(ForeignKey("orders.id"), index=True)
    link_status: Mapped[LinkStatus] = mapped_column(_enum(LinkStatus), nullable=False, default=LinkStatus.UNMATCHED)
    link_reason: Mapped[str] = mapped_column(String(255), nullable=False, default="")
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


# Appointments and reports --------------------------------------------------------------------
class AppointmentStatus(str, enum.Enum):
    BOOKED = "BOOKED"
    CANCELLED = "CANCELLED"
    NOSHOW = "NOSHOW"


class Appointment(Base):
    """A booked slot for an order (HL7 v2.5.1 chapter 10, SIU S12-S26)."""

    __tablename__ = "appointments"
    __table_args__ = (Index("ix_appointments_ids", "filler_appointment_id", "placer_appointment_id"),)

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
    created_at: Mapped[created]
    updated_at: Mapped[updated]

    order: Mapped[Optional[Order]] = relationship()


class Report(Base):
    """A result report for an order, as ORU^R01 carries it (HL7 v2.5.1 chapter 7, OBR + OBX)."""

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

    order: Mapped[Optional[Order]] = relationship()
