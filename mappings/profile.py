"""Mapping profiles: the YAML files an interface analyst owns, loaded and validated.

A profile says which message types the engine acts on, what each order control means, and where
every domain value comes from (a list of HL7 field paths, the first with a value wins), read
through a transform from a fixed registry. A bad file is refused at load with its file name,
line and key; nothing in a profile is code.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from mappings.paths import FieldPath, PathError
from mappings.transforms import TRANSFORMS

VISIT_ACTIONS = {"admit", "register", "preadmit", "transfer", "discharge", "update", "change_class", "cancel_admit",
                 "cancel_transfer", "cancel_discharge"}
APPOINTMENT_ACTIONS = {"book_appointment": "book", "modify_appointment": "modify", "cancel_appointment": "cancel",
                       "noshow_appointment": "noshow"}
ACTIONS = {"register_patient", "merge_patient", "change_patient_id", "order", "report", *VISIT_ACTIONS,
           *APPOINTMENT_ACTIONS}
ORDER_ACTIONS = {"place", "update", "cancel", "discontinue", "hold", "release", "status"}
STATUS_ACTIONS = {"cancel", "discontinue", "hold"}
OTHERWISE = {"received"}

# Section -> the domain values it may define (the keys an analyst may use).
SECTIONS: dict[str, set[str]] = {
    "patient": {"id", "issuer", "name", "birth_date", "sex"},
    "visit": {"number", "patient_class", "location", "prior_location", "admitted_at", "discharged_at"},
    "merge": {"prior_id", "prior_issuer"},
    "appointment": {"placer_id", "filler_id", "placer_order_number", "filler_order_number", "start", "duration",
                    "duration_units", "resource", "location"},
    "report": {"status", "observed_at"},
    "order": {"control", "status", "placer_order_number", "placer_issuer", "filler_order_number", "accession_number",
              "priority", "referring_physician", "requesting_physician", "reason"},
    "procedure": {"requested_procedure_id", "study_instance_uid", "code_value", "code_meaning", "code_scheme",
                  "description", "priority"},
    "step": {"sps_id", "modality", "station_aets", "station_name", "scheduled_start", "description",
             "performing_physician"},
}
TOP_LEVEL = {"name", "description", "messages", "order_controls", "status_changes", "accession_prefix",
             "strict_structure", *SECTIONS}
FIELD_KEYS = {"from", "as", "required", "otherwise"}
SOURCE_KEYS = {"path", "regex"}


class ProfileError(ValueError):
    """A profile cannot be used; the message names the file, line and key."""

    def __init__(self, file: str, line: int | None, key: str, problem: str):
        self.file, self.line, self.key, self.problem = file, line, key, problem
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {problem}")


@dataclass(frozen=True)
class Source:
    path: FieldPath
    regex: re.Pattern | None = None


@dataclass(frozen=True)
class FieldSpec:
    key: str                      # e.g. "step.modality"
    sources: tuple[Source, ...]
    transform: str = "text"
    required: bool = False
    otherwise: str | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    file: str
    version: str                  # sha256 of the file content, first 12 hex digits
    messages: dict[str, str]
    order_controls: dict[str, str]
    status_changes: dict[str, str]
    fields: dict[str, FieldSpec]
    accession_prefix: str = "RIS"
    strict_structure: bool = False   # validate every message's structure with hl7apy (AR when invalid)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def spec(self, key: str) -> FieldSpec | None:
        return self.fields.get(key)


# Loading -------------------------------------------------------------------------------------
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


def load_profile(file: Path | str) -> Profile:
    file = Path(file)
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise ProfileError(file.name, None, "(file)", f"cannot read: {exc.strerror or exc}") from None
    return parse_profile(content, file.name)


def parse_profile(content: bytes | str, file: str = "<profile>") -> Profile:
    raw = content.encode("utf-8") if isinstance(content, str) else content
    lines: dict = {}
    try:
        node = yaml.compose(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise ProfileError(file, line + 1 if line is not None else None, "(syntax)", str(exc).splitlines()[0]) from None
    if node is None or not isinstance(node, yaml.MappingNode):
        raise ProfileError(file, 1, "(top)", "a profile is a mapping of keys (name, messages, patient, ...)")
    data = _to_python(node, lines, ())

    def fail(path: tuple, problem: str):
        line = None
        for n in range(len(path), -1, -1):
            if path[:n] in lines:
                line = lines[path[:n]]
                break
        raise ProfileError(file, line, ".".join(str(p) for p in path) or "(top)", problem)

    for key in data:
        if key not in TOP_LEVEL:
            fail((key,), f"unknown key (allowed: {', '.join(sorted(TOP_LEVEL))})")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        fail(("name",), "a profile needs a name")
    messages = _string_table(data.get("messages", {}), ("messages",), ACTIONS, fail)
    for msg_type in messages:
        if not re.fullmatch(r"[A-Z0-9]{3}\^[A-Z0-9]{3}", msg_type):
            fail(("messages", msg_type), "message types are written CODE^EVENT, e.g. ORM^O01")
    controls = _string_table(data.get("order_controls", {}), ("order_controls",), ORDER_ACTIONS, fail)
    status_changes = _string_table(data.get("status_changes", {}), ("status_changes",), STATUS_ACTIONS, fail)

    fields: dict[str, FieldSpec] = {}
    for section, allowed in SECTIONS.items():
        body = data.get(section, {})
        if not isinstance(body, dict):
            fail((section,), "must be a mapping of value names to {from: [...]}")
        for key, spec in body.items():
            if key not in allowed:
                fail((section, key), f"unknown value (allowed in {section}: {', '.join(sorted(allowed))})")
            fields[f"{section}.{key}"] = _field_spec(f"{section}.{key}", spec, (section, key), fail)
    prefix = data.get("accession_prefix", "RIS")
    if not isinstance(prefix, str) or len(prefix) > 8:
        fail(("accession_prefix",), "a text of at most 8 characters")
    strict = data.get("strict_structure", False)
    if not isinstance(strict, bool):
        fail(("strict_structure",), "true or false")
    version = hashlib.sha256(raw).hexdigest()[:12]
    return Profile(name=name, description=str(data.get("description", "")), file=file, version=version,
                   messages=messages, order_controls=controls, status_changes=status_changes, fields=fields,
                   accession_prefix=prefix, strict_structure=strict)


def _string_table(table, path, allowed_values, fail) -> dict[str, str]:
    if not isinstance(table, dict):
        fail(path, "must be a mapping")
    for k, v in table.items():
        if v not in allowed_values:
            fail(path + (k,), f"{v!r} is not one of {', '.join(sorted(allowed_values))}")
    return {str(k).strip(): str(v) for k, v in table.items()}


def _field_spec(key: str, spec, path: tuple, fail) -> FieldSpec:
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
    if not isinstance(sources_raw, list) or not sources_raw:
        fail(path + ("from",), "list at least one field path")
    sources = []
    for i, item in enumerate(sources_raw):
        spath = path + ("from", i)
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or "path" not in item:
            fail(spath, "a source is a field path like OBR-18 or {path: OBR-4.2, regex: '...'}")
        for k in item:
            if k not in SOURCE_KEYS:
                fail(spath + (k,), f"unknown key (allowed: {', '.join(sorted(SOURCE_KEYS))})")
        try:
            fp = FieldPath.parse(str(item["path"]))
        except PathError as exc:
            fail(spath + ("path",), str(exc))
        regex = None
        if "regex" in item:
            try:
                regex = re.compile(str(item["regex"]))
            except re.error as exc:
                fail(spath + ("regex",), f"not a valid regular expression: {exc}")
        sources.append(Source(fp, regex))
    transform = spec.get("as", "text")
    if transform not in TRANSFORMS:
        fail(path + ("as",), f"unknown transform {transform!r} (known: {', '.join(sorted(TRANSFORMS))})")
    otherwise = spec.get("otherwise")
    if otherwise is not None and otherwise not in OTHERWISE:
        fail(path + ("otherwise",), f"{otherwise!r} is not one of {', '.join(sorted(OTHERWISE))}")
    required = spec.get("required", False)
    if not isinstance(required, bool):
        fail(path + ("required",), "true or false")
    return FieldSpec(key=key, sources=tuple(sources), transform=transform, required=required, otherwise=otherwise)


class ProfileSet:
    """The profiles of a mapping folder, by name; ``get(name)`` returns the active one."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.profiles: dict[str, Profile] = {}
        for file in sorted(self.folder.glob("*.yaml")):
            profile = load_profile(file)
            self.profiles[profile.name] = profile

    def get(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            raise ProfileError(name, None, "name", f"no profile named {name!r} in {self.folder}") from None
