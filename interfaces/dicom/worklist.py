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

import datetime as dt
import functools
import logging
import re
from dataclasses import dataclass
from typing import Callable, Iterator

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from app.db import unit_of_work
from app.errors import InvalidInput
from app.models import StepStatus
from app.queries.worklist import DateTimeRange, Text, WorklistItem, WorklistQuery, find_worklist_items
from interfaces.dicom import statuses

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

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


# Query -------------------------------------------------------------------------------------------------
def query_from_identifier(ds: Dataset, settings) -> WorklistQuery:
    """The worklist query a C-FIND Identifier asks for; raises InvalidInput for a malformed key."""
    fields: dict = {name: _text(ds, keyword) for keyword, name in _TOP_TEXT_KEYS.items()}
    uids = _uid_list(ds, "StudyInstanceUID")
    sps = _sequence_item(ds, SPS)
    start = None
    if sps is not None:
        fields.update({name: _text(sps, keyword, SPS) for keyword, name in _SPS_TEXT_KEYS.items()})
        start = _start_range(sps)
    return WorklistQuery(
        **fields,
        study_uids=uids,
        start=start,
        statuses=tuple(StepStatus(s) for s in settings.worklist_statuses),
        limit=settings.worklist_max_results,
    )


def _value(ds: Dataset, keyword: str, parent: str = "") -> str | None:
    """The single value of a key, or None for universal matching (absent or empty)."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if isinstance(value, (MultiValue, list)):
        values = [str(v) for v in value]
        if len(values) > 1:
            raise InvalidInput(f"{keyword}: {len(values)} values, only UIDs may be a list",
                               location=_where(parent, keyword))
        value = values[0] if values else ""
    text = "" if value is None else str(value).strip()
    return text or None


def _text(ds: Dataset, keyword: str, parent: str = "") -> Text | None:
    value = _value(ds, keyword, parent)
    return None if value is None else Text(value)


def _uid_list(ds: Dataset, keyword: str) -> tuple[str, ...] | None:
    if keyword not in ds or ds[keyword].is_empty:
        return None
    value = ds[keyword].value
    uids = [str(v).strip().rstrip("\0") for v in (value if isinstance(value, (MultiValue, list)) else [value])]
    uids = [u for u in uids if u]
    if uids == ["*"]:
        return None
    bad = [u for u in uids if len(u) > 64 or not _UID.match(u)]
    if bad:
        raise InvalidInput(f"{keyword} {bad[0]!r} is not a UID", location=keyword)
    return tuple(uids) or None


def _sequence_item(ds: Dataset, keyword: str) -> Dataset | None:
    """The single item of a sequence matching key; None when absent, empty or with an empty item."""
    if keyword not in ds or ds[keyword].VR != "SQ":
        return None
    items = ds[keyword].value or []
    if len(items) > 1:
        raise InvalidInput(f"{keyword}: {len(items)} items, one allowed (C.2.2.2.6)", location=keyword)
    return items[0] if items and len(items[0]) else None


def _start_range(sps: Dataset) -> DateTimeRange | None:
    date_value = _value(sps, "ScheduledProcedureStepStartDate", SPS)
    time_value = _value(sps, "ScheduledProcedureStepStartTime", SPS)
    if date_value is None and time_value is None:
        return None
    date_from = date_to = time_from = time_to = None
    if date_value is not None:
        date_from, date_to = _range(date_value, _parse_date, "ScheduledProcedureStepStartDate")
    if time_value is not None:
        time_from, time_to = _range(time_value, _parse_time, "ScheduledProcedureStepStartTime")
    return DateTimeRange(date_from=date_from, date_to=date_to, time_from=time_from, time_to=time_to,
                         has_date=date_value is not None, has_time=time_value is not None)


def _range(value: str, parse: Callable, keyword: str):
    """(low, high) of a single value "A", a range "A-B", "-B" or "A-" (PS3.4 C.2.2.2.5); None = open end."""
    where = _where(SPS, keyword)
    parts = value.split("-")
    if len(parts) == 1:
        return parse(value, where)
    if len(parts) != 2 or parts == ["", ""]:
        raise InvalidInput(f"{keyword} {value!r} is not a value or range of its VR", location=where)
    low = parse(parts[0].strip(), where)[0] if parts[0].strip() else None
    high = parse(parts[1].strip(), where)[1] if parts[1].strip() else None
    return low, high


def _parse_date(text: str, where: str) -> tuple[dt.date, dt.date]:
    match = _DA.match(text)
    try:
        if not match:
            raise ValueError(text)
        day = dt.date(*(int(g) for g in match.groups()))
    except ValueError:
        raise InvalidInput(f"{where.rsplit('.', 1)[-1]} {text!r}: not YYYYMMDD",
                           location=where) from None
    return day, day


def _parse_time(text: str, where: str) -> tuple[dt.time, dt.time]:
    """A TM value as the interval its precision covers: "10" is 10:00:00 to 10:59:59.999999."""
    match = _TM.match(text)
    try:
        if not match:
            raise ValueError(text)
        hh, mm, ss, frac = match.groups()
        low = dt.time(int(hh), int(mm or 0), int(ss or 0), int((frac or "0").ljust(6, "0")))
        high = dt.time(int(hh), int(mm if mm is not None else 59), int(ss if ss is not None else 59),
                       int(frac.ljust(6, "0")) if frac else 999999)
    except ValueError:
        raise InvalidInput(f"{where.rsplit('.', 1)[-1]} {text!r}: not HHMMSS.FFFFFF",
                           location=where) from None
    return low, high


def _where(parent: str, keyword: str) -> str:
    return f"{parent}.{keyword}" if parent else keyword


# Response ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Nested:
    """A sequence attribute: the template of its items and the source objects of its items."""

    template: dict
    items: Callable[[WorklistItem], list]


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
    "ScheduledProtocolCodeSequence": _Nested(_CODE, _code_items),
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
    "RequestedProcedureCodeSequence": _Nested(_CODE, _code_items),
    "StudyInstanceUID": lambda i: i.study_instance_uid,
    "RequestedProcedurePriority": _priority,
    "PlacerOrderNumberImagingServiceRequest": lambda i: i.placer_order_number,
    "FillerOrderNumberImagingServiceRequest": lambda i: i.filler_order_number,
    "ReasonForTheRequestedProcedure": lambda i: i.reason,
    SPS: _Nested(_SPS_ITEM, lambda i: [i]),
}


def identifier_response(item: WorklistItem, request: Dataset, settings) -> Dataset:
    """The pending-response Identifier for ``item``: the requested keys, filled, and the character set."""
    response = _render(request, _TOP, item)
    response.SpecificCharacterSet = settings.dicom_specific_character_set
    return response


def _render(request: Dataset | None, template: dict, source) -> Dataset:
    out = Dataset()
    if request is None or len(request) == 0:       # no item keys: the whole item (C.2.2.2.6)
        for keyword, spec in template.items():
            _put(out, keyword, spec, None, source)
        return out
    for elem in request:
        if elem.keyword == "SpecificCharacterSet" or elem.tag.element == 0:   # set below; group lengths
            continue
        spec = template.get(elem.keyword)
        if spec is None:
            out.add(_unknown(elem))
        else:
            _put(out, elem.keyword, spec, elem, source)
    return out


def _put(out: Dataset, keyword: str, spec, elem: DataElement | None, source) -> None:
    if isinstance(spec, _Nested):
        items = elem.value if elem is not None and elem.VR == "SQ" else None
        sub_request = items[0] if items else None
        setattr(out, keyword, Sequence([_render(sub_request, spec.template, x) for x in spec.items(source)]))
    else:
        setattr(out, keyword, spec(source))


def _unknown(elem: DataElement) -> DataElement:
    """A key the engine has no value for: returned empty (a private creator keeps its value)."""
    if elem.tag.is_private_creator:
        return DataElement(elem.tag, elem.VR, elem.value)
    return DataElement(elem.tag, elem.VR, Sequence() if elem.VR == "SQ" else None)


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
