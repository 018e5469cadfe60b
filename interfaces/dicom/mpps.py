"""Modality Performed Procedure Step SCP: N-CREATE and N-SET (DICOM PS3.4 F.7; IHE RAD TF-2 RAD-6, RAD-7).

N-CREATE (PS3.4 F.7.2.1) records a performed step "IN PROGRESS"; N-SET (F.7.2.2) moves it to "COMPLETED" or
"DISCONTINUED", after which it may no longer be updated. The adapter reads the attributes the tracking service
needs (Scheduled Step Attributes Sequence (0040,0270): AccessionNumber, RequestedProcedureID,
ScheduledProcedureStepID, StudyInstanceUID; PerformedStationAETitle, Modality, start and end date/time) and
calls app.services.tracking in one unit of work per request. The status answering each outcome is chosen in
interfaces.dicom.statuses.

The Performed Series Sequence (0040,0340; PS3.3 C.4.17) is recorded from N-CREATE and from every N-SET that
carries it (the SCU sends the whole sequence each time): per series its UID, description, protocol name,
retrieve AE title, operator and the referenced image and non-image instances. A performed step that names no
known scheduled step is recorded with the patient and identifiers it gave, for reconciliation.

When the Scheduled Step Attributes Sequence has several items (one performed step for several scheduled
steps, IHE "group case"), the first item that names a known scheduled step is used (any item may match,
BUG-26); the core links a performed step to one scheduled step.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging

from pydicom.dataset import Dataset

from app.commands import PerformedSeriesData, PerformedStepData
from app.db import unit_of_work
from app.errors import InvalidInput
from app.services.tracking import find_scheduled_step, start_performed_step, update_performed_step
from app.uids import new_uid
from interfaces.dicom import statuses
from interfaces.dicom.values import text as _text

log = logging.getLogger(__name__)

SCHEDULED_STEPS = "ScheduledStepAttributesSequence"


def handle_n_create(event, session_factory, settings) -> tuple:
    """EVT_N_CREATE: start a performed procedure step (RAD-6)."""
    try:
        attrs = event.attribute_list
        sop_uid = event.request.AffectedSOPInstanceUID or ""
        assigned = not sop_uid
        if assigned:          # PS3.7 10.1.5.1.4: the SCP assigns the UID and returns it
            sop_uid = new_uid(settings.uid_root)
        if "PerformedProcedureStepStatus" not in attrs:
            raise InvalidInput("PerformedProcedureStepStatus (0040,0252) missing",
                               location="PerformedProcedureStepStatus", missing=True)
        candidates = [_performed_data(sop_uid, attrs, item) for item in _scheduled_items(attrs)]
        with unit_of_work(session_factory) as session:
            data = next((c for c in candidates if find_scheduled_step(session, c) is not None), candidates[0])
            performed = start_performed_step(session, data)
            linked = performed.step is not None
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        return statuses.from_error(exc, statuses.N_CREATE), None
    log.info("MPPS %s IN PROGRESS (%s)", sop_uid, "linked to its scheduled step" if linked else "no scheduled step")
    response = Dataset()
    if assigned:
        response.AffectedSOPInstanceUID = sop_uid
    return statuses.SUCCESS, response


def handle_n_set(event, session_factory, settings) -> tuple:
    """EVT_N_SET: complete or discontinue a performed procedure step (RAD-7)."""
    try:
        mods = event.modification_list
        sop_uid = event.request.RequestedSOPInstanceUID or ""
        data = PerformedStepData(
            sop_instance_uid=sop_uid,
            status=_text(mods, "PerformedProcedureStepStatus"),
            ended_at=_datetime(mods, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"),
            series=performed_series(mods),
        )
        with unit_of_work(session_factory) as session:
            performed = update_performed_step(session, data)
            status = performed.status.value
    except Exception as exc:  # noqa: BLE001
        return statuses.from_error(exc, statuses.N_SET), None
    log.info("MPPS %s %s", sop_uid, status)
    return statuses.SUCCESS, Dataset()


def _scheduled_items(attrs: Dataset) -> list[Dataset]:
    items = list(attrs.get(SCHEDULED_STEPS) or [])
    return items or [Dataset()]


def _performed_data(sop_uid: str, attrs: Dataset, scheduled: Dataset) -> PerformedStepData:
    return PerformedStepData(
        sop_instance_uid=sop_uid,
        status=_text(attrs, "PerformedProcedureStepStatus"),
        station_aet=_text(attrs, "PerformedStationAETitle"),
        modality=_text(attrs, "Modality"),
        study_instance_uid=_text(scheduled, "StudyInstanceUID"),
        accession_number=_text(scheduled, "AccessionNumber"),
        requested_procedure_id=_text(scheduled, "RequestedProcedureID"),
        sps_id=_text(scheduled, "ScheduledProcedureStepID"),
        started_at=_datetime(attrs, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
        patient_id=_text(attrs, "PatientID"),
        patient_name=_text(attrs, "PatientName"),
        description=_text(attrs, "PerformedProcedureStepDescription"),
        series=performed_series(attrs) or (),
    )


def performed_series(ds: Dataset) -> tuple[PerformedSeriesData, ...] | None:
    """The Performed Series Sequence of an N-CREATE or N-SET (None when the request does not carry it).

    InvalidInput for an item without its Series Instance UID (type 1, PS3.3 C.4.17) or a referenced instance
    without its SOP Class / Instance UID."""
    if "PerformedSeriesSequence" not in ds:
        return None
    series = []
    for item in ds.PerformedSeriesSequence or []:
        uid = _text(item, "SeriesInstanceUID")
        if not uid:
            raise InvalidInput("a Performed Series Sequence item lacks its SeriesInstanceUID (0020,000E)",
                               location="PerformedSeriesSequence", missing=True)
        instances = []
        for keyword in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in item.get(keyword) or []:
                sop_class, sop_uid = _text(ref, "ReferencedSOPClassUID"), _text(ref, "ReferencedSOPInstanceUID")
                if not sop_class or not sop_uid:
                    raise InvalidInput(f"a {keyword} item of series {uid} lacks its Referenced SOP Class or "
                                       "Instance UID", location="PerformedSeriesSequence", missing=True)
                instances.append((sop_class, sop_uid))
        series.append(PerformedSeriesData(
            series_instance_uid=uid, description=_text(item, "SeriesDescription"),
            protocol_name=_text(item, "ProtocolName"), retrieve_aet=_text(item, "RetrieveAETitle"),
            operator=_text(item, "OperatorsName") or _text(item, "PerformingPhysicianName"),
            instances=tuple(instances)))
    return tuple(series)


def _datetime(ds: Dataset, date_keyword: str, time_keyword: str) -> dt.datetime | None:
    """A DA + TM pair as a naive datetime in the site's zone (DICOM times carry no zone); None if absent."""
    date_text, time_text = _text(ds, date_keyword), _text(ds, time_keyword)
    if not date_text:
        return None
    try:
        day = dt.datetime.strptime(date_text, "%Y%m%d")
    except ValueError:
        raise InvalidInput(f"{date_keyword} {date_text!r} is not a DA value", location=date_keyword) from None
    if not time_text:
        return day
    digits, _, fraction = time_text.partition(".")
    if not digits.isdigit() or len(digits) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        raise InvalidInput(f"{time_keyword} {time_text!r} is not a TM value", location=time_keyword)
    try:
        return day.replace(hour=int(digits[0:2]), minute=int(digits[2:4] or 0), second=int(digits[4:6] or 0),
                           microsecond=int(fraction[:6].ljust(6, "0")) if fraction else 0)
    except ValueError:
        raise InvalidInput(f"{time_keyword} {time_text!r} is not a TM value", location=time_keyword) from None


def bind_create(session_factory, settings):
    return functools.partial(handle_n_create, session_factory=session_factory, settings=settings)


def bind_set(session_factory, settings):
    return functools.partial(handle_n_set, session_factory=session_factory, settings=settings)
