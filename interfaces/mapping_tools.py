"""The interface analyst's mapping tools: ``ris mapping check|test|compare|worklist`` and their JSON endpoints
(GET /api/mappings, POST /api/mappings/test, POST /api/mappings/compare, GET /api/mappings/worklist). Nothing
here commits anything.

Like :mod:`interfaces.runtime`, this module wires interfaces together (it is part of the
composition root): a mapping test is the HL7 intake's dry run (:meth:`HL7Intake.trial`), the
field names hl7apy knows (:mod:`interfaces.hl7.fieldnames`) and the worklist item rendered exactly
as the DICOM worklist SCP answers a query that asks for every attribute (DICOM PS3.4 K.4.1.1.3.2).

- :func:`mapping_test`: what one message (text or stored) would do.
- :func:`compare_profiles`: the same stored messages through two sets of profiles (two folders, or the live
  folder and candidate versions of some of its files), and what differs per message in the commands and the
  worklist items. Each side is a dry run; identifiers the engine generates (an accession number from the order's
  key, the UIDs derived from it) are named by placeholders, so keys a rolled-back dry run used are no difference.
- :func:`worklist_preview`: "what will modality X see": the live worklist queried by the DICOM worklist SCP's own
  handler (interfaces.dicom.worklist.bind), as calling AE title X, with the C-FIND Identifier a modality sends
  (every return key of PS3.4 Table K.6-1), answered item by item as the SCP answers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from zoneinfo import ZoneInfo

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import String, cast, literal, select, update

from app.db import unit_of_work
from app.errors import InvalidInput, NotFound, Unsupported
from app.models import InboundMessage, MessageStatus, Order
from app.queries.orders import message_query
from config.settings import Settings
from interfaces.dicom import worklist as dicom_worklist
from interfaces.dicom.worklist import identifier_response
from interfaces.hl7 import charsets
from interfaces.hl7.fieldnames import describe_fields
from interfaces.hl7.intake import HL7Intake, Trial
from interfaces.hl7.tokenizer import HL7ParseError, parse
from mappings.hl7v2 import charset_policy
from mappings.profile import ProfileSet, ProfilesRefused


def check_folder(folder: Path | str, default: str | None) -> ProfileSet:
    """Every profile of ``folder`` loaded and validated; its ``problems`` say what was refused."""
    return ProfileSet(folder, default, strict=False, check_interval=0.0, live=False)


def plain(value):
    """Commands and other values as JSON: dataclasses as objects (with their kind), times ISO 8601."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


def dataset_json(ds: Dataset) -> dict:
    """A DICOM data set as {keyword: value}; sequences as lists of such objects."""
    out = {}
    for elem in ds:
        if elem.VR == "SQ":
            out[elem.keyword] = [dataset_json(item) for item in elem.value]
        elif elem.VM > 1:
            out[elem.keyword] = [str(v) for v in elem.value]
        else:
            out[elem.keyword] = "" if elem.value is None else str(elem.value)
    return out


def worklist_datasets(trial: Trial, settings: Settings) -> tuple[list[Dataset], list[str]]:
    """The trial's worklist items as C-FIND pending-response Identifiers (every attribute requested),
    and what pydicom says about their values (e.g. a value longer than its VR allows, PS3.5 6.2)."""
    latest = {item.step_pk or id(item): item for item in trial.worklist}   # a step changed by a later command: as left
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datasets = [identifier_response(item, Dataset(), settings) for item in latest.values()]
    return datasets, [f"worklist: {w.message}" for w in caught]


class _SetAside:
    """A session factory whose sessions begin by setting aside the orders a stored message placed itself (in the
    dry run's transaction, rolled back with it): they get other keys, so that the message, applied again, does not
    meet its own order ("already exists") and shows what it does, not that it was done."""

    def __init__(self, factory, message_id: int):
        self.factory, self.message_id = factory, message_id

    def __call__(self):
        session = self.factory()
        aside = literal("~", String) + cast(Order.id, String)
        session.execute(update(Order).where(Order.source_message_fk == self.message_id)
                        .values(placer_order_number=aside, filler_order_number="", accession_number=aside))
        return session


