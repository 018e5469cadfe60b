"""HL7 v2.5.1 message writer for what the engine sends on its own (acknowledgments are written by
:mod:`interfaces.hl7.ack`).

Order status feedback to the HIS - IHE RAD TF-2 4.3 (RAD-3 Filler Order Management), HL7 v2.5.1
chapter 4 (messages ORM^O01 and OMG^O19; segments 4.5.1 ORC, 4.5.3 OBR) and chapter 3 (3.4.2 PID):

- ORC-1 ``SC`` (status changed, HL7 table 0119) and ORC-5 the order's status (HL7 table 0038):
  ``SC`` scheduled, ``HD`` on hold, ``IP`` in process, ``CM`` completed, ``DC`` discontinued,
  ``CA`` cancelled;
- ORC-9 the time of the change, in MSH-7's zone with its offset;
- ORC-2 / OBR-2 the placer order number (EI: number^namespace), ORC-3 / OBR-3 the filler order number
  (the accession number when the order has none of its own; namespace: our MSH-3);
- one ORC + OBR pair per requested procedure: OBR-4 the procedure code (CE code^text^system),
  OBR-18 the accession number, OBR-19 the Requested Procedure ID, OBR-20 the Scheduled Procedure
  Step ID, OBR-24 the modality (the placement of these identifiers IHE RAD-2/RAD-4 use);
- PID-3 patient id^^^issuer, PID-5 the name (DICOM PN family^given^middle^prefix^suffix written as
  XPN family^given^middle^suffix^prefix), PID-7 birth date, PID-8 sex.

A procedure's lifecycle transition (payload ``event`` = ``procedure``, app.services.lifecycle.report) is written
as the same message with one ORC + OBR pair, that procedure's: ORC-5 the code of its new state
(:data:`PROCEDURE_STATUS_CODES`; table 0038 has no "arrived", so ARRIVED is IP, "in process") and ORC-25 (Order
Status Modifier, CWE, v2.5.1 4.5.1.25) the engine's own state ``ARRIVED^Patient arrived^99RIS`` (a local table), so
a receiver can tell an arrival from the start of the examination.

Results - HL7 v2.5.1 chapter 7 (7.3.1 ORU^R01; OBR 4.5.3, OBX 7.4.2): :func:`report_message` writes a signed report
as MSH, PID, ORC (ORC-1 RE, "observations to follow"), OBR (OBR-7 when performed, OBR-22 when signed, OBR-25 the
result status of table 0123: P preliminary, F final, C correction - an amendment or an addendum replaces the final
result the receiver holds; OBR-32 the signing radiologist) and one OBX of type TX per line of text (OBX-3
``18782-3^Radiology Study observation^LN``, OBX-11 the result status) plus one OBX with the Study Instance UID
(``110180^Study Instance UID^DCM``).

Every value is escaped (HL7 v2.5.1 2.7, :func:`interfaces.hl7.escape.escape`) and written with the
standard delimiters ``|^~\\&``; segments end with CR; the text is UTF-8 and MSH-18 says so
(``UNICODE UTF-8``, table 0211). The input is the outbox payload of
:func:`app.services.outbox.order_snapshot`, so this module is a pure function of plain data.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from interfaces.hl7.escape import escape
from interfaces.hl7.timestamps import format_dtm
from interfaces.hl7.tokenizer import STANDARD_DELIMITERS

__all__ = ["ORDER_MESSAGES", "ORDER_STATUS_CODES", "PROCEDURE_STATUS_CODES", "Header", "encode",
           "order_status_message", "report_message"]

D = STANDARD_DELIMITERS
VERSION = "2.5.1"
CHARSET = "UNICODE UTF-8"

ORDER_STATUS_CODES = {  # order status -> HL7 table 0038 (ORC-5)
    "SCHEDULED": "SC",
    "HELD": "HD",
    "IN_PROGRESS": "IP",
    "COMPLETED": "CM",
    "DISCONTINUED": "DC",
    "CANCELLED": "CA",
}
PROCEDURE_STATUS_CODES = {  # requested procedure state (app.services.lifecycle.REPORTED) -> table 0038 (ORC-5)
    "SCHEDULED": "SC",
    "ARRIVED": "IP",
    "IN_PROGRESS": "IP",
    "COMPLETED": "CM",
    "CANCELLED": "CA",
    "DISCONTINUED": "DC",
}
STATE_TEXT = {"SCHEDULED": "Scheduled", "ARRIVED": "Patient arrived", "IN_PROGRESS": "In progress",
              "COMPLETED": "Completed", "CANCELLED": "Cancelled", "DISCONTINUED": "Discontinued"}
LOCAL_TABLE = "99RIS"
ORDER_MESSAGES = {"ORM^O01": ("ORM", "O01", "ORM_O01"), "OMG^O19": ("OMG", "O19", "OMG_O19")}
RESULT_MESSAGE = ("ORU", "R01", "ORU_R01")
RESULT_STATUSES = ("P", "F", "C")   # HL7 table 0123
NARRATIVE = ("18782-3", "Radiology Study observation (narrative)", "LN")
STUDY_UID = ("110180", "Study Instance UID", "DCM")


@dataclass(frozen=True)
class Header:
    """What MSH says besides the message type: who sends to whom, when, under which control id."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    control_id: str
    now: dt.datetime
    processing_id: str = "P"


