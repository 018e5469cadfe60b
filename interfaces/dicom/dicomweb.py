"""DICOMweb on the archive index (DICOM PS3.18; IHE RAD-107 WADO-RS, RAD-129 QIDO-RS, RAD-108 STOW-RS): a Flask
blueprint under ``/dicomweb``, the same index and the same rules as the DIMSE services of this package.

QIDO-RS (PS3.18 10.6): ``GET /studies``, ``/series``, ``/instances``, ``/studies/{study}/series``,
``/studies/{study}/instances``, ``/studies/{study}/series/{series}/instances``. Query parameters name attributes by
keyword or tag (``PatientID=P1``, ``0020000D=1.2.3``); their values follow the C-FIND matching rules of
interfaces.dicom.query_retrieve (single value, ``*``/``?`` wildcards, date/time ranges, UID lists - comma or
backslash separated), so a malformed value is a 400 naming it, never "everything". ``includefield`` (keyword, tag,
or ``all``), ``limit`` and ``offset`` are honoured; ``fuzzymatching`` is accepted and not applied. Each match is a
DICOM JSON object (PS3.18 F.2) with the default attributes of its level (PS3.18 Table 10.6.3-3..5), the
requested ones and its Retrieve URL (0008,1190); no match: 200 with an empty array (PS3.18 8.3.4.4.1 as
corrected by CP-2473).

WADO-RS (PS3.18 10.4): ``GET /studies/{study}[/series/{series}[/instances/{instance}]]`` answers
``multipart/related; type="application/dicom"``, one part per instance, sent as stored (its transfer syntax in
the part's Content-Type; no transcoding); ``.../metadata`` answers ``application/dicom+json`` without the pixel
data; ``/studies/{study}/series/{series}/instances/{instance}/rendered`` and ``.../frames/{n}/rendered`` answer
``image/png`` (default) or ``image/jpeg`` (Accept). With ``dicom_coerce_on_retrieve`` instances and metadata carry
the patient and order attributes of the index, as C-MOVE does (interfaces.dicom.coercion).

STOW-RS (PS3.18 10.5): ``POST /studies`` (or ``/studies/{study}``) with ``multipart/related;
type="application/dicom"``: each part is archived by the same path as a C-STORE
(interfaces.dicom.storage.store_instance: durable before the answer, indexed, linked, forwarded). The answer
(``application/dicom+json``) lists the stored instances in the Referenced SOP Sequence (0008,1199) with their
Retrieve URLs and the others in the Failed SOP Sequence (0008,1198) with the C-STORE status as Failure Reason
(0008,1197); a part of another study than the one in the URL fails with A900. 200 when every part was stored,
202 when some were, 409 when none was; 415 for a body that is not a multipart of DICOM instances, 406 for an
Accept header asking for what is not offered.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import uuid
import warnings

from flask import Blueprint, Response, abort, current_app, jsonify, request
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from PIL import Image

from app.db import unit_of_work
from app.errors import InvalidInput, NotFound
from app.queries.archive import ArchiveQuery, Level, find_archive_records, find_stored_instances
from app.services import archive
from app.services.archive import ResentPolicy, study_attributes
from app.storage import ArchiveStore
from interfaces import inputs
from interfaces.dicom import coercion, statuses
from interfaces.dicom.query_retrieve import identifier_response, query_from_identifier
from interfaces.dicom.storage import StorageContext, store_instance
from interfaces.web.rendering import render_png

dicomweb = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")

DICOM_JSON = "application/dicom+json"
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
_DEFAULTS = {
    Level.STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
                  "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                  "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    Level.SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                   "NumberOfSeriesRelatedInstances"),
    Level.IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber"),
}
_ALL = {Level.STUDY: _DEFAULTS[Level.STUDY] + ("StudyDescription", "IssuerOfPatientID"),
        Level.SERIES: _DEFAULTS[Level.SERIES], Level.IMAGE: _DEFAULTS[Level.IMAGE]}
_COUNT_KEYS = {"NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances"}
_DROPPED = ("QueryRetrieveLevel", "RetrieveAETitle", "SpecificCharacterSet")


@dicomweb.record_once
def _setup(state) -> None:
    app = state.app
    settings = app.config["RIS_SETTINGS"]
    archive.configure(app.extensions["ris.sessions"], archive.AccessionStudies(settings.dicom_accession_studies))


def _settings():
    return current_app.config["RIS_SETTINGS"]


def _reader():
    return unit_of_work(current_app.extensions["ris.read_sessions"])


def _store() -> ArchiveStore:
    return ArchiveStore(_settings().archive_path)


def _base() -> str:
    return request.host_url.rstrip("/") + dicomweb.url_prefix


def _retrieve_url(study: str, series: str = "", instance: str = "") -> str:
    url = f"{_base()}/studies/{study}"
    if series:
        url += f"/series/{series}"
    if instance:
        url += f"/instances/{instance}"
    return url


def _json(ds: Dataset, **options) -> dict:
    """The DICOM JSON model of ``ds`` (PS3.18 F.2); an empty attribute has no "Value" (F.2.5; pydicom writes an
    empty list for an empty sequence)."""

    def clean(obj: dict) -> dict:
        for attribute in obj.values():
            values = attribute.get("Value")
            if values == []:
                del attribute["Value"]
            elif attribute.get("vr") == "SQ" and values:
                for item in values:
                    clean(item)
        return obj

    return clean(ds.to_json_dict(**options))


# QIDO-RS ---------------------------------------------------------------------------------------------------
def _keyword(name: str) -> str:
    """A query parameter's attribute keyword (given as keyword or as tag ggggeeee)."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        keyword = keyword_for_tag(int(name, 16))
    else:
        keyword = name if tag_for_keyword(name) is not None else ""
    if not keyword:
        raise InvalidInput(f"query parameter {name!r} is neither an attribute keyword nor a tag", location=name)
    return keyword