def replay(intake: HL7Intake, message_id: int, profile_name: str | None = None) -> Trial:
    """The dry run of the stored message ``message_id`` (:meth:`HL7Intake.trial`), with the orders it placed set aside
    (:class:`_SetAside`): what it would do now, with these profiles."""
    return HL7Intake(intake.settings, _SetAside(intake.factory, message_id), intake.profiles).trial(
        message_id=message_id, profile_name=profile_name)


def mapping_test(intake: HL7Intake, settings: Settings, *, raw: bytes | None = None, message_id: int | None = None,
                 profile_name: str | None = None) -> dict:
    """What one message would do (nothing is kept): the parsed fields with their HL7 names, the
    chosen profile and its version, the domain commands, the worklist items and the ACK. A stored message is
    replayed with the orders it placed itself set aside (:func:`replay`)."""
    trial = intake.trial(raw, profile_name=profile_name) if message_id is None else \
        replay(intake, message_id, profile_name)
    result = trial.result
    fields, parse_error = [], ""
    try:
        default, mismatch = charset_policy(intake.profiles, result.raw, settings.hl7_default_charset,
                                           settings.hl7_charset_mismatch, trial.profile)
        decoded = charsets.decode_message(result.raw, default=default, mismatch=mismatch)
        fields = describe_fields(parse(decoded.text))
    except (HL7ParseError, charsets.CharsetError) as exc:
        parse_error = str(exc)
    profile = trial.profile
    datasets, dicom_warnings = worklist_datasets(trial, settings)
    return {
        "profile": None if profile is None else {"name": profile.name, "version": profile.version,
                                                 "file": profile.file, "files": list(profile.chain)},
        "fields": fields,
        "parse_error": parse_error,
        "commands": [{"command": type(c).__name__, **plain(c)} for c in trial.commands],
        "worklist": [dataset_json(ds) for ds in datasets],
        "status": result.status.value,
        "ack_code": result.ack_code,
        "error": result.error,
        "warnings": list(result.warnings) + dicom_warnings,
        "ack": result.ack.decode("latin-1").replace("\r", "\n"),
    }


def format_report(report: dict) -> str:
    """A mapping test as text for the terminal."""
    lines = []
    profile = report["profile"]
    lines.append("== profile")
    lines.append(f"{profile['name']}@{profile['version']} ({', '.join(profile['files'])})" if profile
                 else "(none: the message could not be read)")
    lines.append("== fields")
    if report["parse_error"]:
        lines.append(f"(not readable: {report['parse_error']})")
    width = max((len(f["path"]) for f in report["fields"]), default=6)
    for f in report["fields"]:
        name = f"{f['name']} ({f['type']})" if f["name"] else "(not in the standard)"
        lines.append(f"{f['path']:<{width}}  {name:<44}  {f['value']}")
    lines.append("== commands")
    lines.append(json.dumps(report["commands"], indent=2, ensure_ascii=False) if report["commands"] else "(none)")
    lines.append("== worklist items (as a modality receives them)")
    lines.append(json.dumps(report["worklist"], indent=2, ensure_ascii=False) if report["worklist"] else "(none)")
    error = f": {report['error']}" if report["error"] else ""
    lines.append(f"== result: {report['status']} {report['ack_code']}{error}")
    lines.extend(f"warning: {w}" for w in report["warnings"])
    lines.append("== ACK")
    lines.append(report["ack"].strip())
    return "\n".join(lines)


# Comparing two sets of profiles ----------------------------------------------------------------------------
COMPARE_LIMIT = 1000


@dataclasses.dataclass(frozen=True)
class MessageFilter:
    """Which stored HL7 messages a comparison replays (oldest first): an id range and the message search's
    criteria."""

    from_id: int | None = None
    to_id: int | None = None
    status: str = ""
    message_type: str = ""
    sender: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    limit: int = 100

    def check(self) -> "MessageFilter":
        if self.status and self.status not in {s.value for s in MessageStatus}:
            raise InvalidInput(f"status {self.status!r} is not one of {', '.join(s.value for s in MessageStatus)}",
                               location="status")
        if not 1 <= self.limit <= COMPARE_LIMIT:
            raise InvalidInput(f"limit {self.limit} must be from 1 to {COMPARE_LIMIT}", location="limit")
        if self.from_id is not None and self.to_id is not None and self.from_id > self.to_id:
            raise InvalidInput(f"from_id {self.from_id} is after to_id {self.to_id}", location="from_id")
        return self

    def as_dict(self) -> dict:
        return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in dataclasses.asdict(self).items()}