def _e(value) -> str:
    return escape(str(value or ""), D)


def _join(separator: str, *parts: str) -> str:
    return separator.join(parts).rstrip(separator)


def _segment(name: str, *fields: str) -> str:
    return _join(D.field, name, *fields)


def _ei(number: str, namespace: str) -> str:
    """EI (entity identifier): number^namespace id; empty when there is no number."""
    return _join(D.component, _e(number), _e(namespace)) if number else ""


def _xpn(person_name: str) -> str:
    """A DICOM PN (family^given^middle^prefix^suffix, PS3.5 6.2) as HL7 XPN (family^given^middle^suffix^prefix)."""
    parts = (person_name or "").split("=")[0].split("^") + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    return _join(D.component, *(_e(p) for p in (family, given, middle, suffix, prefix)))


def _date(iso: str) -> str:
    return iso.replace("-", "")[:8] if iso else ""


def _dtm(iso: str, zone: dt.tzinfo | None) -> str:
    """A naive UTC time of the core (audit times) as DTM in ``zone`` with its offset (naive UTC without a zone)."""
    if not iso:
        return ""
    moment = dt.datetime.fromisoformat(iso)
    if moment.tzinfo is None and zone is not None:
        moment = moment.replace(tzinfo=dt.timezone.utc).astimezone(zone)
    return format_dtm(moment)


def _msh(header: Header, message: str) -> str:
    code, trigger, structure = RESULT_MESSAGE if message == "ORU^R01" else ORDER_MESSAGES[message]
    return _segment(
        "MSH", D.encoding_characters, _e(header.sending_application), _e(header.sending_facility),
        _e(header.receiving_application), _e(header.receiving_facility), format_dtm(header.now), "",
        _join(D.component, code, trigger, structure), _e(header.control_id), _e(header.processing_id), VERSION,
        "", "", "", "", "", CHARSET,
    )


def _pid(patient: dict) -> str:
    cx = _join(D.component, _e(patient.get("patient_id")), "", "", _e(patient.get("issuer")))
    return _segment("PID", "1", "", cx, "", _xpn(patient.get("name", "")), "", _date(patient.get("birth_date", "")),
                    _e(patient.get("sex")))


def _step(procedure: dict, step_id: str) -> dict:
    steps = procedure.get("steps") or [{}]
    return next((s for s in steps if step_id and s.get("sps_id") == step_id), steps[0])


