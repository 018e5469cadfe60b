"""Query/Retrieve SCP: C-FIND, C-MOVE and C-GET on the archive index (DICOM PS3.4 Annex C; IHE RAD-14, RAD-16).

Information models: Patient Root and Study Root (PS3.4 C.6.1, C.6.2), FIND, MOVE and GET each, at the levels
PATIENT (Patient Root only), STUDY, SERIES and IMAGE. The archive read model is app.queries.archive.

C-FIND (PS3.4 C.4.1): :func:`query_from_identifier` reads the keys of the query level and of the levels above
it (C.4.1.2.1; keys of lower levels are not matching keys and are returned empty), with the matching types of
C.2.2.2 (interfaces.dicom.matching): single value, wildcard, list of UIDs for the UID keys, date, time and
date-time ranges (StudyDate + StudyTime together are one range, C.2.2.2.5), universal matching. Several values
in ModalitiesInStudy (VM 1-n) match a study holding any of them; several values in any other non-UID key are
refused, as in the worklist (BUG-22). A missing or unknown Query/Retrieve Level, PATIENT level in the Study Root
model, or a malformed key is answered A900, never with everything. Each pending response holds the requested
keys (interfaces.dicom.responses), the Query/Retrieve Level, Retrieve AE Title (0008,0054) and Specific
Character Set (C.4.1.1.3.2); Number of ... Related ... keys (C.6.1.1.x) are counted when asked for.

C-MOVE (PS3.4 C.4.2) and C-GET (C.4.3): the Identifier must hold the unique key of its level as a single value
or a list of UIDs, without wildcards (C.4.2.2.1); the instances at or below the matches are the sub-operations.
C-MOVE sends them on a new association to the Move Destination, which must be a known AE (setting
dicom_known_aes, interfaces.dicom.network); an unknown destination is answered A801. C-GET sends them on the
same association (the SCU proposes the storage contexts with SCP role, PS3.4 C.4.3.1 and PS3.7 D.3.3.4).
Each instance is read from its file; a file that is gone or unreadable is one failed sub-operation (its SOP
Instance UID in the Failed SOP Instance UID List). With the setting dicom_coerce_on_retrieve (default on) each
leaves with the patient and order attributes of the archive index (after a merge or a manual link; originals in
the Original Attributes Sequence, interfaces.dicom.coercion): files stay as received. The final response counts completed, failed and warning
sub-operations; pynetdicom sends it (Success, B000 when some failed, A702 when all failed).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Iterator

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from app.db import unit_of_work
from app.errors import InvalidInput
from app.queries.archive import ArchiveQuery, ArchiveRecord, Level, StoredInstance, find_archive_records, \
    find_stored_instances
from app.queries.worklist import DateTimeRange, Text
from app.services.archive import StudyAttributes, study_attributes
from app.storage import ArchiveStore
from interfaces.dicom import coercion, statuses
from interfaces.dicom.matching import check_identifier, parse_date, parse_time, single, text_key, uid_list, \
    value_range
from interfaces.dicom.network import KnownAE, set_tcp_nodelay
from interfaces.dicom.responses import declare_character_set, render

log = logging.getLogger(__name__)

PATIENT_ROOT = (PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
                PatientRootQueryRetrieveInformationModelGet)
STUDY_ROOT = (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove,
              StudyRootQueryRetrieveInformationModelGet)
SOP_CLASSES = PATIENT_ROOT + STUDY_ROOT

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_CONVERTIBLE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
MAX_CONTEXTS = 128   # presentation contexts in one A-ASSOCIATE-RQ (PS3.8 9.3.2.2)

_UNIQUE_KEYS = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID",
                Level.IMAGE: "SOPInstanceUID"}
_COUNT_KEYS = {"NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances",
               "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances"}


# Query -------------------------------------------------------------------------------------------------
def query_from_identifier(ds: Dataset, sop_class: str, *, retrieve: bool = False, limit: int = 0) -> ArchiveQuery:
    """The archive query an Identifier asks for under ``sop_class``; InvalidInput for a non-conformant one."""
    level = _level(ds, sop_class)
    fields: dict = dict(
        patient_id=text_key(ds, "PatientID"),
        issuer=text_key(ds, "IssuerOfPatientID"),
        patient_name=text_key(ds, "PatientName"),
        patient_sex=text_key(ds, "PatientSex"),
        patient_birth_date=_date_time_range(ds, "PatientBirthDate", None),
    )
    if level.depth >= Level.STUDY.depth:
        fields.update(
            study_uids=uid_list(ds, "StudyInstanceUID"),
            accession_number=text_key(ds, "AccessionNumber"),
            study_id=text_key(ds, "StudyID"),
            study_description=text_key(ds, "StudyDescription"),
            referring_physician=text_key(ds, "ReferringPhysicianName"),
            study_date_time=_date_time_range(ds, "StudyDate", "StudyTime"),
            modalities_in_study=_any_of(ds, "ModalitiesInStudy"),
        )
    if level.depth >= Level.SERIES.depth:
        fields.update(series_uids=uid_list(ds, "SeriesInstanceUID"), modality=text_key(ds, "Modality"),
                      series_number=text_key(ds, "SeriesNumber"),
                      series_description=text_key(ds, "SeriesDescription"))
    if level is Level.IMAGE:
        fields.update(sop_uids=uid_list(ds, "SOPInstanceUID"), sop_class_uids=uid_list(ds, "SOPClassUID"),
                      instance_number=text_key(ds, "InstanceNumber"))
    query = ArchiveQuery(level=level, limit=limit, **fields)
    if retrieve:
        _check_unique_key(query)
    return query


def _level(ds: Dataset, sop_class: str) -> Level:
    value = single(ds, "QueryRetrieveLevel")
    if value is None:
        raise InvalidInput("QueryRetrieveLevel (0008,0052) missing", location="QueryRetrieveLevel", missing=True)
    try:
        level = Level(value.upper())
    except ValueError:
        raise InvalidInput(f"QueryRetrieveLevel {value!r} is not PATIENT, STUDY, SERIES or IMAGE",
                           location="QueryRetrieveLevel") from None
    if level is Level.PATIENT and sop_class in STUDY_ROOT:
        raise InvalidInput("QueryRetrieveLevel PATIENT is not a level of the Study Root model",
                           location="QueryRetrieveLevel")
    return level


def _date_time_range(ds: Dataset, date_keyword: str, time_keyword: str | None) -> DateTimeRange | None:
    date_value = single(ds, date_keyword)
    time_value = single(ds, time_keyword) if time_keyword else None
    if date_value is None and time_value is None:
        return None
    date_from = date_to = time_from = time_to = None
    if date_value is not None:
        date_from, date_to = value_range(date_value, parse_date, date_keyword)
    if time_value is not None:
        time_from, time_to = value_range(time_value, parse_time, time_keyword)
    return DateTimeRange(date_from=date_from, date_to=date_to, time_from=time_from, time_to=time_to,
                         has_date=date_value is not None, has_time=time_value is not None)


def _any_of(ds: Dataset, keyword: str) -> tuple[Text, ...] | None:
    """A multi-valued attribute's key: each value single or wildcard; a match holds any of them."""
    if keyword not in ds or ds[keyword].is_empty:
        return None
    value = ds[keyword].value
    values = [str(v).strip() for v in (value if isinstance(value, (MultiValue, list)) else [value])]
    keys = tuple(Text(v) for v in values if v)
    return None if not keys or any(k.is_universal for k in keys) else keys