def message_ids(session_factory, flt: MessageFilter) -> list[int]:
    """The ids of the stored HL7 messages ``flt`` selects, oldest first (FHIR requests are not HL7 messages)."""
    q = message_query(status=flt.status, message_type=flt.message_type, since=flt.since, until=flt.until)
    q = q.with_only_columns(InboundMessage.id).where(InboundMessage.transport != "fhir").order_by(None)
    if flt.from_id is not None:
        q = q.where(InboundMessage.id >= flt.from_id)
    if flt.to_id is not None:
        q = q.where(InboundMessage.id <= flt.to_id)
    if flt.sender:
        q = q.where(InboundMessage.sender == flt.sender)
    with unit_of_work(session_factory) as session:
        return list(session.scalars(q.order_by(InboundMessage.id).limit(flt.limit)))


def candidate_folder(base: Path | str, files: dict[str, str | None], into: Path) -> Path:
    """A copy of the mapping folder ``base`` (its ``*.yaml``) in ``into`` with ``files`` written over it: name ->
    new text, or None to leave that file out. Names are plain file names ending in .yaml."""
    into.mkdir(parents=True, exist_ok=True)
    for file in Path(base).glob("*.yaml"):
        shutil.copy(file, into / file.name)
    for name, text in files.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.yaml", name):
            raise InvalidInput(f"{name!r} is not a profile file name (letters, digits, '-', '_', '.', ending in "
                               f".yaml)", location="files")
        if text is None:
            (into / name).unlink(missing_ok=True)
        elif not isinstance(text, str):
            raise InvalidInput(f"{name}: the file's text (YAML), or null to leave it out", location="files")
        else:
            (into / name).write_text(text, encoding="utf-8")
    return into


def load_side(folder: Path, default: str | None, side: str) -> ProfileSet:
    """Every profile of ``folder``, which must all load (a comparison against a refused file would hide it)."""
    profiles = ProfileSet(folder, default, strict=False, check_interval=1e9, live=False)
    if profiles.problems:
        raise ProfilesRefused(side, profiles.problems)
    return profiles


def _flatten(value, path: str, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{path}[{i}]", out)
    else:
        out[path] = value
    return out


def differences(old, new, where: str) -> list[dict]:
    """Every leaf that differs between two JSON values, as {where, path, old, new} (None: absent on that side)."""
    a, b = _flatten(old, "", {}), _flatten(new, "", {})
    return [{"where": where, "path": path, "old": a.get(path), "new": b.get(path)}
            for path in list(dict.fromkeys([*a, *b])) if a.get(path) != b.get(path)]


def _generated(trial: Trial) -> dict[str, str]:
    """The identifiers the engine made up in a dry run (accession numbers from the order's key, and the Study
    Instance UIDs derived from them) -> a placeholder that keeps the profile's prefix: another dry run makes up
    other keys for the same thing (PostgreSQL does not give back a rolled-back sequence value)."""
    given = {proc.study_instance_uid for c in trial.commands for proc in getattr(getattr(c, "order", None),
                                                                                  "procedures", ())}
    sent = {getattr(getattr(c, "order", None), "accession_number", "") for c in trial.commands}
    prefix = trial.profile.accession_prefix if trial.profile is not None else ""
    names: dict[str, str] = {}
    for item in trial.worklist:
        if item.accession_number and item.accession_number not in sent and item.accession_number not in names:
            names[item.accession_number] = f"{prefix}<generated {len(names) + 1}>"
            if item.study_instance_uid not in given:
                names[item.study_instance_uid] = f"<UID derived from {names[item.accession_number]}>"
    return names


def _renamed(value, names: dict[str, str]):
    if isinstance(value, str):
        for old in sorted(names, key=len, reverse=True):
            if old and old in value:
                value = value.replace(old, names[old])
        return value
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _renamed(v, names) for k, v in value.items()}
    return value


def _side(intake: HL7Intake, settings: Settings, message_id: int) -> dict:
    """One message through one side's profiles: what it would do (ACK code, error, commands, worklist items)."""
    try:
        trial = replay(intake, message_id)
    except Unsupported as exc:       # a batch: its messages are stored (and compared) one by one
        return {"profile": None, "ack_code": "", "error": exc.message, "commands": [], "worklist": []}
    datasets, _ = worklist_datasets(trial, settings)
    names = _generated(trial)
    return {"profile": trial.profile.label if trial.profile is not None else None,
            "ack_code": trial.result.ack_code, "error": trial.result.error,
            "commands": _renamed([{"command": type(c).__name__, **plain(c)} for c in trial.commands], names),
            "worklist": _renamed([dataset_json(ds) for ds in datasets], names)}


