"""Attribute coercion: give an instance the patient and order attributes the archive holds for its study, and
keep what it said before in the Original Attributes Sequence (DICOM PS3.3 C.12.1.1.9; PS3.4 B.4.1.3).

What is coerced (app.services.archive.StudyAttributes): Patient ID, Issuer of Patient ID, Patient's Name,
Birth Date and Sex, Accession Number, Referring Physician's Name, and the Request Attributes Sequence
(0040,0275; PS3.3 Table 10-9: Accession Number, Requested Procedure ID and Description, Scheduled Procedure
Step ID and Description, Study Instance UID). A value the archive does not know (empty) never blanks one the
instance has. The Study, Series and SOP Instance UIDs are never changed.

When anything changes, one item is appended to the Original Attributes Sequence (0400,0561) with the Modified
Attributes Sequence (0400,0550) holding the original elements (an attribute that was absent is included empty,
C.12.1.1.9.2), Attribute Modification DateTime, Modifying System (our AE title), Source of Previous Values
(type 2, empty: the previous values came from the modality) and Reason for the Attribute Modification:
``COERCE`` when the archive coerces at reception from the order, ``CORRECT`` when it corrects on the way out
what changed since (a patient merge, a manual link).

Where it is applied (settings): ``dicom_coerce_on_store`` coerces a received instance from the order it links to
before it is written (C-STORE then answers B000 "Coercion of data elements", PS3.4 B.2.3);
``dicom_coerce_on_retrieve`` (default on) coerces every instance sent out of the archive (C-MOVE, C-GET,
forwarding) from the index, so archived files stay exactly as received and immutable while what leaves the
archive follows merges and reconciliation.

Character sets: values are Python text; when a new value cannot be written in the instance's Specific Character
Set, the data set is decoded and re-declared as ISO_IR 192 (UTF-8), the original (0008,0005) kept with the
other originals.
"""

from __future__ import annotations

import datetime as dt
from io import BytesIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence

from app.services.archive import RequestAttributes, StudyAttributes

COERCE = "COERCE"
CORRECT = "CORRECT"
UTF8 = "ISO_IR 192"
_ENCODINGS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", UTF8: "utf-8"}

_REQUEST_KEYWORDS = (("AccessionNumber", "accession_number"), ("RequestedProcedureID", "requested_procedure_id"),
                     ("RequestedProcedureDescription", "requested_procedure_description"),
                     ("ScheduledProcedureStepID", "sps_id"),
                     ("ScheduledProcedureStepDescription", "sps_description"),
                     ("StudyInstanceUID", "study_instance_uid"))
_LIMITS = {"PatientID": 64, "IssuerOfPatientID": 64, "PatientName": 324, "PatientBirthDate": 8, "PatientSex": 16,
           "AccessionNumber": 16, "ReferringPhysicianName": 324, "RequestedProcedureID": 16,
           "RequestedProcedureDescription": 64, "ScheduledProcedureStepID": 16,
           "ScheduledProcedureStepDescription": 64, "StudyInstanceUID": 64}


def _value(ds: Dataset, keyword: str) -> str:
    if keyword not in ds or ds[keyword].is_empty:
        return ""
    return str(ds[keyword].value).strip()


def _request_items(request: tuple[RequestAttributes, ...]) -> list[dict]:
    items = []
    for item in request:
        values = {kw: (getattr(item, attr) or "")[:_LIMITS[kw]] for kw, attr in _REQUEST_KEYWORDS}
        items.append({kw: v for kw, v in values.items() if v})
    return items


def _same_request(ds: Dataset, wanted: list[dict]) -> bool:
    present = list(ds.get("RequestAttributesSequence") or [])
    if len(present) != len(wanted):
        return False
    return all(all(_value(item, kw) == value for kw, value in want.items()) for item, want in zip(present, wanted))


def _fits(ds: Dataset, values: list[str]) -> bool:
    charset = ds.get("SpecificCharacterSet", "")
    charset = charset if isinstance(charset, str) else (charset[0] if len(charset) == 1 else "multi")
    encoding = _ENCODINGS.get(str(charset).strip())
    if encoding is None:
        return all(v.isascii() for v in values)
    try:
        for v in values:
            v.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def coerce(ds: Dataset, wanted: StudyAttributes, *, reason: str, system: str,
           now: dt.datetime | None = None) -> bool:
    """Give ``ds`` the attributes ``wanted`` names (module docstring); True when anything changed."""
    changes = {kw: value[:_LIMITS.get(kw, 64)] for kw, value in wanted.as_keywords().items()
               if value and _value(ds, kw) != value[:_LIMITS.get(kw, 64)]}
    request = _request_items(wanted.request)
    request_changes = bool(request) and not _same_request(ds, request)
    if not changes and not request_changes:
        return False
    originals = Dataset()
    new_text = list(changes.values()) + [v for item in request for v in item.values()]
    if not _fits(ds, new_text):
        ds.decode()
        originals.add(ds["SpecificCharacterSet"] if "SpecificCharacterSet" in ds
                      else DataElement(0x00080005, "CS", None))
        ds.SpecificCharacterSet = UTF8
    for keyword, value in changes.items():
        originals.add(_original(ds, keyword))
        setattr(ds, keyword, value)
    if request_changes:
        originals.add(_original(ds, "RequestAttributesSequence"))
        items = []
        for values in request:
            item = Dataset()
            for keyword, value in values.items():
                setattr(item, keyword, value)
            items.append(item)
        ds.RequestAttributesSequence = Sequence(items)
    record = Dataset()
    record.SourceOfPreviousValues = ""
    record.AttributeModificationDateTime = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%d%H%M%S.%f%z")
    record.ModifyingSystem = system[:64]
    record.ReasonForTheAttributeModification = reason
    record.ModifiedAttributesSequence = Sequence([originals])
    history = list(ds.get("OriginalAttributesSequence") or [])
    ds.OriginalAttributesSequence = Sequence([*history, record])
    return True


def _original(ds: Dataset, keyword: str) -> DataElement:
    """The element as the instance had it, or an empty one when it had none (C.12.1.1.9.2)."""
    if keyword in ds:
        element = ds[keyword]
        return DataElement(element.tag, element.VR, element.value)
    tag = tag_for_keyword(keyword)
    return DataElement(tag, dictionary_VR(tag), None)


def coerce_encoded(encoded: bytes, wanted: StudyAttributes, *, reason: str, system: str) -> bytes | None:
    """A Part 10 byte string (File Meta Information first) coerced; None when nothing changes."""
    ds = dcmread(BytesIO(encoded))
    if not coerce(ds, wanted, reason=reason, system=system):
        return None
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()