def _check_unique_key(q: ArchiveQuery) -> None:
    """C.4.2.2.1: a retrieve names the entities by the unique key of its level (never "everything")."""
    keyword = _UNIQUE_KEYS[q.level]
    value = {Level.PATIENT: q.patient_id, Level.STUDY: q.study_uids, Level.SERIES: q.series_uids,
             Level.IMAGE: q.sop_uids}[q.level]
    if not value:
        raise InvalidInput(f"{keyword} missing: a {q.level.value} level retrieve needs it", location=keyword,
                           missing=True)
    if isinstance(value, Text) and value.is_wildcard:
        raise InvalidInput(f"{keyword} {value.value!r}: no wildcards in a retrieve", location=keyword)


# Response ----------------------------------------------------------------------------------------------
def _multi(values):
    values = list(values)
    return values if len(values) != 1 else values[0]


_TEMPLATE = {
    "QueryRetrieveLevel": lambda r: r.level.value,
    "PatientName": lambda r: r.patient_name,
    "PatientID": lambda r: r.patient_id,
    "IssuerOfPatientID": lambda r: r.issuer,
    "PatientBirthDate": lambda r: r.patient_birth_date,
    "PatientSex": lambda r: r.patient_sex,
    "NumberOfPatientRelatedStudies": lambda r: r.related_studies if r.level is Level.PATIENT else None,
    "NumberOfPatientRelatedSeries": lambda r: r.related_series if r.level is Level.PATIENT else None,
    "NumberOfPatientRelatedInstances": lambda r: r.related_instances if r.level is Level.PATIENT else None,
    "StudyInstanceUID": lambda r: r.study_instance_uid,
    "StudyDate": lambda r: r.study_date,
    "StudyTime": lambda r: r.study_time,
    "AccessionNumber": lambda r: r.accession_number,
    "StudyID": lambda r: r.study_id,
    "StudyDescription": lambda r: r.study_description,
    "ReferringPhysicianName": lambda r: r.referring_physician,
    "ModalitiesInStudy": lambda r: _multi(r.modalities),
    "NumberOfStudyRelatedSeries": lambda r: r.related_series if r.level is Level.STUDY else None,
    "NumberOfStudyRelatedInstances": lambda r: r.related_instances if r.level is Level.STUDY else None,
    "SeriesInstanceUID": lambda r: r.series_instance_uid,
    "Modality": lambda r: r.modality,
    "SeriesNumber": lambda r: r.series_number or None,
    "SeriesDescription": lambda r: r.series_description,
    "NumberOfSeriesRelatedInstances": lambda r: r.related_instances if r.level is Level.SERIES else None,
    "SOPInstanceUID": lambda r: r.sop_instance_uid,
    "SOPClassUID": lambda r: r.sop_class_uid,
    "InstanceNumber": lambda r: r.instance_number or None,
}


