"""Mapping profiles: the YAML files an interface analyst owns, loaded and validated.

A profile says which senders it serves (MSH-3 sending application / MSH-4 sending facility,
HL7 v2.5.1 2.15.9.3-4), which message types the engine acts on, what each order control means,
and where every domain value comes from (a list of sources, the first with a value wins), read
through a transform from a fixed registry. It may extend a base profile (``extends: default``):
the base's keys are deep-merged under its own. It carries its code tables, station selection
rules and identifier policy. A bad file is refused at load with its file name, line and key;
nothing in a profile is code.

Validation at load covers what a message could only reveal too late: every field path is checked against the
HL7 segment definitions of the profile's version (mappings.hl7_reference; Z-segments when declared), every
transform against the kind of value it fills, and every text the profile itself writes into a DICOM attribute
(table cells, defaults, station rules, the identifier issuer) against that attribute's VR and length
(mappings.targets).

:class:`ProfileSet` is the folder of profiles (RIS_MAPPINGS_DIR): it chooses the profile of a
message by its sender, and picks up changed files without a restart; a file that no longer
loads is refused and the last good version of its profile stays active.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from app.errors import DomainError
from app.vocabulary import MODALITIES
from mappings import hl7_reference, targets
from mappings.paths import FieldPath, PathError
from mappings.targets import ACCEPTS, TARGETS
from mappings.transforms import DEGREE_CHOICES, FROM_TEXT, PREFIX_CHOICES, PRODUCES, TRANSFORMS, NamePolicy

log = logging.getLogger("mappings.profile")

VISIT_ACTIONS = {"admit", "register", "preadmit", "transfer", "discharge", "update", "change_class", "cancel_admit",
                 "cancel_transfer", "cancel_discharge", "arrive"}
APPOINTMENT_ACTIONS = {"book_appointment": "book", "modify_appointment": "modify", "cancel_appointment": "cancel",
                       "noshow_appointment": "noshow"}
ACTIONS = {"register_patient", "merge_patient", "change_patient_id", "order", "report", "acknowledge", *VISIT_ACTIONS,
           *APPOINTMENT_ACTIONS}
ORDER_ACTIONS = {"place", "update", "cancel", "discontinue", "hold", "release", "status"}
STATUS_ACTIONS = {"cancel", "discontinue", "hold"}
OTHERWISE = {"received"}
# step_statuses: the Scheduled Procedure Step Status an order message may give (app.services.step_statuses), and
# the order-control actions it applies to (cancel/discontinue/hold/release decide the status themselves).
STEP_STATUSES = {"SCHEDULED", "HELD", "ARRIVED", "READY"}
STEP_STATUS_ACTIONS = {"place", "update", "status"}
_STEP_STATUS_KEY = re.compile(r"^([A-Z0-9]{2})\^([A-Z0-9]{1,2}|\*)?$")
# The decoding policies of interfaces.hl7.charsets (MISMATCH_POLICIES); a profile may override the settings.
CHARSET_MISMATCH = ("prefer-utf8", "declared", "strict")
CHARSET_KEYS = {"default", "mismatch"}
NAME_POLICY_KEYS = {"types", "groups", "prefix", "degree"}

# Section -> the domain values it may define (the keys an analyst may use).
SECTIONS: dict[str, set[str]] = {
    "patient": {"id", "issuer", "name", "birth_date", "sex"},
    "visit": {"number", "patient_class", "location", "prior_location", "admitted_at", "discharged_at", "arrived_at"},
    "merge": {"prior_id", "prior_issuer"},
    "appointment": {"placer_id", "filler_id", "placer_order_number", "filler_order_number", "start", "duration",
                    "duration_units", "resource", "location"},
    "report": {"status", "observed_at"},
    "order": {"control", "status", "placer_order_number", "placer_issuer", "filler_order_number", "accession_number",
              "priority", "referring_physician", "requesting_physician", "reason"},
    "procedure": {"requested_procedure_id", "study_instance_uid", "code_value", "code_meaning", "code_scheme",
                  "description", "priority", "body_part"},
    "step": {"sps_id", "modality", "station_aets", "station_name", "scheduled_start", "description",
             "performing_physician", "expected_duration", "protocol_codes"},
}
# Keys that name a profile itself: never inherited from the base it extends.
IDENTITY = {"name", "description", "senders", "extends"}
TOP_LEVEL = {*IDENTITY, "messages", "order_controls", "status_changes", "accession_prefix", "uid_root", "timezone",
             "strict_structure", "tables", "stations", "identifiers", "hl7_version", "z_segments", "step_statuses",
             "person_names", "charset", *SECTIONS}
FIELD_KEYS = {"from", "as", "required", "otherwise", "default"}
SOURCE_KEYS = {"path", "regex", "table", "column", "missing", "concat", "separator"}
MISSING = {"error", "skip"}
RULE_KEYS = {"when", "aets", "name"}
RULE_CRITERIA = {"modality", "procedure", "sender", "location"}
POLICY_KEYS = {"field", "authorities", "types", "issuer", "otherwise"}
POLICY_OTHERWISE = {"error", "first"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_COLUMN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class ProfileError(ValueError):
    """A profile cannot be used; the message names the file, line and key."""

    def __init__(self, file: str, line: int | None, key: str, problem: str):
        self.file, self.line, self.key, self.problem = file, line, key, problem
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {problem}")

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "key": self.key, "problem": self.problem}


class ProfilesRefused(DomainError):
    """A set of profiles the analyst's tools were given does not load (``problems``: each file, line and key)."""

    def __init__(self, side: str, problems: list[ProfileError]):
        self.side, self.problems = side, problems
        super().__init__(f"the {side} profiles do not load: " + "; ".join(str(p) for p in problems), location=side)


