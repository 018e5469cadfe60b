"""Modality Worklist C-FIND SCP (DICOM PS3.4 Annex K; IHE RAD TF-2 RAD-5 Query Modality Worklist).

Matching (PS3.4 K.2.2.1, C.2.2.2). First every key of the Identifier is checked against its VR
(interfaces.dicom.matching.check_identifier, shared with the Q/R SCP): a malformed value anywhere, a key with
several values other than a UID list (BUG-22; their meaning is undefined without Extended Negotiation of
Multiple Value Matching, C.2.2.2.8 note 4), or a sequence key with more than one item is answered with a
failure status (A900, interfaces.dicom.statuses), never with "every item" (BUG-23). Then
:func:`query_from_identifier` turns every key of Table K.6-1 that the engine holds data for into the core's
:class:`WorklistQuery`, with the matching types of C.2.2.2: single value, universal (empty value or ``*``),
wildcard ``*``/``?``, list of UIDs (StudyInstanceUID), date and time ranges (the SPS start date and time
together are one date-time range; a time range may cross midnight, see app.queries.worklist), and sequence
matching inside the Scheduled Procedure Step Sequence and the code sequences. The keys (:data:`MATCHED_KEYS`):

- patient: PatientName, PatientID, IssuerOfPatientID, PatientBirthDate, PatientSex;
- imaging service request: AccessionNumber, ReferringPhysicianName, RequestingPhysician,
  PlacerOrderNumberImagingServiceRequest, FillerOrderNumberImagingServiceRequest, ReasonForTheRequestedProcedure;
- requested procedure: RequestedProcedureID, RequestedProcedureDescription, StudyInstanceUID,
  RequestedProcedurePriority, RequestedProcedureCodeSequence (CodeValue, CodingSchemeDesignator, CodeMeaning);
- scheduled procedure step: Modality, ScheduledStationAETitle (any of a step's titles), ScheduledStationName,
  ScheduledProcedureStepStartDate/Time, ScheduledPerformingPhysicianName (a Required key),
  ScheduledProcedureStepDescription, ScheduledProcedureStepID, ScheduledProcedureStepStatus,
  ScheduledProtocolCodeSequence (the step's protocol codes as mapped, else its procedure's code).

Every other key of Table K.6-1 is Optional and the engine holds no data for it (visit, patient medical
keys, SPS location, contrast agent, ...): as K.2.2.1.1.2 allows, it is not matched but returned, empty, as
a return key. Person names match case-sensitively, or case-insensitively with the setting
``worklist_names_case_insensitive`` (C.2.2.2.1 allows both). Other settings: ``worklist_statuses`` (which step
statuses a modality sees), ``worklist_filter_calling_aet`` with ``worklist_calling_aet_aliases`` (a modality
sees only the steps scheduled on its own AE title or the station titles its aliases give; off by default, as
the corpus's Orthanc cases require), ``worklist_unassigned_station_aet``.

Answers (K.4.1.1.3.2): exactly the requested keys, every requested Type 1 and Type 2 return key present; a
sequence key sent without item keys is answered with whole items (C.2.2.2.6). Type 1 keys always have a value:
a step scheduled on no station answers ``worklist_unassigned_station_aet``; the 1C descriptions fall back on
the procedure code (app.queries.worklist). The code sequences carry one item when the procedure has a code,
none otherwise (their descriptions then carry the meaning: K.6-1 asks for the description or the code).
Each answer declares its character set, the setting ``dicom_specific_character_set`` (validated at start-up),
or ISO_IR 192 for an answer that set cannot encode (interfaces.dicom.responses), and is written straight to
bytes (docs/performance.md).

C-CANCEL (PS3.7 9.1.5, PS3.4 K.4.1.3.1): answered with status Cancel (FE00) as soon as it arrives.
pynetdicom's DUL thread reads the socket only when it has nothing left to send, so a handler that queues
answers faster than they are sent would never see the cancel before the end; :class:`CancelWatch` keeps the
send queue short and, when the peer has sent something, lets the DUL read it before the next answer.
"""

from __future__ import annotations