def identifier_response(record: ArchiveRecord, request: Dataset, settings) -> Dataset:
    """A pending C-FIND response Identifier (PS3.4 C.4.1.1.3.2)."""
    response = render(request, _TEMPLATE, record)
    response.QueryRetrieveLevel = record.level.value
    response.RetrieveAETitle = settings.dicom_aet
    declare_character_set(response, settings.dicom_specific_character_set)
    return response


# Handlers ----------------------------------------------------------------------------------------------
def handle_find(event, read_factory, settings) -> Iterator[tuple]:
    """EVT_C_FIND for the Q/R models: one pending response per match (PS3.4 C.4.1.3)."""
    try:
        request = event.identifier
        check_identifier(request)
        query = query_from_identifier(request, event.request.AffectedSOPClassUID)
        counts = any(elem.keyword in _COUNT_KEYS for elem in request)
        with unit_of_work(read_factory) as session:
            records = find_archive_records(session, query, counts=counts)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        yield statuses.from_error(exc, statuses.C_FIND), None
        return
    for record in records:
        if event.is_cancelled:
            yield statuses.CANCEL, None
            return
        yield statuses.PENDING, identifier_response(record, request, settings)
    yield statuses.SUCCESS, None


@dataclass
class Retrieval:
    """The instances a retrieve sends and, with coercion on retrieve, what the index says of their studies."""

    instances: list[StoredInstance]
    attributes: dict[str, StudyAttributes]


def _instances_to_retrieve(event, read_factory, settings) -> Retrieval:
    query = query_from_identifier(event.identifier, event.request.AffectedSOPClassUID, retrieve=True)
    with unit_of_work(read_factory) as session:
        instances = find_stored_instances(session, query)
        attributes = (study_attributes(session, sorted({i.study_instance_uid for i in instances}))
                      if settings.dicom_coerce_on_retrieve else {})
    return Retrieval(instances, attributes)


