"""Where each domain value of a profile ends up, and the one check of a profile's own texts against it.

Every value a profile defines (``step.station_aets``, ``procedure.body_part``, ...) has a :class:`Target`: the
DICOM attribute of the worklist item it fills (PS3.4 Table K.6-1; for the patient and order values the attributes
the same data has in images too), that attribute's value representation, the kind of value the key holds
(text, a person name, a date, a time, a code, a number of minutes), and whether it may hold several values.

A profile puts text into those attributes in two ways: through the messages (read at run time) and written in the
profile itself: the rows of its code tables, a value's ``default:``, the AE titles and names of its station rules,
the issuer of its identifier policy, its accession prefix. Every such text is checked once, when the profile is
loaded, by :func:`problem` against the attribute it will fill: the VR's characters and length (DICOM PS3.5 6.2,
Table 6.2-1), and for Modality its defined terms (PS3.3 C.7.3.1.1.1). A table cell is checked against every value
that reads its column, so a 24-character ``station_aet`` is refused with the file, line and key of the cell
instead of reaching a modality as an AE title that is not one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.vocabulary import MODALITIES


@dataclass(frozen=True)
class Target:
    attribute: str = ""          # the DICOM keyword it fills; "" for values that stay in the engine (visits...)
    vr: str = ""                 # AE CS SH LO PN UI DA DT, or "code" (a code sequence item), "minutes"
    kind: str = "text"           # text | name | date | time | code | number (which transforms fit, mappings.transforms)
    multiple: bool = False       # may hold several values (a [*] source)
    terms: frozenset = frozenset()   # defined terms the value must be one of


_MODALITY = Target("Modality", "CS", terms=MODALITIES)
# The kinds of transform product (mappings.transforms.PRODUCES) a value of each kind accepts: a name may also be
# read as plain text (a sender that writes the DICOM form itself).
ACCEPTS: dict[str, frozenset[str]] = {"text": frozenset({"text"}), "name": frozenset({"name", "text"}),
                                      "date": frozenset({"date"}), "time": frozenset({"time"}),
                                      "code": frozenset({"code"}), "number": frozenset({"number"})}

TARGETS: dict[str, Target] = {
    "patient.id": Target("PatientID", "LO"),
    "patient.issuer": Target("IssuerOfPatientID", "LO"),
    "patient.name": Target("PatientName", "PN", "name"),
    "patient.birth_date": Target("PatientBirthDate", "DA", "date"),
    "patient.sex": Target("PatientSex", "CS", terms=frozenset({"M", "F", "O"})),
    "visit.number": Target(),
    "visit.patient_class": Target(),
    "visit.location": Target(),
    "visit.prior_location": Target(),
    "visit.admitted_at": Target(kind="time"),
    "visit.discharged_at": Target(kind="time"),
    "visit.arrived_at": Target(kind="time"),
    "merge.prior_id": Target("PatientID", "LO"),
    "merge.prior_issuer": Target("IssuerOfPatientID", "LO"),
    "appointment.placer_id": Target(),
    "appointment.filler_id": Target(),
    "appointment.placer_order_number": Target(),
    "appointment.filler_order_number": Target(),
    "appointment.start": Target(kind="time"),
    "appointment.duration": Target(),
    "appointment.duration_units": Target(),
    "appointment.resource": Target(),
    "appointment.location": Target(),
    "report.status": Target(),
    "report.observed_at": Target(kind="time"),
    "order.control": Target(),
    "order.status": Target(),
    "order.placer_order_number": Target("PlacerOrderNumberImagingServiceRequest", "LO"),
    "order.placer_issuer": Target(),
    "order.filler_order_number": Target("FillerOrderNumberImagingServiceRequest", "LO"),
    "order.accession_number": Target("AccessionNumber", "SH"),
    "order.priority": Target("RequestedProcedurePriority", "SH"),
    "order.referring_physician": Target("ReferringPhysicianName", "PN", "name"),
    "order.requesting_physician": Target("RequestingPhysician", "PN", "name"),
    "order.reason": Target("ReasonForTheRequestedProcedure", "LO"),
    "procedure.requested_procedure_id": Target("RequestedProcedureID", "SH"),
    "procedure.study_instance_uid": Target("StudyInstanceUID", "UI"),
    "procedure.code_value": Target("RequestedProcedureCodeSequence.CodeValue", "SH"),
    "procedure.code_meaning": Target("RequestedProcedureCodeSequence.CodeMeaning", "LO"),
    "procedure.code_scheme": Target("RequestedProcedureCodeSequence.CodingSchemeDesignator", "SH"),
    "procedure.description": Target("RequestedProcedureDescription", "LO"),
    "procedure.priority": Target("RequestedProcedurePriority", "SH"),
    "procedure.body_part": Target("BodyPartExamined", "CS"),
    "step.sps_id": Target("ScheduledProcedureStepID", "SH"),
    "step.modality": _MODALITY,
    "step.station_aets": Target("ScheduledStationAETitle", "AE", multiple=True),
    "step.station_name": Target("ScheduledStationName", "SH"),
    "step.scheduled_start": Target("ScheduledProcedureStepStartDate/Time", "DT", "time"),
    "step.description": Target("ScheduledProcedureStepDescription", "LO"),
    "step.performing_physician": Target("ScheduledPerformingPhysicianName", "PN", "name"),
    "step.expected_duration": Target("ScheduledProcedureStepEndDate/Time", "minutes", "number"),
    "step.protocol_codes": Target("ScheduledProtocolCodeSequence", "code", "code", multiple=True),
}

# PS3.5 Table 6.2-1: maximum length in characters, and the characters allowed.
_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "UI": 64}
_CS = re.compile(r"^[A-Z0-9 _]*$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")   # ESC (0x1b) introduces ISO 2022 escapes
MAX_MINUTES = 24 * 60
# A code written in a profile, in HL7 CWE order (identifier ^ text ^ coding system), several separated by '~'.
CODE_SEPARATOR, REPETITION_SEPARATOR = "^", "~"


def _text_problem(text: str, vr: str) -> str | None:
    if "\\" in text:
        return "contains a backslash, the DICOM value separator (PS3.5 6.2)"
    if _CONTROL.search(text):
        return "contains a control character"
    limit = _LENGTH.get(vr)
    if limit is not None and len(text) > limit:
        return f"is {len(text)} characters long; {vr} allows at most {limit} (PS3.5 6.2)"
    if vr == "AE" and (not text.strip() or not text.isascii()):
        return "is not an AE title: 1 to 16 characters of the default character repertoire (PS3.5 6.2)"
    if vr == "CS" and not _CS.match(text):
        return "is not a code string: upper-case letters, digits, space and '_' (PS3.5 6.2)"
    if vr == "UI" and not _UID.match(text):
        return "is not a UID: digits and dots, no leading zeros (PS3.5 9.1)"
    if vr == "PN":
        groups = text.split("=")
        if len(groups) > 3:
            return "has more than 3 component groups (PS3.5 6.2.1.2)"
        for group in groups:
            if len(group) > 64:
                return "has a component group longer than 64 characters (PS3.5 6.2)"
            if group.count("^") > 4:
                return "has more than 5 components (family^given^middle^prefix^suffix, PS3.5 6.2.1.1)"
    return None


def parse_codes(text: str) -> list[tuple[str, str, str]]:
    """Codes as a profile writes them, 'VALUE^MEANING^SCHEME' (HL7 CWE order), several separated by '~':
    [(value, scheme, meaning)]."""
    out = []
    for part in text.split(REPETITION_SEPARATOR):
        if not part.strip():
            continue
        value, meaning, scheme = (part.split(CODE_SEPARATOR) + ["", "", ""])[:3]
        out.append((value.strip(), scheme.strip(), meaning.strip()))
    return out


def parse_minutes(text: str) -> float | None:
    """A duration as a profile or a sender writes it: a number of minutes, optionally with a unit
    (``15``, ``15 min``, ``90 s``, ``1.5 h``); None when it is not one."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(s|sec|min|m|h|hr|d)?\s*", text, re.IGNORECASE)
    if not m:
        return None
    factor = {"s": 1 / 60, "sec": 1 / 60, "min": 1.0, "m": 1.0, "h": 60.0, "hr": 60.0, "d": 1440.0}
    return float(m[1]) * factor[(m[2] or "min").lower()]