import functools
import logging
import select
import time
from dataclasses import dataclass, field
from typing import Iterator

from pydicom.dataset import Dataset

from app.db import unit_of_work
from app.models import StepStatus
from app.queries.worklist import CodeKey, WorklistItem, WorklistQuery, find_worklist_items
from config.settings import SettingsError
from interfaces.dicom import statuses
from interfaces.dicom.matching import check_identifier, date_time_range, sequence_item, text_key, uid_list
from interfaces.dicom.responses import AnswerPlan, Nested
from interfaces.dicom.values import parse_character_set

log = logging.getLogger(__name__)

SPS = "ScheduledProcedureStepSequence"


# Configuration ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorklistConfig:
    """The worklist settings, checked once when the AE starts (:func:`worklist_config`)."""

    statuses: tuple[StepStatus, ...] = (StepStatus.SCHEDULED, StepStatus.ARRIVED, StepStatus.READY)
    charset: tuple[str, ...] = ("ISO_IR 192",)
    unassigned_station_aet: str = "UNASSIGNED"
    names_case_insensitive: bool = False
    filter_calling_aet: bool = False
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    limit: int = 0

    def stations_for(self, calling_aet: str) -> tuple[str, ...] | None:
        """The station AE titles a caller may see (None: every station)."""
        if not self.filter_calling_aet:
            return None
        return (calling_aet, *self.aliases.get(calling_aet, ()))


def worklist_config(settings) -> WorklistConfig:
    """The worklist settings of ``settings``; SettingsError naming a malformed one."""
    try:
        step_statuses = tuple(StepStatus(s.strip().upper()) for s in settings.worklist_statuses)
    except ValueError:
        raise SettingsError(f"RIS_WORKLIST_STATUSES={','.join(settings.worklist_statuses)!r}: each one of "
                            f"{', '.join(s.value for s in StepStatus)}") from None
    try:
        charset = parse_character_set(settings.dicom_specific_character_set)
    except ValueError as exc:
        raise SettingsError(f"RIS_DICOM_SPECIFIC_CHARACTER_SET={settings.dicom_specific_character_set!r}: "
                            f"{exc}") from None
    if charset == ("",):
        raise SettingsError("RIS_DICOM_SPECIFIC_CHARACTER_SET is empty: name the character set of the answers "
                            "(e.g. ISO_IR 192)")
    unassigned = settings.worklist_unassigned_station_aet.strip()
    if not 0 < len(unassigned) <= 16 or "\\" in unassigned:
        raise SettingsError(f"RIS_WORKLIST_UNASSIGNED_STATION_AET={unassigned!r}: an AE title of 1-16 "
                            f"characters")
    aliases: dict[str, tuple[str, ...]] = {}
    for entry in settings.worklist_calling_aet_aliases:
        caller, _, stations = entry.partition("=")
        titles = tuple(t.strip() for t in stations.split("|") if t.strip())
        if not caller.strip() or not titles or any(len(t) > 16 for t in (caller.strip(), *titles)):
            raise SettingsError(f"RIS_WORKLIST_CALLING_AET_ALIASES: {entry!r} is not CALLING_AET=STATION_AET|...")
        aliases[caller.strip()] = aliases.get(caller.strip(), ()) + titles
    return WorklistConfig(statuses=step_statuses, charset=charset, unassigned_station_aet=unassigned,
                          names_case_insensitive=settings.worklist_names_case_insensitive,
                          filter_calling_aet=settings.worklist_filter_calling_aet, aliases=aliases,
                          limit=settings.worklist_max_results)


