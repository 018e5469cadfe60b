"""The interface analyst's mapping tools: ``ris mapping check|test``, GET /api/mappings and
POST /api/mappings/test. Nothing here commits anything.

Like :mod:`interfaces.runtime`, this module wires interfaces together (it is part of the
composition root): a mapping test is the HL7 intake's dry run (:meth:`HL7Intake.trial`), the
field names hl7apy knows (:mod:`interfaces.hl7.fieldnames`) and the worklist item rendered exactly
as the DICOM worklist SCP answers a query that asks for every attribute (DICOM PS3.4 K.4.1.1.3.2).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import warnings
from pathlib import Path

from pydicom.dataset import Dataset

from config.settings import Settings
from interfaces.dicom.worklist import identifier_response
from interfaces.hl7 import charsets
from interfaces.hl7.fieldnames import describe_fields
from interfaces.hl7.intake import HL7Intake, Trial
from interfaces.hl7.tokenizer import HL7ParseError, parse
from mappings.profile import ProfileSet


def check_folder(folder: Path | str, default: str | None) -> ProfileSet:
    """Every profile of ``folder`` loaded and validated; its ``problems`` say what was refused."""
    return ProfileSet(folder, default, strict=False, check_interval=0.0)


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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datasets = [identifier_response(item, Dataset(), settings) for item in trial.worklist]
    return datasets, [f"worklist: {w.message}" for w in caught]


def mapping_test(intake: HL7Intake, settings: Settings, *, raw: bytes | None = None, message_id: int | None = None,
                 profile_name: str | None = None) -> dict:
    """What one message would do (nothing is kept): the parsed fields with their HL7 names, the
    chosen profile and its version, the domain commands, the worklist items and the ACK."""
    trial = intake.trial(raw, message_id=message_id, profile_name=profile_name)
    result = trial.result
    fields, parse_error = [], ""
    try:
        decoded = charsets.decode_message(result.raw, default=settings.hl7_default_charset,
                                          mismatch=settings.hl7_charset_mismatch)
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