@dataclass(frozen=True)
class Source:
    """Where one value may come from: a field (``path``), optionally narrowed by ``regex``, or
    several fields joined (``concat``); optionally looked up in a code ``table`` (its ``column``)."""

    path: FieldPath
    regex: re.Pattern | None = None
    table: str = ""
    column: str = ""
    missing: str = "error"              # a code not in the table: "error" (ACK AE) or "skip" (next source)
    concat: tuple[FieldPath, ...] = ()
    separator: str = " "


@dataclass(frozen=True)
class FieldSpec:
    key: str                      # e.g. "step.modality"
    sources: tuple[Source, ...]
    transform: str = "text"
    required: bool = False
    otherwise: str | None = None
    default: str | None = None    # the value when no source has one


@dataclass(frozen=True)
class Sender:
    """MSH-3 / MSH-4 namespace ids a profile serves; an empty part matches any."""

    application: str = ""
    facility: str = ""

    def matches(self, application: str, facility: str) -> bool:
        return (not self.application or self.application == application) and \
               (not self.facility or self.facility == facility)

    @property
    def specificity(self) -> int:
        return bool(self.application) + bool(self.facility)

    def __str__(self) -> str:
        return f"{self.application or '*'}^{self.facility or '*'}"


@dataclass(frozen=True)
class StationRule:
    """Scheduled station AE titles / station name for steps the message gives none for; a rule
    applies when every criterion it names matches (a list: any of its values)."""

    aets: tuple[str, ...]
    name: str = ""
    modality: tuple[str, ...] = ()
    procedure: tuple[str, ...] = ()
    sender: tuple[str, ...] = ()
    location: tuple[str, ...] = ()

    def matches(self, *, modality: str, procedure: str, sender: str, location: str) -> bool:
        application = sender.split("^", 1)[0]
        return ((not self.modality or modality in self.modality)
                and (not self.procedure or procedure in self.procedure)
                and (not self.sender or sender in self.sender or application in self.sender)
                and (not self.location or location in self.location))


@dataclass(frozen=True)
class IdentifierPolicy:
    """Which repetition of a CX field (PID-3, MRG-1) is the patient identifier (HL7 v2.5.1 chapter 2A, data type CX):
    the first whose assigning authority (CX-4.1) is in ``authorities`` (in that order of
    preference) and whose identifier type code (CX-5) is in ``types``; ``issuer`` is the Issuer of
    Patient ID when the chosen repetition names no authority."""

    field: FieldPath
    authorities: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    issuer: str = ""
    otherwise: str = "error"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    file: str
    version: str                  # sha256 of the profile's files (its own, then its bases'), 12 hex digits
    messages: dict[str, str]
    order_controls: dict[str, str]
    status_changes: dict[str, str]
    fields: dict[str, FieldSpec]
    accession_prefix: str = "RIS"
    strict_structure: bool = False   # validate every message's structure with hl7apy (AR when invalid)
    senders: tuple[Sender, ...] = ()
    extends: str = ""
    chain: tuple[str, ...] = ()      # the files it was resolved from, itself first
    tables: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    stations: tuple[StationRule, ...] = ()
    patient_identifier: IdentifierPolicy | None = None
    uid_root: str = ""               # empty: RIS_UID_ROOT
    timezone: str = ""               # zone of the sender's times without offset (empty: MSH-7's, else the site's)
    hl7_version: str = hl7_reference.DEFAULT_VERSION   # the definitions its paths are checked against
    z_segments: dict[str, int] = field(default_factory=dict)   # Z-segment -> number of fields
    step_statuses: dict[str, str] = field(default_factory=dict)  # "ORC-1^ORC-5" -> Scheduled Procedure Step Status
    person_names: NamePolicy = NamePolicy()
    charset_default: str = ""        # empty: RIS_HL7_DEFAULT_CHARSET
    charset_mismatch: str = ""       # empty: RIS_HL7_CHARSET_MISMATCH

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def step_status(self, control: str, status: str) -> str:
        """The step status of ``step_statuses`` for ORC-1 ``control`` and ORC-5 ``status`` ('' when none):
        the exact pair first, then the control with any status ('NW^*')."""
        return self.step_statuses.get(f"{control}^{status}") or self.step_statuses.get(f"{control}^*", "")

    def charset_policy(self, default: str, mismatch: str) -> tuple[str, str]:
        """(codec for messages without MSH-18, mismatch policy): the profile's, else the given settings."""
        return self.charset_default or default, self.charset_mismatch or mismatch

    def spec(self, key: str) -> FieldSpec | None:
        return self.fields.get(key)

    def station_rule(self, **facts: str) -> StationRule | None:
        return next((rule for rule in self.stations if rule.matches(**facts)), None)


# Reading YAML ---------------------------------------------------------------------------------
@dataclass
class Document:
    """One profile file as written: its data and the line of every key."""

    file: str
    raw: bytes
    data: dict
    lines: dict          # key path (tuple) -> line number

    @property
    def name(self) -> str:
        return self.data.get("name") if isinstance(self.data.get("name"), str) else ""

    def error(self, path: tuple, problem: str) -> ProfileError:
        return ProfileError(self.file, _line_of(self.lines, path), _key(path), problem)