# Query -------------------------------------------------------------------------------------------------
# Single value / wildcard keys of Table K.6-1 -> WorklistQuery fields.
_TOP_TEXT_KEYS = {
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer",
    "PatientName": "patient_name",
    "PatientSex": "patient_sex",
    "AccessionNumber": "accession_number",
    "ReferringPhysicianName": "referring_physician",
    "RequestingPhysician": "requesting_physician",
    "PlacerOrderNumberImagingServiceRequest": "placer_order_number",
    "FillerOrderNumberImagingServiceRequest": "filler_order_number",
    "ReasonForTheRequestedProcedure": "reason",
    "RequestedProcedureID": "requested_procedure_id",
    "RequestedProcedureDescription": "procedure_description",
}
_SPS_TEXT_KEYS = {
    "Modality": "modality",
    "ScheduledStationAETitle": "station_aet",
    "ScheduledStationName": "station_name",
    "ScheduledProcedureStepID": "sps_id",
    "ScheduledProcedureStepDescription": "step_description",
    "ScheduledPerformingPhysicianName": "performing_physician",
}
_CODE_SEQUENCES = (("", "RequestedProcedureCodeSequence"), (SPS, "ScheduledProtocolCodeSequence"))
MATCHED_KEYS = frozenset({*_TOP_TEXT_KEYS, *_SPS_TEXT_KEYS, "StudyInstanceUID", "PatientBirthDate",
                          "RequestedProcedurePriority", "ScheduledProcedureStepStartDate",
                          "ScheduledProcedureStepStartTime", "ScheduledProcedureStepStatus",
                          *(keyword for _, keyword in _CODE_SEQUENCES)})

# Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10 Defined Terms, of each step status.
_STEP_STATUS_TERMS = {
    StepStatus.SCHEDULED: "SCHEDULED", StepStatus.ARRIVED: "ARRIVED", StepStatus.READY: "READY",
    StepStatus.STARTED: "STARTED", StepStatus.IN_PROGRESS: "STARTED", StepStatus.COMPLETED: "COMPLETED",
    StepStatus.DISCONTINUED: "DISCONTINUED", StepStatus.CANCELLED: "CANCELED", StepStatus.HELD: "HELD",
    StepStatus.UNSCHEDULED: "UNSCHEDULED",
}
# Requested Procedure Priority (0040,1003), PS3.3 C.4.11 Defined Terms, of each stored priority: the DICOM
# terms themselves, HL7 table 0027 (S stat, A ASAP, T timing critical, R routine) and U (FHIR "urgent").
_PRIORITY_TERMS = {
    "STAT": "STAT", "S": "STAT", "HIGH": "HIGH", "A": "HIGH", "ASAP": "HIGH", "T": "HIGH", "U": "HIGH",
    "URGENT": "HIGH", "ROUTINE": "ROUTINE", "R": "ROUTINE", "MEDIUM": "MEDIUM", "LOW": "LOW",
}


def query_from_identifier(ds: Dataset, config: WorklistConfig, calling_aet: str = "") -> WorklistQuery:
    """The worklist query an Identifier asks for; raises InvalidInput for a malformed key."""
    fields: dict = {name: text_key(ds, keyword) for keyword, name in _TOP_TEXT_KEYS.items()}
    fields["birth_date"] = date_time_range(ds, "PatientBirthDate", None)
    priority = text_key(ds, "RequestedProcedurePriority")
    if priority is not None:
        fields["priorities"] = tuple(code for code, term in _PRIORITY_TERMS.items() if priority.matches(term))
    step_statuses = config.statuses
    codes = []
    sps = sequence_item(ds, SPS)
    if sps is not None:
        fields.update({name: text_key(sps, keyword, SPS) for keyword, name in _SPS_TEXT_KEYS.items()})
        fields["start"] = date_time_range(sps, "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
                                          SPS)
        status = text_key(sps, "ScheduledProcedureStepStatus", SPS)
        if status is not None:
            step_statuses = tuple(s for s in step_statuses if status.matches(_STEP_STATUS_TERMS[s]))
    for parent, keyword in _CODE_SEQUENCES:
        holder = sps if parent else ds
        item = sequence_item(holder, keyword, parent) if holder is not None else None
        if item is not None:
            at = f"{parent}.{keyword}" if parent else keyword
            codes.append(CodeKey(value=text_key(item, "CodeValue", at),
                                 scheme=text_key(item, "CodingSchemeDesignator", at),
                                 meaning=text_key(item, "CodeMeaning", at), protocol=bool(parent)))
    return WorklistQuery(
        **fields,
        study_uids=uid_list(ds, "StudyInstanceUID"),
        codes=tuple(codes),
        statuses=step_statuses,
        station_aets_any=config.stations_for(calling_aet),
        unassigned_station_aet=config.unassigned_station_aet,
        names_case_insensitive=config.names_case_insensitive,
        limit=config.limit,
    )