def _describe_side(profiles: ProfileSet, label: str) -> dict:
    return {"source": label, "profiles": [{"name": p.name, "version": p.version, "files": list(p.chain)}
                                          for p in sorted(profiles.profiles.values(), key=lambda p: p.name)]}


def compare_profiles(settings: Settings, session_factory, old: ProfileSet, new: ProfileSet, flt: MessageFilter, *,
                     old_label: str = "", new_label: str = "") -> dict:
    """The stored messages ``flt`` selects, each through ``old`` and through ``new`` (dry runs: nothing is kept),
    and per message what differs: the profile (name@version), the ACK code and error, every command value and
    every worklist attribute (``differences``: where, path, old, new)."""
    flt = flt.check()
    sides = HL7Intake(settings, session_factory, old), HL7Intake(settings, session_factory, new)
    messages = []
    with unit_of_work(session_factory) as session:
        ids = message_ids(session_factory, flt)
        headers = {row.id: row for row in session.execute(
            select(InboundMessage.id, InboundMessage.control_id, InboundMessage.message_type, InboundMessage.sender,
                   InboundMessage.received_at, InboundMessage.status).where(InboundMessage.id.in_(ids)))} if ids else {}
    for message_id in ids:
        before, after = (_side(intake, settings, message_id) for intake in sides)
        diffs = [*([{"where": "profile", "path": "", "old": before["profile"], "new": after["profile"]}]
                   if before["profile"] != after["profile"] else []),
                 *differences({"ack_code": before["ack_code"], "error": before["error"]},
                              {"ack_code": after["ack_code"], "error": after["error"]}, "result"),
                 *differences(before["commands"], after["commands"], "commands"),
                 *differences(before["worklist"], after["worklist"], "worklist")]
        meaningful = [d for d in diffs if d["where"] != "profile"]
        row = headers[message_id]
        messages.append({
            "id": message_id, "control_id": row.control_id, "message_type": row.message_type, "sender": row.sender,
            "received_at": row.received_at.isoformat(), "status": row.status.value,
            "old": {k: before[k] for k in ("profile", "ack_code", "error")},
            "new": {k: after[k] for k in ("profile", "ack_code", "error")},
            "same": not meaningful, "differences": diffs,
            "commands": {"old": before["commands"], "new": after["commands"]} if meaningful else None,
            "worklist": {"old": before["worklist"], "new": after["worklist"]} if meaningful else None,
        })
    differing = sum(1 for m in messages if not m["same"])
    return {"old": _describe_side(old, old_label), "new": _describe_side(new, new_label), "filter": flt.as_dict(),
            "compared": len(messages), "differing": differing, "same": len(messages) - differing,
            "messages": messages}


def compare_candidates(settings: Settings, session_factory, messages: MessageFilter | dict, *,
                       old_files: dict | None = None, new_files: dict | None = None,
                       old_folder: Path | str | None = None, new_folder: Path | str | None = None) -> dict:
    """:func:`compare_profiles` of two sides, each a folder (default: the live RIS_MAPPINGS_DIR) with candidate
    versions of some of its files written over it (``files``: name -> YAML text, None to leave one out).
    ``messages``: a :class:`MessageFilter` or its fields."""
    flt = messages if isinstance(messages, MessageFilter) else MessageFilter(**messages)
    live = settings.mappings_path
    with tempfile.TemporaryDirectory(prefix="ris-compare-") as tmp:
        sides = []
        for side, folder, files in (("old", old_folder, old_files), ("new", new_folder, new_files)):
            base = Path(folder) if folder else live
            if not base.is_dir():
                raise NotFound(f"no mapping folder {base}", location=side)
            source = str(base) + (f" with {', '.join(sorted(files))}" if files else "")
            path = candidate_folder(base, files, Path(tmp) / side) if files else base
            sides.append((load_side(path, settings.mapping_profile, side), source))
        (old, old_label), (new, new_label) = sides
        return compare_profiles(settings, session_factory, old, new, flt, old_label=old_label, new_label=new_label)