def _to_python(node, lines: dict, path: tuple):
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            key = str(k.value)
            out[key] = _to_python(v, lines, path + (key,))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, lines, path + (i,)) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _line_of(lines: dict, path: tuple):
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _key(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "(top)"


def read_document(content: bytes | str, file: str = "<profile>") -> Document:
    """Parse one profile file's YAML (no validation yet beyond "a mapping of keys")."""
    raw = content.encode("utf-8") if isinstance(content, str) else content
    lines: dict = {}
    try:
        node = yaml.compose(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise ProfileError(file, line + 1 if line is not None else None, "(syntax)", str(exc).splitlines()[0]) from None
    if node is None or not isinstance(node, yaml.MappingNode):
        raise ProfileError(file, 1, "(top)", "a profile is a mapping of keys (name, messages, patient, ...)")
    return Document(file, raw, _to_python(node, lines, ()), lines)


def load_document(file: Path | str) -> Document:
    file = Path(file)
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise ProfileError(file.name, None, "(file)", f"cannot read: {exc.strerror or exc}") from None
    return read_document(content, file.name)


# Inheritance ----------------------------------------------------------------------------------
def _merge(base: dict, child: dict, origins: dict, child_origins: dict, path: tuple = ()) -> dict:
    """Deep merge: mappings merge key by key, anything else in the child replaces the base's value."""
    out = dict(base)
    for key, value in child.items():
        here = path + (key,)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, origins, child_origins, here)
            origins[here] = child_origins.get(here, origins.get(here))
        else:
            for stale in [p for p in origins if p[:len(here)] == here]:
                del origins[stale]
            for p, where in child_origins.items():
                if p[:len(here)] == here:
                    origins[p] = where
            out[key] = value
    return out


def resolve(doc: Document, documents: dict[str, Document]) -> tuple[dict, dict, list[Document]]:
    """The profile ``doc`` with its bases merged in: (data, origins path -> (file, line), chain).

    ``documents`` are the profiles of the folder by name. An unknown base or a cycle is refused.
    """
    chain, current = [doc], doc
    while "extends" in current.data:
        base_name = current.data["extends"]
        if not isinstance(base_name, str) or not base_name:
            raise current.error(("extends",), "the name of the base profile")
        names = [d.name for d in chain]
        if base_name in names:
            cycle = " -> ".join(names[names.index(base_name):] + [base_name])
            raise doc.error(("extends",), f"inheritance cycle: {cycle}")
        base = documents.get(base_name)
        if base is None:
            raise current.error(("extends",), f"no base profile named {base_name!r} in the folder")
        chain.append(base)
        current = base
    data: dict = {}
    origins: dict = {}
    for d in reversed(chain):
        own = {k: v for k, v in d.data.items() if d is doc or k not in IDENTITY}
        child_origins = {p: (d.file, line) for p, line in d.lines.items() if not p or p[0] in own}
        data = _merge(data, own, origins, child_origins)
    return data, origins, chain


# Validation -----------------------------------------------------------------------------------
def parse_profile(content: bytes | str, file: str = "<profile>",
                  documents: dict[str, Document] | None = None) -> Profile:
    """Load one profile from its text; ``documents`` (by name) resolve ``extends``."""
    return build_profile(read_document(content, file), documents or {})


def load_profile(file: Path | str, documents: dict[str, Document] | None = None) -> Profile:
    return build_profile(load_document(file), documents or {})


def build_profile(doc: Document, documents: dict[str, Document]) -> Profile:
    for key in doc.data:
        if key not in TOP_LEVEL:
            raise doc.error((key,), f"unknown key (allowed: {', '.join(sorted(TOP_LEVEL))})")
    name = doc.data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise doc.error(("name",), "a profile needs a name (letters, digits, '-', '_', '.')")
    data, origins, chain = resolve(doc, documents)

    def fail(path: tuple, problem: str):
        file, line = doc.file, None
        for n in range(len(path), -1, -1):
            if path[:n] in origins and origins[path[:n]] is not None:
                file, line = origins[path[:n]]
                break
        raise ProfileError(file, line, _key(path), problem)

    for key in data:
        if key not in TOP_LEVEL:
            fail((key,), f"unknown key (allowed: {', '.join(sorted(TOP_LEVEL))})")
    messages = _string_table(data.get("messages", {}), ("messages",), ACTIONS, fail)
    for msg_type in messages:
        if not re.fullmatch(r"[A-Z0-9]{3}\^[A-Z0-9]{3}", msg_type):
            fail(("messages", msg_type), "message types are written CODE^EVENT, e.g. ORM^O01")
    controls = _string_table(data.get("order_controls", {}), ("order_controls",), ORDER_ACTIONS, fail)
    status_changes = _string_table(data.get("status_changes", {}), ("status_changes",), STATUS_ACTIONS, fail)
    step_statuses = _step_statuses(data.get("step_statuses", {}), controls, fail)
    tables = _tables(data.get("tables", {}), fail)
    structure = _Structure(_hl7_version(data.get("hl7_version", hl7_reference.DEFAULT_VERSION), fail),
                           _z_segments(data.get("z_segments", {}), fail))

    fields: dict[str, FieldSpec] = {}
    for section, allowed in SECTIONS.items():
        body = data.get(section, {})
        if not isinstance(body, dict):
            fail((section,), "must be a mapping of value names to {from: [...]}")
        for key, spec in body.items():
            if key not in allowed:
                fail((section, key), f"unknown value (allowed in {section}: {', '.join(sorted(allowed))})")
            fields[f"{section}.{key}"] = _field_spec(f"{section}.{key}", spec, (section, key), tables, structure,
                                                     fail)
    prefix = data.get("accession_prefix", "RIS")
    if not isinstance(prefix, str) or len(prefix) > 8:
        fail(("accession_prefix",), "a text of at most 8 characters")
    _check_value("order.accession_number", prefix, ("accession_prefix",), fail)
    uid_root = str(data.get("uid_root", "") or "")
    if uid_root and (not _UID_ROOT.match(uid_root) or len(uid_root) > 40):
        fail(("uid_root",), "a UID root: digits and dots (PS3.5 9.1), at most 40 characters")
    zone = str(data.get("timezone", "") or "")
    if zone:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            fail(("timezone",), f"{zone!r} is not an IANA time zone such as Europe/Berlin")
    strict = data.get("strict_structure", False)
    if not isinstance(strict, bool):
        fail(("strict_structure",), "true or false")
    charset_default, charset_mismatch = _charset(data.get("charset", {}), fail)
    digest = hashlib.sha256()
    for d in chain:
        digest.update(d.raw)
    return Profile(name=name, description=str(data.get("description", "")), file=doc.file,
                   version=digest.hexdigest()[:12], messages=messages, order_controls=controls,
                   status_changes=status_changes, fields=fields, accession_prefix=prefix, strict_structure=strict,
                   senders=_senders(data.get("senders", []), fail), extends=str(data.get("extends", "") or ""),
                   chain=tuple(d.file for d in chain), tables=tables,
                   stations=_station_rules(data.get("stations", []), fail),
                   patient_identifier=_identifier_policy(data.get("identifiers", {}), structure, fail),
                   uid_root=uid_root, timezone=zone, hl7_version=structure.version, z_segments=structure.z_segments,
                   step_statuses=step_statuses, person_names=_name_policy(data.get("person_names", {}), fail),
                   charset_default=charset_default, charset_mismatch=charset_mismatch)


@dataclass(frozen=True)
class _Structure:
    """What a profile's paths are checked against: an HL7 version's segments and the declared Z-segments."""

    version: str
    z_segments: dict[str, int]


def _hl7_version(value, fail) -> str:
    version = str(value).strip()
    known = hl7_reference.versions()
    if version not in known:
        fail(("hl7_version",), f"{version!r} is not an HL7 v2 version with known definitions ({', '.join(known)})")
    return version


def _z_segments(raw, fail) -> dict[str, int]:
    """``z_segments``: name -> number of fields, for the sender's own segments (HL7 v2.5.1 2.1.6)."""
    if not isinstance(raw, dict):
        fail(("z_segments",), "a mapping of Z-segment names to their number of fields, e.g. {ZDS: 1}")
    out = {}
    for name, count in raw.items():
        if not hl7_reference.Z_SEGMENT.match(str(name)):
            fail(("z_segments", name), "a Z-segment name: Z and two upper-case letters or digits (HL7 v2.5.1 2.1.6)")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 999:
            fail(("z_segments", name), "the number of fields of the segment, 1 to 999")
        out[str(name)] = count
    return out


def _step_statuses(raw, controls: dict[str, str], fail) -> dict[str, str]:
    """``step_statuses``: 'ORC-1^ORC-5' (or 'ORC-1^*' for any status) -> Scheduled Procedure Step Status."""
    table = _string_table(raw, ("step_statuses",), STEP_STATUSES, fail)
    for key in table:
        m = _STEP_STATUS_KEY.match(key)
        if not m:
            fail(("step_statuses", key), "written ORDER-CONTROL^ORDER-STATUS (ORC-1^ORC-5, e.g. NW^HD), or "
                                         "ORDER-CONTROL^* for any status")
        action = controls.get(m[1])
        if action is None:
            fail(("step_statuses", key), f"order control {m[1]!r} is not in order_controls")
        if action not in STEP_STATUS_ACTIONS:
            fail(("step_statuses", key), f"order control {m[1]} is {action!r}, which sets the steps' status itself; "
                                         f"step_statuses apply to {', '.join(sorted(STEP_STATUS_ACTIONS))}")
    return table


def _charset(raw, fail) -> tuple[str, str]:
    """``charset: {default: CODEC, mismatch: POLICY}``: how this sender's bytes are decoded (interfaces.hl7.charsets,
    HL7 v2.5.1 2.15.9.18): the codec of messages without MSH-18, and what to do when the bytes contradict MSH-18."""
    if not isinstance(raw, dict):
        fail(("charset",), "a mapping: charset: {default: latin-1, mismatch: declared}")
    for k in raw:
        if k not in CHARSET_KEYS:
            fail(("charset", k), f"unknown key (allowed: {', '.join(sorted(CHARSET_KEYS))})")
    default = str(raw.get("default", "") or "").strip()
    if default:
        try:
            info = codecs.lookup(default)
        except LookupError:
            info = None
        if info is None or not getattr(info, "_is_text_encoding", True):
            fail(("charset", "default"), f"{default!r} is not a character set Python knows (e.g. utf-8, latin-1, "
                                         f"cp1252, iso8859-2)")
    mismatch = str(raw.get("mismatch", "") or "").strip()
    if mismatch and mismatch not in CHARSET_MISMATCH:
        fail(("charset", "mismatch"), f"{mismatch!r} is not one of {', '.join(CHARSET_MISMATCH)}")
    return default, mismatch


def _name_policy(raw, fail) -> NamePolicy:
    """``person_names``: which repetition of a person name and how it is rendered (mappings.transforms.NamePolicy)."""
    if not isinstance(raw, dict):
        fail(("person_names",), "a mapping: person_names: {types: [L], groups: true, prefix: keep, degree: omit}")
    for k in raw:
        if k not in NAME_POLICY_KEYS:
            fail(("person_names", k), f"unknown key (allowed: {', '.join(sorted(NAME_POLICY_KEYS))})")
    types = _texts(raw["types"], ("person_names", "types"), fail) if "types" in raw else ()
    for t in types:
        if not re.fullmatch(r"[A-Z]{1,3}", t):
            fail(("person_names", "types"), f"{t!r} is not a name type code (HL7 table 0200: L, D, A, B, ...)")
    groups = raw.get("groups", False)
    if not isinstance(groups, bool):
        fail(("person_names", "groups"), "true or false")
    prefix, degree = raw.get("prefix", "keep"), raw.get("degree", "omit")
    if prefix not in PREFIX_CHOICES:
        fail(("person_names", "prefix"), f"{prefix!r} is not one of {', '.join(PREFIX_CHOICES)}")
    if degree not in DEGREE_CHOICES:
        fail(("person_names", "degree"), f"{degree!r} is not one of {', '.join(DEGREE_CHOICES)}")
    return NamePolicy(types=types, groups=groups, prefix=prefix, degree=degree)


def _check_value(key: str, text: str, path: tuple, fail) -> None:
    """Refuse a text the profile writes into ``key``'s DICOM attribute when its VR cannot hold it (mappings.targets)."""
    problem = targets.problem(key, text)
    if problem:
        fail(path, f"{problem}: not a value for {key}")


def _string_table(table, path, allowed_values, fail) -> dict[str, str]:
    if not isinstance(table, dict):
        fail(path, "must be a mapping")
    for k, v in table.items():
        if v not in allowed_values:
            fail(path + (k,), f"{v!r} is not one of {', '.join(sorted(allowed_values))}")
    return {str(k).strip(): str(v) for k, v in table.items()}


def _texts(value, path, fail) -> tuple[str, ...]:
    """One text or a list of texts."""
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        if not isinstance(item, (str, int)) or isinstance(item, bool) or not str(item).strip():
            fail(path + ((i,) if isinstance(value, list) else ()), "a text or a list of texts")
    return tuple(str(item).strip() for item in items)


def _senders(raw, fail) -> tuple[Sender, ...]:
    """``senders``: each 'APP^FACILITY', 'APP' (any facility), '^FACILITY', or {application, facility}."""
    if not isinstance(raw, list):
        raw = [raw]
    out = []
    for i, item in enumerate(raw):
        path = ("senders", i)
        if isinstance(item, dict):
            for k in item:
                if k not in ("application", "facility"):
                    fail(path + (k,), "unknown key (allowed: application, facility)")
            sender = Sender(str(item.get("application", "") or "").strip(), str(item.get("facility", "") or "").strip())
        elif isinstance(item, str):
            application, _, facility = item.partition("^")
            sender = Sender(application.strip(), facility.strip())
        else:
            fail(path, "a sender is 'APPLICATION^FACILITY' (MSH-3^MSH-4) or {application: ..., facility: ...}")
        if not sender.specificity:
            fail(path, "name the sending application (MSH-3), the facility (MSH-4) or both")
        out.append(sender)
    return tuple(out)


def _tables(raw, fail) -> dict[str, dict[str, dict[str, str]]]:
    """``tables``: name -> {code: {column: value}} (or {code: value}: the column ``value``)."""
    if not isinstance(raw, dict):
        fail(("tables",), "a mapping of table names to {code: {column: value}}")
    tables = {}
    for name, rows in raw.items():
        if not _COLUMN.match(name):
            fail(("tables", name), "a table name is lower-case letters, digits and '_'")
        if not isinstance(rows, dict) or not rows:
            fail(("tables", name), "a mapping of codes to their values, e.g. CTHEAD: {modality: CT}")
        table = {}
        for code, row in rows.items():
            path = ("tables", name, code)
            if not isinstance(row, dict):
                row = {"value": row}
            values = {}
            for column, value in row.items():
                if not _COLUMN.match(column):
                    fail(path + (column,), "a column name is lower-case letters, digits and '_'")
                if isinstance(value, (dict, list)) or value is None:
                    fail(path + (column,), "a single value")
                values[column] = str(value).strip()   # checked against what reads it (_check_lookups)
            table[str(code).strip()] = values
        tables[name] = table
    return tables


def _field_spec(key: str, spec, path: tuple, tables: dict, structure: _Structure, fail) -> FieldSpec:
    if isinstance(spec, (str, list)):
        spec = {"from": spec}
    if not isinstance(spec, dict):
        fail(path, "must be {from: [paths], as: transform}")
    for k in spec:
        if k not in FIELD_KEYS:
            fail(path + (k,), f"unknown key (allowed: {', '.join(sorted(FIELD_KEYS))})")
    sources_raw = spec.get("from", [])
    if isinstance(sources_raw, (str, dict)):
        sources_raw = [sources_raw]
    if not isinstance(sources_raw, list) or (not sources_raw and "default" not in spec):
        fail(path + ("from",), "list at least one field path")
    sources = tuple(_source(item, path + ("from", i), tables, structure, fail) for i, item in enumerate(sources_raw))
    target = TARGETS[key]
    for i, source in enumerate(sources):
        if source.path.rep is None and not target.multiple:
            many = sorted(k for k, t in TARGETS.items() if t.multiple)
            fail(path + ("from", i), f"{source.path} reads every repetition ([*]), but {key} holds one value: name "
                                     f"one repetition ({source.path.text.replace('[*]', '')} is the first, "
                                     f"{source.path.text.replace('[*]', '[2]')} the second); [*] is for "
                                     f"{', '.join(many)}")
    transform = spec.get("as", "text")
    if transform not in TRANSFORMS:
        fail(path + ("as",), f"unknown transform {transform!r} (known: {', '.join(sorted(TRANSFORMS))})")
    if PRODUCES[transform] not in ACCEPTS[target.kind]:
        fitting = sorted(t for t, kind in PRODUCES.items() if kind in ACCEPTS[target.kind])
        fail(path + ("as",), f"{key} holds {_KINDS[target.kind]}; {transform} gives {_KINDS[PRODUCES[transform]]} "
                             f"(use {' or '.join(fitting)})")
    if TRANSFORMS[transform][0] == "field" and any(s.concat or s.regex or (s.table and transform not in FROM_TEXT)
                                                   for s in sources):
        fail(path + ("as",), f"{transform} reads the components of one field: no table, concat or regex")
    otherwise = spec.get("otherwise")
    if otherwise is not None and otherwise not in OTHERWISE:
        fail(path + ("otherwise",), f"{otherwise!r} is not one of {', '.join(sorted(OTHERWISE))}")
    if otherwise == "received" and target.kind != "time":
        times = sorted(k for k, t in TARGETS.items() if t.kind == "time")
        fail(path + ("otherwise",), f"'received' is the time of receipt, and {key} is not a time (it is for "
                                    f"{', '.join(times)})")
    required = spec.get("required", False)
    if not isinstance(required, bool):
        fail(path + ("required",), "true or false")
    default = spec.get("default")
    if default is not None and (isinstance(default, (dict, list, bool))):
        fail(path + ("default",), "a single value")
    if default is not None:
        text = str(default).strip()
        _check_value(key, text.upper() if transform in ("upper", "modality") else text, path + ("default",), fail)
    for i, source in enumerate(sources):   # every cell of a table column this value reads fills its attribute
        if source.table:
            for code, row in tables[source.table].items():
                if source.column in row:
                    text = row[source.column]
                    _check_value(key, text.upper() if transform in ("upper", "modality") else text,
                                 ("tables", source.table, code, source.column), fail)
    return FieldSpec(key=key, sources=sources, transform=transform, required=required, otherwise=otherwise,
                     default=None if default is None else str(default))


_KINDS = {"text": "a text", "name": "a person name", "date": "a date", "time": "a date and time",
          "code": "a code", "number": "a number of minutes"}


def _path(text, path: tuple, structure: _Structure, fail) -> FieldPath:
    """A field path of the profile: its syntax, then its place in the HL7 definitions (mappings.hl7_reference)."""
    try:
        fp = FieldPath.parse(str(text))
    except PathError as exc:
        fail(path, str(exc))
    problem = hl7_reference.check_path(fp.segment, fp.field, fp.comp, fp.sub, version=structure.version,
                                       z_segments=structure.z_segments)
    if problem:
        fail(path, f"{fp}: {problem}")
    return fp


def _source(item, spath: tuple, tables: dict, structure: _Structure, fail) -> Source:
    if isinstance(item, str):
        item = {"path": item}
    if not isinstance(item, dict) or ("path" not in item and "concat" not in item):
        fail(spath, "a source is a field path like OBR-18, {path: OBR-4.2, regex: '...'}, "
                    "{path: OBR-4.1, table: procedures, column: modality} or {concat: [PID-3.1, PID-3.4]}")
    for k in item:
        if k not in SOURCE_KEYS:
            fail(spath + (k,), f"unknown key (allowed: {', '.join(sorted(SOURCE_KEYS))})")
    if "path" in item and "concat" in item:
        fail(spath + ("concat",), "a source reads either one path or a concat of paths")
    concat: tuple[FieldPath, ...] = ()
    if "concat" in item:
        parts = item["concat"]
        if not isinstance(parts, list) or len(parts) < 2:
            fail(spath + ("concat",), "a list of at least two field paths")
        concat = tuple(_path(p, spath + ("concat", i), structure, fail) for i, p in enumerate(parts))
        if any(p.rep is None for p in concat):
            fail(spath + ("concat",), "concat reads single values: no [*]")
        fp = concat[0]
    else:
        fp = _path(item["path"], spath + ("path",), structure, fail)
    regex = None
    if "regex" in item:
        try:
            regex = re.compile(str(item["regex"]))
        except re.error as exc:
            fail(spath + ("regex",), f"not a valid regular expression: {exc}")
    table, column = str(item.get("table", "") or ""), str(item.get("column", "") or "")
    if column and not table:
        fail(spath + ("column",), "a column belongs to a table: add table: NAME")
    if table:
        if table not in tables:
            known = ", ".join(sorted(tables)) or "none"
            fail(spath + ("table",), f"no table {table!r} in this profile (tables: {known})")
        column = column or "value"
        if not any(column in row for row in tables[table].values()):
            columns = sorted({c for row in tables[table].values() for c in row})
            fail(spath + ("column",), f"table {table!r} has no column {column!r} (columns: {', '.join(columns)})")
    missing = item.get("missing", "error")
    if missing not in MISSING:
        fail(spath + ("missing",), f"{missing!r} is not one of {', '.join(sorted(MISSING))}")
    separator = item.get("separator", " ")
    if not isinstance(separator, str):
        fail(spath + ("separator",), "a text")
    return Source(fp, regex, table, column, missing, concat, separator)


def _station_rules(raw, fail) -> tuple[StationRule, ...]:
    if not isinstance(raw, list):
        fail(("stations",), "a list of rules: - {when: {modality: CT}, aets: [CT_ROOM1], name: CT1}")
    rules = []
    for i, rule in enumerate(raw):
        path = ("stations", i)
        if not isinstance(rule, dict):
            fail(path, "a rule is {when: {...}, aets: [...], name: ...}")
        for k in rule:
            if k not in RULE_KEYS:
                fail(path + (k,), f"unknown key (allowed: {', '.join(sorted(RULE_KEYS))})")
        when = rule.get("when", {})
        if not isinstance(when, dict):
            fail(path + ("when",), f"a mapping of criteria ({', '.join(sorted(RULE_CRITERIA))})")
        for k in when:
            if k not in RULE_CRITERIA:
                fail(path + ("when", k), f"unknown criterion (allowed: {', '.join(sorted(RULE_CRITERIA))})")
        criteria = {k: _texts(v, path + ("when", k), fail) for k, v in when.items()}
        for modality in criteria.get("modality", ()):
            if modality not in MODALITIES:
                fail(path + ("when", "modality"), f"{modality!r} is not a DICOM modality (PS3.3 C.7.3.1.1.1)")
        aets = _texts(rule["aets"], path + ("aets",), fail) if "aets" in rule else ()
        for j, aet in enumerate(aets):
            _check_value("step.station_aets", aet, path + ("aets",) + ((j,) if isinstance(rule["aets"], list) else ()),
                         fail)
        name = str(rule.get("name", "") or "")
        _check_value("step.station_name", name, path + ("name",), fail)
        if not aets and not name:
            fail(path, "a rule gives aets, a station name or both")
        rules.append(StationRule(aets=aets, name=name, **criteria))
    return tuple(rules)


def _identifier_policy(raw, structure: _Structure, fail) -> IdentifierPolicy | None:
    if not isinstance(raw, dict):
        fail(("identifiers",), "a mapping: identifiers: {patient: {authorities: [...]}}")
    for k in raw:
        if k != "patient":
            fail(("identifiers", k), "unknown key (allowed: patient)")
    policy = raw.get("patient")
    if policy is None:
        return None
    path = ("identifiers", "patient")
    if not isinstance(policy, dict):
        fail(path, f"a mapping ({', '.join(sorted(POLICY_KEYS))})")
    for k in policy:
        if k not in POLICY_KEYS:
            fail(path + (k,), f"unknown key (allowed: {', '.join(sorted(POLICY_KEYS))})")
    fp = _path(policy.get("field", "PID-3"), path + ("field",), structure, fail)
    if fp.text.count(".") or "[" in fp.text:
        fail(path + ("field",), "the whole CX field, e.g. PID-3 (its repetitions are searched)")
    authorities = _texts(policy["authorities"], path + ("authorities",), fail) if "authorities" in policy else ()
    types = _texts(policy["types"], path + ("types",), fail) if "types" in policy else ()
    if not authorities and not types:
        fail(path, "give authorities (CX-4.1), types (CX-5) or both")
    otherwise = policy.get("otherwise", "error")
    if otherwise not in POLICY_OTHERWISE:
        fail(path + ("otherwise",), f"{otherwise!r} is not one of {', '.join(sorted(POLICY_OTHERWISE))}")
    issuer = str(policy.get("issuer", "") or "").strip()
    _check_value("patient.issuer", issuer, path + ("issuer",), fail)
    return IdentifierPolicy(fp, authorities, types, issuer, otherwise)


# The folder -----------------------------------------------------------------------------------
class ProfileSet:
    """The profiles of a mapping folder (``*.yaml``), by name, and which one serves a sender.

    ``default`` names the profile for senders no profile claims (RIS_MAPPING_PROFILE). The folder
    is re-read when a file changes (checked at most every ``check_interval`` seconds, on use); a
    file that no longer loads is refused (logged, listed in ``problems``) and the last good version
    of its profile stays active. ``strict`` raises the first problem instead (tests, tools).
    """

    def __init__(self, folder: Path | str, default: str | None = None, *, check_interval: float = 1.0,
                 strict: bool = True, live: bool = True):
        """``live`` False: a candidate set an analyst's tool loads (check, compare); what it refuses is the tool's
        answer, not logged as errors of the running engine."""
        self.folder = Path(folder)
        self._log_level = logging.ERROR if live else logging.DEBUG
        self.default = default
        self.check_interval = check_interval
        self.profiles: dict[str, Profile] = {}
        self.problems: list[ProfileError] = []
        self._signature: tuple = ()
        self._checked = 0.0
        self._lock = threading.Lock()
        self._chosen: dict[tuple[str, str], Profile] = {}   # (MSH-3, MSH-4) -> profile, until the next reload
        self.reload()
        if strict and self.problems:
            raise self.problems[0]

    # Loading ---------------------------------------------------------------------------------
    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("*.yaml"))

    def _stat(self) -> tuple:
        out = []
        for file in self._files():
            try:
                st = file.stat()
            except OSError:
                continue
            out.append((file.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def reload(self) -> list[ProfileError]:
        """Read the folder again; returns (and keeps in ``problems``) what was refused."""
        with self._lock:
            signature = self._stat()
            profiles, problems, refused = self._load_all()
            for old in self.profiles.values():
                if old.name not in profiles and old.file in refused and (self.folder / old.file).exists():
                    profiles[old.name] = old
                    log.log(self._log_level, "mapping profile %s refused; %s stays active", old.file, old.label)
            for name, profile in profiles.items():
                old = self.profiles.get(name)
                if old is None or old.version != profile.version:
                    log.info("mapping profile %s loaded from %s", profile.label, profile.file)
            for problem in problems:
                log.log(self._log_level, "mapping profile refused: %s", problem)
            self.profiles, self.problems, self._chosen = profiles, problems, {}
            self._signature, self._checked = signature, time.monotonic()
            return problems

    def _load_all(self) -> tuple[dict[str, Profile], list[ProfileError], set[str]]:
        """(profiles by name, problems, names of the files refused)."""
        documents: dict[str, Document] = {}
        problems: list[ProfileError] = []
        refused: set[str] = set()
        order: list[Document] = []
        for file in self._files():
            try:
                doc = load_document(file)
            except ProfileError as exc:
                problems.append(exc)
                refused.add(file.name)
                continue
            if doc.name in documents:
                problems.append(doc.error(("name",), f"profile name {doc.name!r} is also used by "
                                                      f"{documents[doc.name].file}"))
                refused.add(doc.file)
                continue
            if doc.name:
                documents[doc.name] = doc
            order.append(doc)
        profiles: dict[str, Profile] = {}
        for doc in order:
            try:
                profiles[doc.name] = build_profile(doc, documents)
            except ProfileError as exc:
                problems.append(exc)
                refused.add(doc.file)
        problems.extend(self._sender_conflicts(profiles))
        if self.default and self.default not in documents:
            problems.append(ProfileError(self.folder.name or str(self.folder), None, "RIS_MAPPING_PROFILE",
                                         f"no profile named {self.default!r} (the profile for other senders)"))
        return profiles, problems, refused

    @staticmethod
    def _sender_conflicts(profiles: dict[str, Profile]) -> list[ProfileError]:
        seen: dict[Sender, str] = {}
        problems = []
        for profile in profiles.values():
            for sender in profile.senders:
                other = seen.setdefault(sender, profile.name)
                if other != profile.name:
                    problems.append(ProfileError(profile.file, None, "senders",
                                                 f"sender {sender} is also claimed by profile {other!r}"))
        return problems

    def refresh(self) -> None:
        """Reload when a file changed since the last look (at most every ``check_interval`` s)."""
        if time.monotonic() - self._checked < self.check_interval:
            return
        signature = self._stat()
        self._checked = time.monotonic()
        if signature != self._signature:
            self.reload()

    # Use -------------------------------------------------------------------------------------
    def get(self, name: str) -> Profile:
        self.refresh()
        try:
            return self.profiles[name]
        except KeyError:
            raise ProfileError(name, None, "name", f"no profile named {name!r} in {self.folder}") from None

    def for_sender(self, application: str, facility: str) -> Profile:
        """The profile that serves MSH-3 ``application`` / MSH-4 ``facility``: the one whose
        sender entry matches most specifically (application and facility before either alone),
        else the default. Remembered per sender until the folder changes (it is asked twice per message)."""
        self.refresh()
        chosen = self._chosen.get((application, facility))
        if chosen is not None:
            return chosen
        best, score = None, 0
        for profile in self.profiles.values():
            for sender in profile.senders:
                if sender.matches(application, facility) and sender.specificity > score:
                    best, score = profile, sender.specificity
        best = best or self.get(self.default)
        if len(self._chosen) < 10_000:     # senders are few; a flood of invented ones is not kept
            self._chosen[(application, facility)] = best
        return best

    def describe(self) -> dict:
        """What is loaded and what was refused (for GET /api/mappings and ``ris mapping check``)."""
        self.refresh()
        return {
            "folder": str(self.folder),
            "default": self.default,
            "valid": not self.problems,
            "profiles": [summary(p, self.default) for p in sorted(self.profiles.values(), key=lambda p: p.name)],
            "problems": [e.as_dict() for e in self.problems],
        }


def summary(profile: Profile, default: str | None) -> dict:
    """A profile as the analyst tools list it: name, version, files, senders, tables."""
    return {"name": profile.name, "version": profile.version, "file": profile.file,
            "extends": profile.extends or None, "files": list(profile.chain),
            "senders": [str(s) for s in profile.senders], "default": profile.name == default,
            "description": profile.description,
            "tables": {name: len(rows) for name, rows in profile.tables.items()}}


class SingleProfile:
    """One profile for every sender (the intake's shape when given a Profile)."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self.default = profile.name

    def get(self, name: str) -> Profile:
        if name != self.profile.name:
            raise ProfileError(name, None, "name", f"no profile named {name!r} (only {self.profile.name!r})")
        return self.profile

    def for_sender(self, application: str, facility: str) -> Profile:
        return self.profile

    def describe(self) -> dict:
        return {"folder": "", "default": self.default, "valid": True, "problems": [],
                "profiles": [summary(self.profile, self.default)]}
