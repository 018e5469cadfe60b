"""Original-mode acknowledgments (HL7 v2.5.1 chapter 2: 2.9 acknowledgment rules, 2.14.1 ACK, 2.15.8 MSA,
2.15.5 ERR; error codes from HL7 table 0357).

The ACK is written with the inbound message's own delimiters, and every field copied from the inbound header is
copied raw, so structure survives (MSH-4 ``COMZIS^MS1`` stays ``COMZIS^MS1``, never ``COMZIS\\S\\MS1``).
Values of our own (application, facility, control id, texts) are escaped.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, replace
from typing import Sequence

from interfaces.hl7.escape import escape
from interfaces.hl7.timestamps import format_dtm
from interfaces.hl7.tokenizer import STANDARD_DELIMITERS, Delimiters, Message

__all__ = ["ACK_CODES", "ERROR_CODES", "ErrorDetail", "build_ack", "build_reject_for_unparsable"]

ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})  # HL7 table 0008

# Outbox kind of an application ACK sent as a message of its own (enhanced mode, HL7 v2.5.1 2.9.3): payload
# {"message": the ACK text, "codec": its character set, "sender": MSH-3^MSH-4 of the message it answers}.
APPLICATION_ACK = "hl7.application_ack"

ERROR_CODES = {  # HL7 table 0357 (message error condition codes), v2.5.1
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

SEVERITIES = frozenset({"E", "W", "I", "F"})  # HL7 table 0516 (error severity)

# 'PID-3.1.2', 'OBR[2]-24' (second OBR of the message), 'PID-3[2].1' (second repetition of PID-3)
_LOCATION = re.compile(r"(?P<segment>[A-Z][A-Z0-9]{2})(?:\[(?P<occurrence>\d+)\])?"
                       r"(?:-(?P<field>\d+)(?:\[(?P<rep>\d+)\])?(?:\.(?P<comp>\d+)(?:\.(?P<sub>\d+))?)?)?")


@dataclass(frozen=True)
class ErrorDetail:
    """One error for the ERR segment.

    ``code`` is from HL7 table 0357, ``location`` like 'PID-3', 'PID-3.1', 'OBR-18', 'MSH-9' or just 'IPC';
    'OBR[2]-24' names the second OBR of the message, 'PID-3[2]' the second repetition of PID-3 (ERL, 2.15.5.2),
    ``severity`` from table 0516 (E error, W warning, I information, F fatal).
    """

    code: str
    text: str
    location: str | None = None
    severity: str = "E"


@dataclass(frozen=True)
class _Echo:
    """What the ACK copies from the inbound header: raw values except ``trigger``/``version`` (plain text)."""

    sending_application: str = ""
    sending_facility: str = ""
    trigger: str = ""
    control_id: str = ""
    processing_id: str = ""
    version_field: str = ""
    version: str = ""
    charset: str = ""


def version_tuple(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in version.strip().split("."))
    except ValueError:
        return None


def _message_type(version: tuple[int, ...] | None, trigger: str, delims: Delimiters) -> str:
    """MSH-9 of the ACK (2.14.1): 'ACK' before v2.3.1, 'ACK^trigger' up to 2.3.x, 'ACK^trigger^ACK' from 2.4.

    Never the inbound structure (OMI_O23, ...). An unknown version gets the v2.4+ form.
    """
    cs = delims.component
    trigger = escape(trigger, delims)
    if version is not None and version < (2, 3, 1):
        return "ACK"
    if version is not None and version < (2, 4):
        return f"ACK{cs}{trigger}" if trigger else "ACK"
    return f"ACK{cs}{trigger}{cs}ACK"


def _location_parts(location: str | None) -> tuple[str, str, str, str, str, str] | None:
    """(segment, occurrence, field, repetition, component, subcomponent) of a location: 'PID-3.1.2',
    'OBR[2]-24' (the second OBR of the message), 'PID-3[2].1' (the second repetition of PID-3).
    The occurrence defaults to 1; the repetition to 1 when a component is named, else it is empty."""
    if not location:
        return None
    match = _LOCATION.fullmatch(location.strip())
    if match is None:
        return None
    comp = match["comp"] or ""
    rep = match["rep"] or ("1" if comp else "")
    return match["segment"], match["occurrence"] or "1", match["field"] or "", rep, comp, match["sub"] or ""


def _err_v25(error: ErrorDetail, delims: Delimiters) -> str:
    """ERR for v2.5+ (2.15.5): ERR-2 location (ERL), ERR-3 code (CWE, table 0357), ERR-4 severity, ERR-8 text."""
    cs = delims.component
    parts = _location_parts(error.location)
    user_message = error.text
    if parts is None:
        erl = ""
        if error.location:
            user_message = f"{error.location}: {error.text}"
    else:
        segment, occurrence, field, rep, comp, sub = parts
        erl_parts = [segment, occurrence, field, rep, comp, sub]
        erl = cs.join(erl_parts).rstrip(cs)
    description = ERROR_CODES.get(error.code, error.text)
    cwe = cs.join((escape(error.code, delims), escape(description, delims), "HL70357"))
    fields = ["ERR", "", erl, cwe, escape(error.severity, delims), "", "", "", escape(user_message, delims)]
    return delims.field.join(fields)


def _eld(error: ErrorDetail, delims: Delimiters) -> str:
    """One ELD value for v2.2-2.4 ERR-1: segment^occurrence^field^code&text&HL70357 (the CE text is ours)."""
    cs, ss = delims.component, delims.subcomponent or delims.component
    parts = _location_parts(error.location)
    text = error.text if parts is not None or not error.location else f"{error.location}: {error.text}"
    segment, occurrence, field = parts[:3] if parts is not None else ("", "", "")
    code = ss.join((escape(error.code, delims), escape(text, delims), "HL70357"))
    return cs.join((segment, occurrence, field, code))


def _write_ack(
    echo: _Echo,
    delims: Delimiters,
    encoding_characters: str,
    code: str,
    errors: Sequence[ErrorDetail],
    *,
    app: str,
    facility: str,
    control_id: str,
    now: dt.datetime,
    text: str | None,
) -> str:
    if code not in ACK_CODES:
        raise ValueError(f"acknowledgment code must be one of {sorted(ACK_CODES)}, not {code!r}")
    for error in errors:
        if error.severity not in SEVERITIES:
            raise ValueError(f"error severity must be one of {sorted(SEVERITIES)}, not {error.severity!r}")
    version = version_tuple(echo.version)
    before_v25 = version is not None and version < (2, 5)
    msh = [
        "MSH",
        encoding_characters,
        escape(app, delims),
        escape(facility, delims),
        echo.sending_application,
        echo.sending_facility,
        format_dtm(now),
        "",
        _message_type(version, echo.trigger, delims),
        escape(control_id, delims),
        echo.processing_id,
        echo.version_field,
        "", "", "", "", "",
        echo.charset,
    ]
    msa = ["MSA", code, echo.control_id]
    # MSA-3 (text message) is deprecated from v2.5: the ERR segment carries the text there.
    msa_text = text if text is not None else (errors[0].text if errors else None)
    if before_v25 and msa_text:
        msa.append(escape(msa_text, delims))
    segments = [delims.field.join(msh).rstrip(delims.field), delims.field.join(msa)]
    if errors:
        if before_v25:
            segments.append("ERR" + delims.field + delims.repetition.join(_eld(e, delims) for e in errors))
        else:
            segments.extend(_err_v25(error, delims) for error in errors)
    return "\r".join(segments) + "\r"


def build_ack(
    msg: Message,
    code: str,
    *,
    errors: Sequence[ErrorDetail] = (),
    app: str,
    facility: str,
    control_id: str,
    now: dt.datetime,
    text: str | None = None,
) -> str:
    """The acknowledgment of ``msg`` (HL7 v2.5.1 2.9.2, 2.14.1), segments ended by CR.

    MSH-3/4 are ``app``/``facility``; MSH-5/6 the sender's MSH-3/4 copied raw; MSH-7 ``now``; MSH-9 by version
    (see ``_message_type``); MSH-10 ``control_id``; MSH-11, MSH-12 and MSH-18 echo the inbound fields raw
    (MSH-11 and MSH-12 are required: an empty one is answered 'P' and '2.5', as for an unreadable message).
    MSA-2 echoes the inbound MSH-10 raw (empty if it had none). Before v2.5, MSA-3 carries ``text`` (default:
    the first error's text) and one ERR whose ERR-1 repeats an ELD per error; from v2.5 one ERR per error
    (ERR-2 ERL location, ERR-3 table-0357 code, ERR-4 severity, ERR-8 the error's text) and no MSA-3.
    """
    header = msg.segments[0]
    echo = _Echo(
        sending_application=header.raw(3),
        sending_facility=header.raw(4),
        trigger=msg.trigger_event,
        control_id=header.raw(10),
        processing_id=header.raw(11),
        version_field=header.raw(12),
        version=msg.version,
        charset=header.raw(18),
    )
    if not echo.processing_id.strip():  # MSH-11 and MSH-12 are required in the ACK too
        echo = replace(echo, processing_id="P")
    if not echo.version_field.strip():
        echo = replace(echo, version_field="2.5", version="2.5")
    return _write_ack(
        echo,
        msg.delimiters,
        header.raw(2),
        code,
        errors,
        app=app,
        facility=facility,
        control_id=control_id,
        now=now,
        text=text,
    )


def scrape_header(raw_text: str) -> _Echo:
    """Best-effort header values of a message that could not be tokenized, ready for standard delimiters.

    Splits the first line on the character after 'MSH'; components are cut with the sender's first MSH-2
    character when it looks like a delimiter. Values are escaped for '|^~\\&'.
    """
    text = raw_text.lstrip(" \t\r\n\x00\x0b\x1c\ufeff")
    line = text.split("\r", 1)[0].split("\n", 1)[0]
    if not line.startswith("MSH") or len(line) < 5:
        return _Echo()
    field_sep = line[3]
    if field_sep.isalnum() or field_sep.isspace():
        return _Echo()
    fields = ["MSH", field_sep, *line.split(field_sep)[1:]]

    def field(number: int) -> str:
        return fields[number] if number < len(fields) else ""

    encoding = field(2)
    component = encoding[:1] if encoding[:1] and not encoding[:1].isalnum() else ""

    def comp(value: str, number: int = 1) -> str:
        if not component:
            return value if number == 1 else ""
        parts = value.split(component)
        return parts[number - 1] if number <= len(parts) else ""

    std = STANDARD_DELIMITERS
    return _Echo(
        sending_application=escape(comp(field(3)), std),
        sending_facility=escape(comp(field(4)), std),
        trigger=comp(field(9), 2).strip(),
        control_id=escape(field(10), std),
        processing_id=escape(comp(field(11)), std),
        version_field=escape(comp(field(12)).strip(), std),
        version=comp(field(12)).strip(),
    )


def build_reject_for_unparsable(
    raw_text: str,
    code: str,
    error: ErrorDetail,
    *,
    app: str,
    facility: str,
    control_id: str,
    now: dt.datetime,
) -> str:
    """A minimal valid ACK (standard delimiters '|^~\\&') for text that :func:`parse` refused.

    MSA-2 is the MSH-10 scraped from the first line (split on its MSH-1 character) or empty; MSH-5/6, MSH-9's
    trigger, MSH-11 and MSH-12 are scraped the same way when possible (first component only, since the
    sender's component separator cannot be trusted); the ERR names what was wrong. MSH-11 defaults to 'P' and
    MSH-12 to '2.5' when nothing can be scraped (both are required fields).
    """
    echo = scrape_header(raw_text)
    if not echo.processing_id:
        echo = replace(echo, processing_id="P")
    if not echo.version:
        echo = replace(echo, version_field="2.5", version="2.5")
    return _write_ack(
        echo,
        STANDARD_DELIMITERS,
        STANDARD_DELIMITERS.encoding_characters,
        code,
        [error],
        app=app,
        facility=facility,
        control_id=control_id,
        now=now,
        text=None,
    )