def format_comparison(report: dict, *, show_same: bool = False) -> str:
    """A comparison as text for the terminal: one block per message that differs."""
    lines = [f"== old: {report['old']['source']}", f"== new: {report['new']['source']}"]
    for m in report["messages"]:
        if m["same"] and not show_same:
            continue
        head = f"-- message {m['id']} {m['message_type']} {m['control_id']} from {m['sender']}"
        lines.append(f"{head}: {'same' if m['same'] else 'differs'}")
        lines.append(f"   old {m['old']['profile']} {m['old']['ack_code']} {m['old']['error']}".rstrip())
        lines.append(f"   new {m['new']['profile']} {m['new']['ack_code']} {m['new']['error']}".rstrip())
        for d in m["differences"]:
            if d["where"] in ("commands", "worklist"):
                old = json.dumps(d["old"], ensure_ascii=False)
                new = json.dumps(d["new"], ensure_ascii=False)
                lines.append(f"   {d['where']}: {d['path']}: {old} -> {new}")
    lines.append(f"== {report['compared']} compared, {report['differing']} differ, {report['same']} the same")
    return "\n".join(lines)


# What a modality will see -------------------------------------------------------------------------------------
SPS = "ScheduledProcedureStepSequence"
# The return keys a modality asks for: every key of PS3.4 Table K.6-1 the engine can fill, and the Type 3
# attributes of the Scheduled Procedure Step it may add (end date/time), so that the answers show each one.
_TOP_KEYS = ("SpecificCharacterSet", "AccessionNumber", "ReferringPhysicianName", "PatientName", "PatientID",
             "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "RequestingPhysician",
             "RequestedProcedureDescription", "RequestedProcedureCodeSequence", "RequestedProcedureID",
             "ReasonForTheRequestedProcedure", "RequestedProcedurePriority",
             "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest")
_SPS_KEYS = ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
             "ScheduledProcedureStepStartTime", "ScheduledProcedureStepEndDate", "ScheduledProcedureStepEndTime",
             "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence",
             "ScheduledProcedureStepID", "ScheduledStationName", "ScheduledProcedureStepLocation",
             "ScheduledProcedureStepStatus")
_DICOM_DATE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")


def _dicom_date(text: str) -> str:
    """A date or range as the C-FIND key carries it (PS3.5 DA, PS3.4 C.2.2.2.5): 20261204, 20261204-20261210,
    -20261204, 20261204-; ISO dates (2026-12-04, 2026-12-04/2026-12-10) are accepted and rewritten."""
    value = text.strip()
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})?(?:(/)(\d{4}-\d{2}-\d{2})?)?", value)
    if value and m and (m[1] or m[3]):
        value = (m[1] or "").replace("-", "") + ("-" if m[2] else "") + (m[3] or "").replace("-", "")
    m = _DICOM_DATE.match(value)
    if not m or (value and not (m[1] or m[3])):
        raise InvalidInput(f"date {text!r} is not a date or range (YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYY-MM-DD)",
                           location="date")
    for part in (m[1], m[3]):
        if part:
            try:
                dt.datetime.strptime(part, "%Y%m%d")
            except ValueError:
                raise InvalidInput(f"date {text!r}: {part} is not a calendar date", location="date") from None
    return value


def modality_identifier(*, date: str = "", modality: str = "", station_aet: str = "", accession: str = "",
                        patient_id: str = "") -> Dataset:
    """The C-FIND Identifier a modality sends for its worklist: every return key empty (universal matching), and
    the given matching keys (the SPS start date, its modality and station AE title, an accession, a patient)."""
    ds = Dataset()
    for keyword in _TOP_KEYS[1:]:
        setattr(ds, keyword, Sequence() if keyword.endswith("Sequence") else "")
    ds.AccessionNumber, ds.PatientID = accession, patient_id
    sps = Dataset()
    for keyword in _SPS_KEYS:
        setattr(sps, keyword, Sequence() if keyword.endswith("Sequence") else "")
    sps.ScheduledProcedureStepStartDate, sps.Modality, sps.ScheduledStationAETitle = date, modality, station_aet
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


class _Requestor:
    def __init__(self, ae_title: str):
        self.ae_title = ae_title


class _Association:
    """What the worklist handler reads of an association: the requestor's AE title (no socket: nothing to cancel)."""

    dul = None

    def __init__(self, calling_aet: str):
        self.requestor = _Requestor(calling_aet)