def order_status_message(payload: dict, *, header: Header, message: str = "ORM^O01") -> str:
    """The ORM^O01 or OMG^O19 status message (ORC-1 SC) for an order status snapshot; segments end with CR.

    Raises ValueError for a message type other than ORM^O01/OMG^O19 or a status without a table 0038 code.
    """
    if message not in ORDER_MESSAGES:
        raise ValueError(f"order status message must be one of {', '.join(ORDER_MESSAGES)}, not {message!r}")
    modifier = ""
    procedures = payload.get("procedures") or [{}]
    if payload.get("event") == "procedure":          # one procedure's transition
        state = payload.get("procedure_state", "")
        status = PROCEDURE_STATUS_CODES.get(state)
        if status is None:
            raise ValueError(f"procedure state {state!r} has no HL7 table 0038 code")
        modifier = _join(D.component, _e(state), _e(STATE_TEXT.get(state, "")), LOCAL_TABLE)
        procedures = [p for p in procedures if p.get("requested_procedure_id") == payload.get("procedure")]
        if not procedures:
            raise ValueError(f"the order has no requested procedure {payload.get('procedure')!r}")
    else:
        status = ORDER_STATUS_CODES.get(payload.get("status", ""))
        if status is None:
            raise ValueError(f"order status {payload.get('status')!r} has no HL7 table 0038 code")
    placer, filler = _order_ids(payload, header)
    segments = [_msh(header, message), _pid(payload.get("patient") or {})]
    for number, procedure in enumerate(procedures, start=1):
        step = _step(procedure, payload.get("step_id", ""))
        changed_at = _dtm(payload.get("changed_at", ""), header.now.tzinfo)
        orc = ["SC", placer, filler, "", status, "", "", "", changed_at]
        if modifier:
            orc += [""] * 15 + [modifier]                 # ORC-25 Order Status Modifier
        segments.append(_segment("ORC", *orc))
        code = _join(D.component, _e(procedure.get("code_value")),
                     _e(procedure.get("code_meaning") or procedure.get("description")),
                     _e(procedure.get("code_scheme")))
        segments.append(_segment(
            "OBR", str(number), placer, filler, code, *[""] * 13,
            _e(payload.get("accession_number")), _e(procedure.get("requested_procedure_id")),
            _e(step.get("sps_id")), "", "", "", _e(step.get("modality")),
        ))
    return "\r".join(segments) + "\r"


def _order_ids(payload: dict, header: Header) -> tuple[str, str]:
    """ORC-2/OBR-2 placer and ORC-3/OBR-3 filler order number (the accession when the order has no filler number)."""
    placer = _ei(payload.get("placer_order_number", ""), payload.get("placer_issuer", ""))
    filler = _ei(payload.get("filler_order_number") or payload.get("accession_number", ""),
                 header.sending_application)
    return placer, filler


def report_message(payload: dict, *, header: Header) -> str:
    """The ORU^R01 of a signed report (app.services.reports.report_snapshot); segments end with CR.

    Raises ValueError for a result status outside table 0123's P, F, C."""
    status = payload.get("result_status", "")
    if status not in RESULT_STATUSES:
        raise ValueError(f"result status {status!r} is not one of {', '.join(RESULT_STATUSES)} (HL7 table 0123)")
    procedure = payload.get("procedure") or {}
    placer, filler = _order_ids(payload, header)
    zone = header.now.tzinfo
    signed = _dtm(payload.get("signed_at", ""), zone)
    code = _join(D.component, _e(procedure.get("code_value")),
                 _e(procedure.get("code_meaning") or procedure.get("description")), _e(procedure.get("code_scheme")))
    interpreter = _join(D.subcomponent, _e(payload.get("signed_by")), _e(payload.get("signed_by_name")))
    segments = [_msh(header, "ORU^R01"), _pid(payload.get("patient") or {}),
                _segment("ORC", "RE", placer, filler, "", "CM", "", "", "", signed),
                _segment("OBR", "1", placer, filler, code, "", "", _dtm(payload.get("performed_at", ""), zone),
                         *[""] * 10, _e(payload.get("accession_number")),
                         _e(procedure.get("requested_procedure_id")), "", "", signed, "", _e(procedure.get("modality")),
                         status, *[""] * 6, interpreter)]
    narrative = _join(D.component, *(_e(v) for v in NARRATIVE))
    lines = (payload.get("text") or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    number = 0
    for number, line in enumerate(lines, start=1):
        segments.append(_segment("OBX", str(number), "TX", narrative, "1", _e(line), "", "", "", "", "", status,
                                 "", "", signed))
    if procedure.get("study_instance_uid"):
        segments.append(_segment("OBX", str(number + 1), "ST", _join(D.component, *(_e(v) for v in STUDY_UID)), "",
                                 _e(procedure["study_instance_uid"]), "", "", "", "", "", status))
    return "\r".join(segments) + "\r"


def encode(text: str) -> bytes:
    """The bytes of a message this module wrote (MSH-18 ``UNICODE UTF-8``)."""
    return text.encode("utf-8")