def retrieve_contexts(instances: list[StoredInstance]) -> list:
    """Presentation contexts for sending ``instances``: per SOP Class, the uncompressed syntaxes (pydicom
    re-encodes those) and each compressed syntax they are stored in (sent as stored); at most 128."""
    wanted: dict[tuple[str, tuple], None] = {}
    for inst in instances:
        ts = inst.transfer_syntax_uid or ImplicitVRLittleEndian
        syntaxes = UNCOMPRESSED if ts in _CONVERTIBLE else (ts,)
        wanted.setdefault((inst.sop_class_uid, syntaxes), None)
    contexts = [build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in wanted]
    if len(contexts) > MAX_CONTEXTS:
        log.warning("retrieve needs %d presentation contexts; the first %d are proposed", len(contexts),
                    MAX_CONTEXTS)
    return contexts[:MAX_CONTEXTS]


def load_instance(store: ArchiveStore, inst: StoredInstance, wanted: StudyAttributes | None = None,
                  system: str = "") -> Dataset:
    """The archived data set of ``inst``, coerced to ``wanted`` (what the index says of its study, when coercion on
    retrieve is on; interfaces.dicom.coercion, reason CORRECT); when its file cannot be read, a data set holding
    only its UIDs and no transfer syntax, which pynetdicom cannot send: it counts a failed sub-operation and lists
    the UID."""
    try:
        ds = dcmread(store.absolute(inst.path))
        if wanted is not None:
            coercion.coerce(ds, wanted, reason=coercion.CORRECT, system=system)
        return ds
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one failed sub-operation
        log.error("archived file of %s cannot be read: %s", inst.sop_instance_uid, exc)
        stub = Dataset()
        stub.SOPClassUID = UID(inst.sop_class_uid)
        stub.SOPInstanceUID = UID(inst.sop_instance_uid)
        return stub


def handle_move(event, read_factory, store: ArchiveStore, destinations: dict[str, KnownAE], settings) -> Iterator:
    """EVT_C_MOVE (PS3.4 C.4.2.3): destination address, number of sub-operations, then one data set each."""
    destination = destinations.get(str(event.move_destination or "").strip())
    if destination is None:
        log.warning("C-MOVE to unknown destination %r refused", event.move_destination)
        yield None, None                                    # pynetdicom answers A801
        return
    try:
        retrieval = _instances_to_retrieve(event, read_factory, settings)
        error = None
    except Exception as exc:  # noqa: BLE001
        retrieval, error = Retrieval([], {}), exc
    instances = retrieval.instances
    # pynetdicom opens the destination association before it takes a status: an invalid Identifier costs one
    # (empty) association, the price of answering A900 rather than a bare Cxxx.
    contexts = retrieve_contexts(instances) or [build_context(Verification)]
    yield destination.host, destination.port, {"contexts": contexts,
                                               "evt_handlers": [(evt.EVT_CONN_OPEN, set_tcp_nodelay)]}
    if error is not None:
        yield 1
        yield statuses.from_error(error, statuses.C_MOVE), None
        return
    yield from _sub_operations(event, store, retrieval, settings)


def _sub_operations(event, store: ArchiveStore, retrieval: Retrieval, settings) -> Iterator:
    yield len(retrieval.instances)
    for inst in retrieval.instances:
        if event.is_cancelled:
            yield statuses.CANCEL, None
            return
        yield statuses.PENDING, load_instance(store, inst, retrieval.attributes.get(inst.study_instance_uid),
                                              settings.dicom_aet)


def handle_get(event, read_factory, store: ArchiveStore, settings) -> Iterator:
    """EVT_C_GET (PS3.4 C.4.3.3): number of sub-operations, then one data set each, on this association."""
    try:
        retrieval = _instances_to_retrieve(event, read_factory, settings)
    except Exception as exc:  # noqa: BLE001
        yield 1
        yield statuses.from_error(exc, statuses.C_GET), None
        return
    yield from _sub_operations(event, store, retrieval, settings)


def bind_find(read_factory, settings):
    return functools.partial(handle_find, read_factory=read_factory, settings=settings)


def bind_move(read_factory, store: ArchiveStore, destinations: dict[str, KnownAE], settings):
    return functools.partial(handle_move, read_factory=read_factory, store=store, destinations=destinations,
                             settings=settings)


def bind_get(read_factory, store: ArchiveStore, settings):
    return functools.partial(handle_get, read_factory=read_factory, store=store, settings=settings)
