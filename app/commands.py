"""Domain commands: what an inbound message (HL7, FHIR, ...) asks the core to do.

Adapters and the mapping engine build these plain values; services apply them inside one unit of
work. Every value here is already interpreted: names are DICOM person names
(family^given^middle^prefix^suffix), dates are ``datetime.date``, scheduled times are naive
datetimes in the site's zone, identifiers are trimmed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PatientData:
    patient_id: str
    issuer: str = ""
    name: str | None = None          # None: not given (keep what is stored); "": clear it
    birth_date: dt.date | None = None
    birth_date_given: bool = False    # distinguishes "no value sent" from "cleared"
    sex: str | None = None


@dataclass(frozen=True)
class CodeData:
    """A coded entry (DICOM PS3.3 8.8 code sequence item; HL7 CE/CWE identifier, text, coding system)."""

    value: str
    scheme: str = ""
    meaning: str = ""


@dataclass(frozen=True)
class StepData:
    sps_id: str
    modality: str
    scheduled_start: dt.datetime
    station_aets: tuple[str, ...] = ()
    station_name: str = ""
    description: str = ""
    performing_physician: str = ""
    expected_duration_minutes: float | None = None    # the step's end is its start plus this
    protocol_codes: tuple[CodeData, ...] = ()         # Scheduled Protocol Code Sequence (0040,0008)


@dataclass(frozen=True)
class ProcedureData:
    requested_procedure_id: str
    study_instance_uid: str
    code_value: str = ""
    code_scheme: str = ""
    code_meaning: str = ""
    description: str = ""
    priority: str = ""
    steps: tuple[StepData, ...] = ()
    body_part: str = ""                               # Body Part Examined (0018,0015), a DICOM CS defined term


@dataclass(frozen=True)
class OrderRef:
    """How a message names an existing order: any of these may identify it (first match wins)."""

    placer_order_number: str = ""
    placer_issuer: str = ""
    filler_order_number: str = ""
    accession_number: str = ""

    def describe(self) -> str:
        parts = []
        if self.placer_order_number:
            issuer = f" of {self.placer_issuer}" if self.placer_issuer else ""
            parts.append(f"placer order {self.placer_order_number}{issuer}")
        if self.filler_order_number:
            parts.append(f"filler order {self.filler_order_number}")
        if self.accession_number:
            parts.append(f"accession {self.accession_number}")
        return ", ".join(parts) or "no order identifier"


@dataclass(frozen=True)
class OrderData:
    ref: OrderRef
    accession_number: str            # "" = let the engine assign one
    priority: str = ""
    referring_physician: str = ""
    requesting_physician: str = ""
    reason: str = ""
    procedures: tuple[ProcedureData, ...] = ()


@dataclass(frozen=True)
class RegisterPatient:
    """Create the patient, or update the one with the same identifier (ADT A01/A04/A05/A08/A28/A31)."""

    patient: PatientData


@dataclass(frozen=True)
class PlaceOrder:
    """A new order (ORC-1 NW): patient registered or updated, order, procedures and steps created."""

    patient: PatientData
    order: OrderData


@dataclass(frozen=True)
class UpdateOrder:
    """Change an existing order in place (ORC-1 XO): same accession, same Study Instance UID."""

    patient: PatientData
    order: OrderData


@dataclass(frozen=True)
class CancelOrder:
    """Cancel (CA) or discontinue (DC) an order: its steps leave the worklist; studies stay."""

    ref: OrderRef
    discontinue: bool = False
    reason: str = ""


@dataclass(frozen=True)
class SetStepStatus:
    """Set the Scheduled Procedure Step Status (0040,0020) of the order's open steps (those not yet performed):
    SCHEDULED, HELD, ARRIVED or READY, as a mapping profile's step_statuses table says for an order control
    and order status (ORC-1 / ORC-5)."""

    ref: OrderRef
    status: str


@dataclass(frozen=True)
class Cause:
    """What caused a change: recorded with it (the message id, MPPS UID, user...)."""

    kind: str
    reference: str = ""
    sender: str = ""
    message_fk: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PerformedStepData:
    """What a modality reports in MPPS N-CREATE / N-SET (DICOM PS3.4 F.7, IHE RAD-6/RAD-7)."""

    sop_instance_uid: str
    status: str                       # "IN PROGRESS", "COMPLETED", "DISCONTINUED"
    station_aet: str = ""
    modality: str = ""
    study_instance_uid: str = ""
    accession_number: str = ""
    requested_procedure_id: str = ""
    sps_id: str = ""
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    patient_id: str = ""
    patient_name: str = ""
    description: str = ""
    series: tuple["PerformedSeriesData", ...] | None = None   # None: not in the request (keep what is recorded)


@dataclass(frozen=True)
class PerformedSeriesData:
    """One item of the Performed Series Sequence (0040,0340), DICOM PS3.3 C.4.17."""

    series_instance_uid: str
    description: str = ""
    protocol_name: str = ""
    retrieve_aet: str = ""
    operator: str = ""
    instances: tuple[tuple[str, str], ...] = ()    # (SOP Class UID, SOP Instance UID)


@dataclass(frozen=True)
class InstanceData:
    """Header of one stored DICOM instance, extracted by the storage adapter."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    size: int
    transfer_syntax_uid: str = ""
    patient_id: str = ""
    issuer: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_id: str = ""
    referring_physician: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    modality: str = ""
    series_number: str = ""
    series_description: str = ""
    instance_number: str = ""
    calling_aet: str = ""
    requested_procedure_id: str = ""   # Request Attributes Sequence (0040,0275), first item
    sps_id: str = ""