# Response ----------------------------------------------------------------------------------------------
def _priority(item: WorklistItem) -> str:
    return _PRIORITY_TERMS.get((item.procedure_priority or item.order_priority).strip().upper(), "")


def _code_items(item: WorklistItem) -> list:
    return [item] if item.code_value else []


def _protocol_items(item: WorklistItem) -> list:
    """The step's protocol codes as the profile mapped them (step.protocol_codes), else its procedure's code."""
    return list(item.protocol_codes) or _code_items(item)


_CODE = {
    "CodeValue": lambda i: i.code_value,
    "CodingSchemeDesignator": lambda i: i.code_scheme,
    "CodeMeaning": lambda i: i.code_meaning,
}


def answer_template(config: WorklistConfig) -> dict:
    """Keyword -> value of a :class:`WorklistItem` (Table K.6-1 keys the engine holds data for, and the Type 2
    keys of the Scheduled Procedure Step item it does not, so that a whole item holds them)."""
    sps_item = {
        "ScheduledStationAETitle": lambda i: list(i.station_aets) or config.unassigned_station_aet,
        "ScheduledProcedureStepStartDate": lambda i: i.scheduled_start.strftime("%Y%m%d"),
        "ScheduledProcedureStepStartTime": lambda i: i.scheduled_start.strftime("%H%M%S"),
        # Type 3: start + the step's expected duration (step.expected_duration), empty when unknown
        "ScheduledProcedureStepEndDate": lambda i: i.scheduled_end.strftime("%Y%m%d") if i.scheduled_end else "",
        "ScheduledProcedureStepEndTime": lambda i: i.scheduled_end.strftime("%H%M%S") if i.scheduled_end else "",
        "Modality": lambda i: i.modality,
        "ScheduledPerformingPhysicianName": lambda i: i.performing_physician,
        "ScheduledProcedureStepDescription": lambda i: i.step_description,
        "ScheduledStationName": lambda i: i.station_name,
        "ScheduledProcedureStepLocation": lambda i: "",
        "PreMedication": lambda i: "",
        "ScheduledProtocolCodeSequence": Nested(_CODE, _protocol_items),
        "ScheduledProcedureStepID": lambda i: i.sps_id,
        "RequestedContrastAgent": lambda i: "",
        "ScheduledProcedureStepStatus": lambda i: _STEP_STATUS_TERMS.get(StepStatus(i.step_status), i.step_status),
    }
    return {
        "PatientName": lambda i: i.patient_name,
        "PatientID": lambda i: i.patient_id,
        "IssuerOfPatientID": lambda i: i.issuer,
        "PatientBirthDate": lambda i: i.birth_date.strftime("%Y%m%d") if i.birth_date else "",
        "PatientSex": lambda i: i.sex,
        "AccessionNumber": lambda i: i.accession_number,
        "ReferringPhysicianName": lambda i: i.referring_physician,
        "RequestingPhysician": lambda i: i.requesting_physician,
        "RequestedProcedureID": lambda i: i.requested_procedure_id,
        "RequestedProcedureDescription": lambda i: i.procedure_description,
        "RequestedProcedureCodeSequence": Nested(_CODE, _code_items),
        "StudyInstanceUID": lambda i: i.study_instance_uid,
        "RequestedProcedurePriority": _priority,
        "PlacerOrderNumberImagingServiceRequest": lambda i: i.placer_order_number,
        "FillerOrderNumberImagingServiceRequest": lambda i: i.filler_order_number,
        "ReasonForTheRequestedProcedure": lambda i: i.reason,
        SPS: Nested(sps_item, lambda i: [i]),
    }


def identifier_response(item: WorklistItem, request: Dataset, config, implicit: bool = True,
                        little: bool = True) -> Dataset:
    """The pending-response Identifier for ``item`` (one answer; the handler compiles the plan once).
    ``config`` is a :class:`WorklistConfig` or the settings it comes from."""
    if not isinstance(config, WorklistConfig):
        config = worklist_config(config)
    return AnswerPlan(request, answer_template(config)).answer(item, config.charset, implicit, little)