def problem(key: str, text: str) -> str | None:
    """Why ``text``, written in a profile as a value of ``key``, cannot fill that value's DICOM attribute; None
    when it can (or when the value fills none)."""
    target = TARGETS.get(key)
    if target is None or not target.vr:
        return None
    if target.vr == "minutes":
        minutes = parse_minutes(text)
        if minutes is None or not 0 < minutes <= MAX_MINUTES:
            return f"{text!r} is not a duration: minutes from 1 to {MAX_MINUTES} ('15', '15 min', '1.5 h')"
        return None
    if target.vr == "code":
        codes = parse_codes(text)
        if not codes:
            return f"{text!r} is not a code: write VALUE^MEANING^SCHEME (several separated by '~')"
        for value, scheme, meaning in codes:
            if not value or not scheme or not meaning:
                written = CODE_SEPARATOR.join((value, meaning, scheme)).rstrip(CODE_SEPARATOR)
                return (f"{written!r}: a code needs its value, meaning and coding scheme: VALUE^MEANING^SCHEME "
                        f"(Code Value, Code Meaning and Coding Scheme Designator are Type 1, PS3.3 8.8)")
            for part, vr, what in ((value, "SH", "code value"), (scheme, "SH", "coding scheme designator"),
                                   (meaning, "LO", "code meaning")):
                found = _text_problem(part, vr)
                if found:
                    return f"{what} {part!r} {found}"
        return None
    if target.vr in ("DA", "DT"):
        return None      # dates and times are read through their transform, never written as DICOM text
    found = _text_problem(text, target.vr)
    if found:
        return f"{text!r} {found} ({target.attribute})"
    if target.terms and text not in target.terms:
        if target is _MODALITY:
            return f"{text!r} is not a DICOM modality (PS3.3 C.7.3.1.1.1)"
        return f"{text!r} is not one of {', '.join(sorted(target.terms))} ({target.attribute})"
    return None