def _identifier(level: Level, fixed: dict[str, str]) -> tuple[Dataset, int, int]:
    """The C-FIND Identifier a QIDO-RS request means (matching keys, return keys), with its limit and offset."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    for name, values in request.args.lists():
        if name in _CONTROL:
            continue
        keyword = _keyword(name)
        value = ",".join(values)
        if dictionary_VR(tag_for_keyword(keyword)) == "UI":
            value = value.replace(",", "\\")
        with warnings.catch_warnings():      # a malformed value is refused by the query below, naming it
            warnings.simplefilter("ignore")
            setattr(ds, keyword, value)
    for keyword, value in fixed.items():
        setattr(ds, keyword, value)
    wanted = list(_DEFAULTS[level])
    for value in request.args.getlist("includefield"):
        for name in filter(None, (v.strip() for v in value.split(","))):
            wanted += list(_ALL[level]) if name == "all" else [_keyword(name)]
    for keyword in wanted:
        if keyword not in ds:
            tag = tag_for_keyword(keyword)
            ds.add(DataElement(tag, dictionary_VR(tag), Sequence() if dictionary_VR(tag) == "SQ" else None))
    return ds, _whole("limit", 0), _whole("offset", 0)


def _whole(name: str, default: int) -> int:
    """QIDO-RS ``limit`` / ``offset`` (PS3.18 8.3.4.4): digits 0-9 within the range a database key takes."""
    raw = request.args.get(name, "")
    return inputs.whole_number(raw, name) if raw else default


def _search(level: Level, **fixed):
    ds, limit, offset = _identifier(level, fixed)
    query = query_from_identifier(ds, StudyRootQueryRetrieveInformationModelFind, limit=limit + offset if limit else 0)
    counts = any(elem.keyword in _COUNT_KEYS for elem in ds)
    with _reader() as session:
        records = find_archive_records(session, query, counts=counts)[offset:]
    settings = _settings()
    answers = []
    for record in records:
        out = identifier_response(record, ds, settings)
        for keyword in _DROPPED:
            if keyword in out:
                del out[keyword]
        if "InstanceAvailability" in out:
            out.InstanceAvailability = "ONLINE"
        out.RetrieveURL = _retrieve_url(record.study_instance_uid,
                                        record.series_instance_uid if level is not Level.STUDY else "",
                                        record.sop_instance_uid if level is Level.IMAGE else "")
        answers.append(_json(out))
    response = jsonify(answers)
    response.mimetype = DICOM_JSON
    return response


@dicomweb.get("/studies")
def search_studies():
    return _search(Level.STUDY)


@dicomweb.get("/series")
def search_series():
    return _search(Level.SERIES)


@dicomweb.get("/instances")
def search_instances():
    return _search(Level.IMAGE)


@dicomweb.get("/studies/<study>/series")
def search_study_series(study: str):
    return _search(Level.SERIES, StudyInstanceUID=study)


@dicomweb.get("/studies/<study>/instances")
def search_study_instances(study: str):
    return _search(Level.IMAGE, StudyInstanceUID=study)


@dicomweb.get("/studies/<study>/series/<series>/instances")
def search_series_instances(study: str, series: str):
    return _search(Level.IMAGE, StudyInstanceUID=study, SeriesInstanceUID=series)


# WADO-RS ---------------------------------------------------------------------------------------------------
def _instances(study: str, series: str = "", instance: str = ""):
    level = Level.IMAGE if instance else Level.SERIES if series else Level.STUDY
    query = ArchiveQuery(level=level, study_uids=(study,), series_uids=(series,) if series else None,
                         sop_uids=(instance,) if instance else None)
    with _reader() as session:
        found = find_stored_instances(session, query)
        wanted = study_attributes(session, [study]).get(study) if _settings().dicom_coerce_on_retrieve else None
    if not found:
        what = f"instance {instance}" if instance else f"series {series}" if series else f"study {study}"
        raise NotFound(f"no {what} in the archive", location="path")
    return found, wanted


def _read(inst, wanted, *, pixels: bool = True) -> Dataset:
    path = _store().absolute(inst.path)
    try:
        ds = dcmread(path, stop_before_pixels=not pixels)
    except FileNotFoundError:
        raise NotFound(f"the archived file of {inst.sop_instance_uid} is gone", location="path") from None
    if wanted is not None:
        coercion.coerce(ds, wanted, reason=coercion.CORRECT, system=_settings().dicom_aet)
    return ds


def _part10(inst, wanted) -> bytes:
    if wanted is None:
        try:
            return _store().absolute(inst.path).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"the archived file of {inst.sop_instance_uid} is gone", location="path") from None
    ds = _read(inst, wanted)
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _multipart(found, wanted) -> Response:
    boundary = uuid.uuid4().hex

    def parts():
        for inst in found:
            body = _part10(inst, wanted)
            ts = inst.transfer_syntax_uid or "1.2.840.10008.1.2"
            yield (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={ts}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode("ascii")
            yield body
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode("ascii")

    accept = request.headers.get("Accept", "")
    if accept and not any(a in accept for a in ("multipart/related", "application/dicom", "*/*")):
        abort(406, f"Accept {accept!r}: instances are sent as multipart/related; type=\"application/dicom\"")
    return Response(b"".join(parts()), status=200,
                    content_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


@dicomweb.get("/studies/<study>")
def retrieve_study(study: str):
    return _multipart(*_instances(study))


@dicomweb.get("/studies/<study>/series/<series>")
def retrieve_series(study: str, series: str):
    return _multipart(*_instances(study, series))


@dicomweb.get("/studies/<study>/series/<series>/instances/<instance>")
def retrieve_instance(study: str, series: str, instance: str):
    return _multipart(*_instances(study, series, instance))


def _metadata(found, wanted) -> Response:
    items = []
    for inst in found:
        ds = _read(inst, wanted, pixels=False)
        if "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet          # JSON is UTF-8 (PS3.18 F.2)
        items.append(_json(ds, bulk_data_threshold=65536))
    response = jsonify(items)
    response.mimetype = DICOM_JSON
    return response


@dicomweb.get("/studies/<study>/metadata")
def study_metadata(study: str):
    return _metadata(*_instances(study))


@dicomweb.get("/studies/<study>/series/<series>/metadata")
def series_metadata(study: str, series: str):
    return _metadata(*_instances(study, series))


@dicomweb.get("/studies/<study>/series/<series>/instances/<instance>/metadata")
def instance_metadata(study: str, series: str, instance: str):
    return _metadata(*_instances(study, series, instance))


def _rendered(study: str, series: str, instance: str, frame: int) -> Response:
    found, _ = _instances(study, series, instance)
    accept = request.headers.get("Accept", "") or "image/png"
    if "image/png" in accept or "*/*" in accept or "image/*" in accept:
        mimetype = "image/png"
    elif "image/jpeg" in accept:
        mimetype = "image/jpeg"
    else:
        abort(406, f"Accept {accept!r}: rendered images are image/png or image/jpeg")
    png = render_png(_store().absolute(found[0].path), frame - 1, "auto")
    if mimetype == "image/png":
        return Response(png, mimetype=mimetype)
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(out, format="JPEG", quality=90)
    return Response(out.getvalue(), mimetype=mimetype)


@dicomweb.get("/studies/<study>/series/<series>/instances/<instance>/rendered")
def rendered_instance(study: str, series: str, instance: str):
    return _rendered(study, series, instance, 1)


@dicomweb.get("/studies/<study>/series/<series>/instances/<instance>/frames/<int:frame>/rendered")
def rendered_frame(study: str, series: str, instance: str, frame: int):
    if frame < 1:
        raise InvalidInput("frame numbers start at 1", location="frame")
    return _rendered(study, series, instance, frame)


# STOW-RS ---------------------------------------------------------------------------------------------------
def _parts() -> list[bytes]:
    """The application/dicom parts of a multipart/related request body (RFC 2387)."""
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/related"):
        abort(415, f"Content-Type {content_type or 'missing'!r}: STOW-RS takes multipart/related; "
                   "type=\"application/dicom\"")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + request.get_data())
    if not message.is_multipart():
        raise InvalidInput("the body is not a multipart/related body (no boundary or no parts)", location="body")
    parts = []
    for part in message.iter_parts():
        if part.get_content_type() != "application/dicom":
            abort(415, f"a part of type {part.get_content_type()!r}: only application/dicom instances are stored")
        parts.append(part.get_payload(decode=True) or b"")
    if not parts:
        raise InvalidInput("the multipart body holds no instance", location="body")
    return parts


def _storage() -> StorageContext:
    context = current_app.extensions.get("ris.dicomweb.storage")
    if context is None:
        settings = _settings()
        context = StorageContext(
            session_factory=current_app.extensions["ris.sessions"],
            read_factory=current_app.extensions["ris.read_sessions"], store=_store(),
            policy=ResentPolicy(settings.dicom_resent_instance),
            forward_to=tuple(settings.dicom_forward), coerce_on_store=settings.dicom_coerce_on_store,
            aet=settings.dicom_aet)
        current_app.extensions["ris.dicomweb.storage"] = context
    return context


def _reference(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item


@dicomweb.post("/studies")
@dicomweb.post("/studies/<study>")
def store(study: str = ""):
    stored, failed = [], []
    first_study = study
    for body in _parts():
        try:
            head = dcmread(io.BytesIO(body), stop_before_pixels=True)
            sop_class, sop_uid = str(head.get("SOPClassUID", "")), str(head.get("SOPInstanceUID", ""))
            study_uid = str(head.get("StudyInstanceUID", ""))
        except Exception:  # noqa: BLE001 - not a DICOM instance: failed "cannot understand"
            failed.append((_reference("", ""), statuses.UNABLE_TO_PROCESS))
            continue
        if study and study_uid != study:
            failed.append((_reference(sop_class, sop_uid), statuses.IDENTIFIER_DOES_NOT_MATCH))
            continue
        status = store_instance(_storage(), body, calling_aet="")
        code = status if isinstance(status, int) else int(status.Status)
        if code in (statuses.SUCCESS, 0xB000):
            item = _reference(sop_class, sop_uid)
            item.RetrieveURL = _retrieve_url(study_uid, str(head.get("SeriesInstanceUID", "")), sop_uid)
            stored.append(item)
            first_study = first_study or study_uid
        else:
            failed.append((_reference(sop_class, sop_uid), code))
    answer = Dataset()
    if first_study:
        answer.RetrieveURL = _retrieve_url(first_study)
    answer.ReferencedSOPSequence = Sequence(stored)
    items = []
    for item, code in failed:
        item.FailureReason = code
        items.append(item)
    answer.FailedSOPSequence = Sequence(items)
    status = 200 if not failed else 202 if stored else 409
    response = jsonify(_json(answer))
    response.status_code = status
    response.mimetype = DICOM_JSON
    return response