# Handler -----------------------------------------------------------------------------------------------
class CancelWatch:
    """Whether the SCU has cancelled the C-FIND, without letting the answers run ahead of the socket.

    pynetdicom's DUL thread sends or reads, one per turn, and reads only when nothing waits to be sent.
    Before each answer: if more than :attr:`WINDOW` primitives wait, wait (bounded) until half as many do (the
    DUL never runs dry, which would cost it a 1 ms nap); if the peer has sent something (a C-CANCEL-FIND-RQ,
    PS3.7 9.3.2.3), wait until the DUL has sent what waits and read it, then look for the cancel. So once the
    cancel has arrived at most WINDOW primitives follow it (answers already on their way to the SCU arrive too:
    with findscu --cancel 3 over 300 items, 5 to 45 answers in all)."""

    WINDOW = 32        # P-DATA primitives (an answer is two: command set and Identifier)
    DRAIN_S = 5.0      # at most this long for the queued answers to go out
    READ_S = 0.5       # at most this long for the DUL to read and decode what the peer sent

    def __init__(self, event):
        self.event = event
        dul = getattr(getattr(event, "assoc", None), "dul", None)
        self.queue = getattr(dul, "to_provider_queue", None)
        self.socket = getattr(getattr(dul, "socket", None), "socket", None)

    def cancelled(self) -> bool:
        if self.event.is_cancelled:
            return True
        if self.queue is None or self.socket is None:
            return False
        try:
            readable = bool(select.select([self.socket], [], [], 0)[0])
        except (OSError, ValueError):             # closed under us: pynetdicom ends the operation
            return False
        if readable:
            self._wait(lambda: self.queue.empty(), self.DRAIN_S)
            return self._wait(lambda: self.event.is_cancelled, self.READ_S, until_quiet=True)
        if self.queue.qsize() > self.WINDOW:
            self._wait(lambda: self.queue.qsize() <= self.WINDOW // 2, self.DRAIN_S)
        return False

    def _wait(self, done, seconds: float, until_quiet: bool = False) -> bool:
        deadline = time.monotonic() + seconds
        quiet = 0
        while time.monotonic() < deadline:
            if done():
                return True
            if until_quiet:                        # the peer's data was read and was not a cancel
                quiet = quiet + 1 if not select.select([self.socket], [], [], 0)[0] else 0
                if quiet > 20:
                    return False
            time.sleep(0.0005)
        return False


def handle_find(event, read_factory, config: WorklistConfig, template: dict) -> Iterator[tuple]:
    """EVT_C_FIND: one pending response per matching item; failure status for a malformed Identifier."""
    try:
        request = event.identifier
        check_identifier(request)
        query = query_from_identifier(request, config, _calling_aet(event))
        plan = AnswerPlan(request, template)
        with unit_of_work(read_factory) as session:
            items = find_worklist_items(session, query)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        yield statuses.from_error(exc, statuses.C_FIND), None
        return
    implicit, little = _encoding(event)
    watch = CancelWatch(event)
    for item in items:
        if watch.cancelled():
            log.info("worklist C-FIND cancelled by the SCU")
            yield statuses.CANCEL, None
            return
        yield statuses.PENDING, plan.answer(item, config.charset, implicit, little)
    yield statuses.SUCCESS, None


def _calling_aet(event) -> str:
    requestor = getattr(getattr(event, "assoc", None), "requestor", None)
    return str(getattr(requestor, "ae_title", "") or "").strip()


def _encoding(event) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the presentation context the C-FIND came on."""
    syntax = getattr(getattr(event, "context", None), "transfer_syntax", None)
    if syntax is None:
        return True, True
    return syntax.is_implicit_VR, syntax.is_little_endian


def bind(read_factory, settings):
    config = worklist_config(settings)
    return functools.partial(handle_find, read_factory=read_factory, config=config,
                             template=answer_template(config))
