"""Modality Worklist C-FIND SCP (DICOM PS3.4 Annex K; IHE RAD TF-2 RAD-5 Query Modality Worklist).

:func:`query_from_identifier` turns a C-FIND Identifier into the core's :class:`WorklistQuery` with the matching
types of PS3.4 C.2.2.2: single value, universal (empty value, C.2.2.2.3), wildcard ``*``/``?`` (C.2.2.2.4),
list of UID matching for StudyInstanceUID (C.2.2.2.2), date and time range matching (C.2.2.2.5: a date range
and a time range given together are one date-time range), and sequence matching of the Scheduled Procedure
Step Sequence (C.2.2.2.6). Keys the engine cannot match on are ignored as matching keys (PS3.4 C.4.1.2.3 /
K.4.1.2.3: an SCP need not support optional matching keys) but are still returned. A value that is not a
value of its VR, several values in a key other than a UID list (BUG-22; without Extended Negotiation of
Multiple Value Matching their meaning is undefined, C.2.2.2.8 note 4), or a sequence key with more than one
item is an :class:`InvalidInput`, answered with a failure status (interfaces.dicom.statuses), never with
"every item" (BUG-23).

:func:`identifier_response` renders one :class:`WorklistItem` as a pending response: exactly the requested keys
(PS3.4 K.4.1.1.3.2, with every requested Type 1/2 return key of Table K.6-1 present, empty when unknown), the
requested keys of sequence items, the whole item for a sequence key sent without item keys (C.2.2.2.6), and
always Specific Character Set (0008,0005) from the setting, so the text is encoded as declared (BUG-20).
"""

from __future__ import annotations

import functools
import logging
from typing import Iterator

from pydicom.dataset import Dataset

from app.db import unit_of_work
from app.models import StepStatus
from app.queries.worklist import DateTimeRange, WorklistItem, WorklistQuery, find_worklist_items
from interfaces.dicom import statuses
from interfaces.dicom.matching import parse_date, parse_time, sequence_item, single, text_key, uid_list, value_range
from interfaces.dicom.responses import Nested, render

log = logging.getLogger(__name__)

SPS = "ScheduledProcedureStepSequence"

# Matching keys (PS3.4 Table K.6-1 keys the core indexes) -> WorklistQuery fields.
_TOP_TEXT_KEYS = {
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer",
    "PatientName": "patient_name",
    "AccessionNumber": "accession_number",
    "RequestedProcedureID": "requested_procedure_id",
}
_SPS_TEXT_KEYS = {
    "Modality": "modality",
    "ScheduledStationAETitle": "station_aet",
    "ScheduledStationName": "station_name",
    "ScheduledProcedureStepID": "sps_id",
}

# Query -------------------------------------------------------------------------------------------------
def query_from_identifier(ds: Dataset, settings) -> WorklistQuery:
    """The worklist query a C-FIND Identifier asks for; raises InvalidInput for a malformed key."""
    fields: dict = {name: text_key(ds, keyword) for keyword, name in _TOP_TEXT_KEYS.items()}
    uids = uid_list(ds, "StudyInstanceUID")
    sps = sequence_item(ds, SPS)
    start = None
    if sps is not None:
        fields.update({name: text_key(sps, keyword, SPS) for keyword, name in _SPS_TEXT_KEYS.items()})
        start = _start_range(sps)
    return WorklistQuery(
        **fields,
        study_uids=uids,
        start=start,
        statuses=tuple(StepStatus(s) for s in settings.worklist_statuses),
        limit=settings.worklist_max_results,
    )


def _start_range(sps: Dataset) -> DateTimeRange | None:
    date_value = single(sps, "ScheduledProcedureStepStartDate", SPS)
    time_value = single(sps, "ScheduledProcedureStepStartTime", SPS)
    if date_value is None and time_value is None:
        return None
    date_from = date_to = time_from = time_to = None
    if date_value is not None:
        date_from, date_to = value_range(date_value, parse_date, "ScheduledProcedureStepStartDate", SPS)
    if time_value is not None:
        time_from, time_to = value_range(time_value, parse_time, "ScheduledProcedureStepStartTime", SPS)
    return DateTimeRange(date_from=date_from, date_to=date_to, time_from=time_from, time_to=time_to,
                         has_date=date_value is not None, has_time=time_value is not None)


# Response ----------------------------------------------------------------------------------------------
_PRIORITIES = {"S": "STAT", "A": "HIGH", "R": "ROUTINE"}   # HL7 table 0027 -> PS3.3 C.4.11 (0040,1003)
_DICOM_PRIORITIES = {"STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW"}
_STEP_STATUSES = {"IN_PROGRESS": "STARTED", "CANCELLED": "CANCELED"}   # to PS3.3 C.4.10 defined terms


def _priority(item: WorklistItem) -> str:
    value = (item.procedure_priority or item.order_priority).strip()
    return value if value.upper() in _DICOM_PRIORITIES else _PRIORITIES.get(value.upper(), value)[:16]


def _code_items(item: WorklistItem) -> list:
    return [item] if item.code_value else []


_CODE = {
    "CodeValue": lambda i: i.code_value,
    "CodingSchemeDesignator": lambda i: i.code_scheme,
    "CodeMeaning": lambda i: i.code_meaning,
}

_SPS_ITEM = {
    "ScheduledStationAETitle": lambda i: list(i.station_aets) if len(i.station_aets) > 1 else
    (i.station_aets[0] if i.station_aets else ""),
    "ScheduledProcedureStepStartDate": lambda i: i.scheduled_start.strftime("%Y%m%d"),
    "ScheduledProcedureStepStartTime": lambda i: i.scheduled_start.strftime("%H%M%S"),
    "Modality": lambda i: i.modality,
    "ScheduledPerformingPhysicianName": lambda i: i.performing_physician,
    "ScheduledProcedureStepDescription": lambda i: i.step_description,
    "ScheduledStationName": lambda i: i.station_name,
    # The core keeps no protocol code per step: the requested procedure code stands in for it.
    "ScheduledProtocolCodeSequence": Nested(_CODE, _code_items),
    "ScheduledProcedureStepID": lambda i: i.sps_id,
    "ScheduledProcedureStepStatus": lambda i: _STEP_STATUSES.get(i.step_status, i.step_status),
}

_TOP = {
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
    SPS: Nested(_SPS_ITEM, lambda i: [i]),
}


def identifier_response(item: WorklistItem, request: Dataset, settings) -> Dataset:
    """The pending-response Identifier for ``item``: the requested keys, filled, and the character set."""
    response = render(request, _TOP, item)
    response.SpecificCharacterSet = settings.dicom_specific_character_set
    return response


# Handler -----------------------------------------------------------------------------------------------
def handle_find(event, read_factory, settings) -> Iterator[tuple]:
    """EVT_C_FIND: one pending response per matching item; failure status for a malformed Identifier."""
    try:
        request = event.identifier
        query = query_from_identifier(request, settings)
        with unit_of_work(read_factory) as session:
            items = find_worklist_items(session, query)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        yield statuses.from_error(exc, statuses.C_FIND), None
        return
    for item in items:
        if event.is_cancelled:
            yield statuses.CANCEL, None
            return
        yield statuses.PENDING, identifier_response(item, request, settings)
    yield statuses.SUCCESS, None


def bind(read_factory, settings):
    return functools.partial(handle_find, read_factory=read_factory, settings=settings)
