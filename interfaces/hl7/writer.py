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

__all__ = ["ORDER_MESSAGES", "ORDER_STATUS_CODES", "Header", "encode", "order_status_message"]

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
ORDER_MESSAGES = {"ORM^O01": ("ORM", "O01", "ORM_O01"), "OMG^O19": ("OMG", "O19", "OMG_O19")}


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
    code, trigger, structure = ORDER_MESSAGES[message]
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
    status = ORDER_STATUS_CODES.get(payload.get("status", ""))
    if status is None:
        raise ValueError(f"order status {payload.get('status')!r} has no HL7 table 0038 code")
    placer = _ei(payload.get("placer_order_number", ""), payload.get("placer_issuer", ""))
    filler = _ei(payload.get("filler_order_number") or payload.get("accession_number", ""),
                 header.sending_application)
    segments = [_msh(header, message), _pid(payload.get("patient") or {})]
    procedures = payload.get("procedures") or [{}]
    for number, procedure in enumerate(procedures, start=1):
        step = _step(procedure, payload.get("step_id", ""))
        changed_at = _dtm(payload.get("changed_at", ""), header.now.tzinfo)
        segments.append(_segment("ORC", "SC", placer, filler, "", status, "", "", "", changed_at))
        code = _join(D.component, _e(procedure.get("code_value")),
                     _e(procedure.get("code_meaning") or procedure.get("description")),
                     _e(procedure.get("code_scheme")))
        segments.append(_segment(
            "OBR", str(number), placer, filler, code, *[""] * 13,
            _e(payload.get("accession_number")), _e(procedure.get("requested_procedure_id")),
            _e(step.get("sps_id")), "", "", "", _e(step.get("modality")),
        ))
    return "\r".join(segments) + "\r"


def encode(text: str) -> bytes:
    """The bytes of a message this module wrote (MSH-18 ``UNICODE UTF-8``)."""
    return text.encode("utf-8")
