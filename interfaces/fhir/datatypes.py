"""FHIR R4 data types <-> domain values (datatypes.html): HumanName <-> DICOM PN, instants and dates
with the site's time zone, Identifier types, references (references.html), CodeableConcept systems.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from app.errors import InvalidInput
from interfaces import inputs
from interfaces.fhir.errors import FhirError

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"   # identifier types: MR, ACSN, PLAC, FILL
DCM = "http://dicom.nema.org/resources/ontology/DCM"          # DICOM modalities and codes
DICOM_UID = "urn:dicom:uid"
# Coding system URI <-> HL7 v2 coding scheme (table 0396) as the core stores it (code_scheme).
SCHEMES = {"http://loinc.org": "LN", "http://snomed.info/sct": "SCT", DCM: "DCM",
           "http://www.ama-assn.org/go/cpt": "C4", "http://www.radlex.org": "RADLEX"}
SYSTEMS = {scheme: system for system, scheme in SCHEMES.items()}
SEX_TO_GENDER = {"M": "male", "F": "female", "O": "other"}
GENDER_TO_SEX = {"male": "M", "female": "F", "other": "O", "unknown": ""}


@dataclass
class Context:
    """What a translation needs: the site's zone, the UID root, the base URL, the mapping profile's
    accession prefix and code tables, and where each domain
    value was read from (domain location -> FHIRPath, for errors: see interfaces.fhir.errors)."""

    site_tz: ZoneInfo
    uid_root: str
    base_url: str = ""
    accession_prefix: str = "RIS"
    profile_name: str = "default"                 # the mapping profile (named in errors)
    tables: dict = field(default_factory=dict)   # the mapping profile's code tables
    session: object = None                        # the unit of work of the request (lookups while rendering)
    locations: dict[str, str] = field(default_factory=dict)

    def origin(self, location: str, expression: str) -> None:
        self.locations.setdefault(location, expression)


# Names ---------------------------------------------------------------------------------------
# A DICOM PN (PS3.5 6.2) has up to three component groups, alphabetic=ideographic=phonetic
# (6.2.1.2), each of five components family^given^middle^prefix^suffix; the core keeps every person
# name in this form (HL7 XPN/XCN are mapped onto it by mappings.transforms.person_name). A FHIR R4
# HumanName (datatypes.html#HumanName) has family, given (the first given name, then middle names),
# prefix and suffix; the ideographic and phonetic groups are HumanNames of their own marked with the
# extension iso21090-EN-representation (IDE, SYL), as R4 extensibility defines for ISO 21090 EN.
# :func:`human_names` and :func:`person_name` are the one translation, used for every person.
REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
_GROUPS = ("ABC", "IDE", "SYL")
_PN_DELIMITERS = ("^", "=", "\\")


def _representation(name) -> str:
    """'IDE' or 'SYL' for a HumanName marked with iso21090-EN-representation, else '' (alphabetic)."""
    for ext in (name.extension or []) if name is not None else []:
        if ext.url == REPRESENTATION and ext.valueCode in ("IDE", "SYL"):
            return ext.valueCode
    return ""


def chosen_name(names: list) -> tuple[int, object] | None:
    """The name the RIS keeps: use=official, else the first without use old/nickname/maiden, else the first
    (names marked ideographic or phonetic are the other component groups of the chosen one, not candidates)."""
    candidates = [(i, n) for i, n in enumerate(names or []) if not _representation(n)]
    if not candidates:
        return None
    for i, name in candidates:
        if name.use == "official":
            return i, name
    for i, name in candidates:
        if name.use not in ("old", "nickname", "maiden", "anonymous"):
            return i, name
    return candidates[0]


def _group(name, where: str) -> str:  # ``where``: the domain location of the name (errors)
    """One HumanName as one PN component group family^given^middle^prefix^suffix; a name given only as
    text is kept whole as the family name (corpus r4_patient_ch_cjk_text_name.json)."""
    given = list(name.given or [])
    parts = [name.family or "", given[0] if given else "", " ".join(given[1:]),
             " ".join(name.prefix or []), " ".join(name.suffix or [])]
    if not any(parts) and name.text:
        parts = [name.text.strip()]
    for part in parts:
        bad = next((d for d in _PN_DELIMITERS if d in part), None)
        if bad is not None:
            raise InvalidInput(f"the name part {part!r} contains {bad!r}, which separates the parts of a DICOM person "
                               "name (PS3.5 6.2); it cannot be part of a name", location=where)
    return "^".join(parts).rstrip("^")


def person_name(names: list, where: str = "name", chosen=None) -> str:
    """HumanNames -> one DICOM PN: the chosen name (:func:`chosen_name`, or ``chosen``) as the alphabetic
    group, the names marked IDE / SYL as the ideographic and phonetic groups. ``where`` names the element
    in errors. No name: ''."""
    picked = chosen if chosen is not None else (chosen_name(names) or (None, None))[1]
    groups = {"ABC": _group(picked, where) if picked is not None else ""}
    for name in names or []:
        kind = _representation(name)
        if kind and kind not in groups:
            groups[kind] = _group(name, where)
    values = [groups.get(g, "") for g in _GROUPS]
    return "=".join(values).rstrip("=")


def human_names(pn: str) -> list[dict]:
    """A DICOM PN -> FHIR HumanNames, the inverse of :func:`person_name`: the alphabetic group with use
    official and its text (prefix given middle family suffix); ideographic and phonetic groups marked IDE,
    SYL. Middle names are the given names after the first. No name: []."""
    names = []
    for kind, group in zip(_GROUPS, (pn or "").split("=")[:3]):
        if not group.strip("^"):
            continue
        family, given, middle, prefix, suffix = (group.split("^") + [""] * 5)[:5]
        name: dict = {"use": "official", "text": " ".join(p for p in (prefix, given, middle, family, suffix) if p)}
        if kind != "ABC":
            name = {"extension": [{"url": REPRESENTATION, "valueCode": kind}], **name}
        if family:
            name["family"] = family
        givens = [g for g in [given, *middle.split()] if g]
        if givens:
            name["given"] = givens
        if prefix:
            name["prefix"] = prefix.split()
        if suffix:
            name["suffix"] = suffix.split()
        names.append(name)
    return names


def name_text(pn: str) -> str:
    """The display form of a PN (as HumanName.text of its first group): 'Anna M Tester' for TESTER^ANNA^M."""
    names = human_names(pn)
    return names[0]["text"] if names else ""


# Times ---------------------------------------------------------------------------------------
def to_site_naive(value, site_tz: ZoneInfo) -> dt.datetime:
    """A FHIR dateTime (with offset, or none = site time; a date = its midnight) as naive site time."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime.combine(value, dt.time.min)
    if value.tzinfo is not None:
        value = value.astimezone(site_tz).replace(tzinfo=None)
    return value