@dataclass(frozen=True)
class PatientRef:
    patient_id: str
    issuer: str = ""


@dataclass(frozen=True)
class MergePatient:
    """Merge ``merged`` into ``survivor`` (ADT A40/A34, one per PID/MRG pair): orders, visits and
    studies move to the survivor; later messages naming the merged identifier land on the survivor."""

    survivor: PatientData
    merged: PatientRef


@dataclass(frozen=True)
class ChangePatientId:
    """Give the patient known as ``prior`` the identifier of ``patient`` (ADT A47): a rename, not a merge."""

    patient: PatientData
    prior: PatientRef


@dataclass(frozen=True)
class VisitData:
    visit_number: str = ""
    patient_class: str = ""
    location: str = ""
    prior_location: str = ""
    admitted_at: dt.datetime | None = None
    discharged_at: dt.datetime | None = None
    arrived_at: dt.datetime | None = None      # ADT^A10 patient arriving (site-local)


VISIT_EVENTS = ("admit", "register", "preadmit", "transfer", "discharge", "update", "change_class",
                "cancel_admit", "cancel_transfer", "cancel_discharge", "arrive")


@dataclass(frozen=True)
class RecordVisit:
    """An ADT event about a patient and their visit (A01-A08, A11-A13); ``event`` is one of VISIT_EVENTS."""

    patient: PatientData
    visit: VisitData
    event: str


@dataclass(frozen=True)
class HoldOrder:
    """Put an order on hold (ORC-1 HD: its steps leave the worklist) or release it (RL)."""

    ref: OrderRef
    release: bool = False


@dataclass(frozen=True)
class AppointmentData:
    placer_appointment_id: str = ""
    filler_appointment_id: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""
    start: dt.datetime | None = None
    duration_minutes: float | None = None
    resource: str = ""
    location: str = ""


APPOINTMENT_EVENTS = ("book", "modify", "cancel", "noshow")


@dataclass(frozen=True)
class RecordAppointment:
    """SIU S12 book, S13/S14 modify, S15/S16/S17 cancel, S26 no-show; ``event`` in APPOINTMENT_EVENTS."""

    patient: PatientData | None
    appointment: AppointmentData
    event: str


@dataclass(frozen=True)
class RecordReport:
    """A report (ORU^R01) for the order it names; kept even when the order is unknown here."""

    ref: OrderRef
    status: str = ""
    text: str = ""
    study_instance_uid: str = ""
    observed_at: dt.datetime | None = None