class PreviewEvent:
    """A C-FIND request event as pynetdicom hands it to the worklist SCP (EVT_C_FIND: ``identifier``,
    ``is_cancelled``, ``assoc.requestor.ae_title``; ``context`` None: the default transfer syntax, Implicit VR
    Little Endian), made by the analyst's tool instead of a modality."""

    is_cancelled = False
    context = None

    def __init__(self, identifier: Dataset, calling_aet: str):
        self.identifier = identifier
        self.assoc = _Association(calling_aet)


def _status(value) -> dict:
    code = value.Status if isinstance(value, Dataset) else int(value)
    meaning = {0x0000: "Success", 0xFF00: "Pending", 0xFE00: "Cancel"}.get(code, "Failure")
    out = {"code": f"0x{code:04X}", "meaning": meaning}
    if isinstance(value, Dataset) and "ErrorComment" in value:
        out["error"] = str(value.ErrorComment)
    return out


def worklist_preview(read_factory, settings: Settings, *, calling_aet: str, date: str | None = None,
                     modality: str = "", station_aet: str = "", accession: str = "", patient_id: str = "") -> dict:
    """What modality ``calling_aet`` sees in the live worklist: the DICOM worklist SCP's own C-FIND handler
    (interfaces.dicom.worklist.bind, its settings, its calling-AE rules) asked with a modality's Identifier
    (:func:`modality_identifier`), and every answer as the SCP sends it (keyword -> value). ``date`` None is
    today (the site's date); "" is every date."""
    calling_aet = calling_aet.strip()
    if not 0 < len(calling_aet) <= 16 or "\\" in calling_aet or not calling_aet.isascii():
        raise InvalidInput(f"calling_aet {calling_aet!r} is not an AE title (1 to 16 characters, PS3.5 6.2)",
                           location="calling_aet")
    for name, value in (("modality", modality), ("station_aet", station_aet)):
        if len(value) > 16 or "\\" in value:
            raise InvalidInput(f"{name} {value!r} is longer than 16 characters or holds a backslash",
                               location=name)
    if date is None:
        date = dt.datetime.now(ZoneInfo(settings.site_timezone)).strftime("%Y%m%d")
    date = _dicom_date(date)
    identifier = modality_identifier(date=date, modality=modality.strip(), station_aet=station_aet.strip(),
                                     accession=accession.strip(), patient_id=patient_id.strip())
    handler = dicom_worklist.bind(read_factory, settings)
    items, final = [], None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # pydicom's remarks on values: the answer is what it is
        for status, answer in handler(PreviewEvent(identifier, calling_aet)):
            if answer is not None:
                items.append(dataset_json(answer))
            else:
                final = status
    return {"calling_aet": calling_aet, "called_aet": settings.dicom_aet,
            "query": {"date": date, "modality": modality.strip(), "station_aet": station_aet.strip(),
                      "accession": accession.strip(), "patient_id": patient_id.strip()},
            "identifier": dataset_json(identifier), "status": _status(final if final is not None else 0),
            "count": len(items), "items": items}


def format_worklist(report: dict) -> str:
    """What a modality sees, as text: one line per item, then the status."""
    q = report["query"]
    lines = [f"== worklist for calling AE {report['calling_aet']} at {report['called_aet']} "
             f"(date {q['date'] or 'any'}{', modality ' + q['modality'] if q['modality'] else ''}"
             f"{', station ' + q['station_aet'] if q['station_aet'] else ''})"]
    for item in report["items"]:
        sps = (item.get(SPS) or [{}])[0]
        lines.append(f"{sps.get('ScheduledProcedureStepStartDate', '')} {sps.get('ScheduledProcedureStepStartTime', '')}"
                     f"  {sps.get('Modality', ''):<3} {str(sps.get('ScheduledStationAETitle', '')):<16}"
                     f"  {item.get('AccessionNumber', ''):<16} {item.get('PatientID', ''):<16} "
                     f"{item.get('PatientName', '')}  {sps.get('ScheduledProcedureStepDescription', '')}")
    status = report["status"]
    lines.append(f"== {report['count']} item(s); status {status['code']} {status['meaning']}"
                 f"{': ' + status['error'] if status.get('error') else ''}")
    return "\n".join(lines)