def site_instant(value: dt.datetime | None, site_tz: ZoneInfo) -> str | None:
    """Naive site time -> dateTime with the site's offset."""
    if value is None:
        return None
    return value.replace(tzinfo=site_tz).isoformat()


def utc_instant(value: dt.datetime | None) -> str | None:
    """Naive UTC (audit times, meta.lastUpdated) -> instant with Z."""
    if value is None:
        return None
    return value.replace(microsecond=(value.microsecond // 1000) * 1000).isoformat(timespec="milliseconds") + "Z"


_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})"
                      r"(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def parse_datetime(text: str) -> dt.datetime | dt.date:
    """A full FHIR date or dateTime (search.html 3.1.1.5.6 precisions are handled by :func:`date_range`)."""
    try:
        if "T" in text:
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return dt.date.fromisoformat(text)
    except ValueError:
        raise FhirError(400, "value", f"{text!r} is not a FHIR date or dateTime") from None


def date_range(text: str) -> tuple[dt.datetime, dt.datetime, bool]:
    """A search date of any precision as [start, end) and whether it had a zone (search.html 3.1.1.5.6).
    A '+' of an offset that arrived unencoded in a query string (read as a space) is taken as '+'."""
    if re.search(r"T[0-9:.]+ \d{2}:\d{2}$", text):
        text = text[:-6] + "+" + text[-5:]
    m = _PARTIAL.match(text)
    if not m:
        raise FhirError(400, "value", f"{text!r} is not a FHIR date of precision year, month, day or time")
    year, month, day, hour, minute, second, _frac, zone = m.groups()
    if not inputs.FIRST_DAY.year <= int(year) <= inputs.LAST_DAY.year:   # the edge's bounds (interfaces.inputs)
        raise FhirError(400, "value", f"{text!r} is out of range: dates from {inputs.FIRST_DAY} to {inputs.LAST_DAY}")
    try:
        return _range(text, year, month, day, hour, second, zone)
    except ValueError:
        raise FhirError(400, "value", f"{text!r} is not a date of the calendar") from None


def _range(text, year, month, day, hour, second, zone) -> tuple[dt.datetime, dt.datetime, bool]:
    if hour is not None:
        start = parse_datetime(text)
        step = dt.timedelta(seconds=1) if second else dt.timedelta(minutes=1)
        if zone is None:
            start = start if isinstance(start, dt.datetime) else dt.datetime.combine(start, dt.time.min)
        return start, start + step, zone is not None
    y = int(year)
    if day:
        start = dt.datetime(y, int(month), int(day))
        return start, start + dt.timedelta(days=1), False
    if month:
        m_ = int(month)
        start = dt.datetime(y, m_, 1)
        return start, dt.datetime(y + (m_ == 12), m_ % 12 + 1, 1), False
    return dt.datetime(y, 1, 1), dt.datetime(y + 1, 1, 1), False


# Identifiers and codes ------------------------------------------------------------------------
def identifier_type(ident) -> str:
    """The v2-0203 code of an Identifier.type (MR, ACSN, PLAC, FILL), or ''."""
    if ident.type is None:
        return ""
    for coding in ident.type.coding or []:
        if coding.system in (V2_0203, None) and coding.code:
            return coding.code
    return ""


def typed_identifier(code: str, value: str, system: str = "") -> dict:
    ident = {"type": {"coding": [{"system": V2_0203, "code": code}]}, "value": value}
    if system:
        ident["system"] = system
    return ident


def scheme_of(system: str | None) -> str:
    return SCHEMES.get(system or "", system or "")


def system_of(scheme: str) -> str:
    return SYSTEMS.get(scheme, scheme)


def strip_oid(value: str) -> str:
    return value[len("urn:oid:"):] if value.startswith("urn:oid:") else value


# References ----------------------------------------------------------------------------------
def reference_id(reference: str, resource_type: str, base_url: str = "") -> str | None:
    """The logical id in a literal reference to ``resource_type`` on this server (references.html
    3.1.2: relative 'Patient/5' or absolute under our base), else None."""
    ref = reference.strip()
    if base_url and ref.startswith(base_url.rstrip("/") + "/"):
        ref = ref[len(base_url.rstrip("/")) + 1:]
    parts = ref.split("/")
    if len(parts) == 2 and parts[0] == resource_type and parts[1]:
        return parts[1]
    if len(parts) == 4 and parts[0] == resource_type and parts[2] == "_history":
        return parts[1]
    return None


def numeric_id(value: str) -> int | None:
    """Our logical ids are the database keys: digits only (FHIR id: [A-Za-z0-9-.]{1,64})."""
    return int(value) if inputs.is_whole_number(value) else None
