"""Raw input kept for FHIR writes (DESIGN.md 3 and 6): every write request is an InboundMessage.

Every write interaction of FHIR R4 http.html 3.1.0 - create (3.1.0.8), update (3.1.0.4), patch
(3.1.0.6), delete (3.1.0.7), operations, and batch/transaction (3.1.0.11) - is stored, body bytes
as received, before its answer is sent. The row has ``transport`` "fhir", ``message_type`` "FHIR <type>
<interaction>" (e.g. "FHIR ServiceRequest create", "FHIR Bundle transaction"), ``control_id`` the
request line ("POST /fhir/ServiceRequest", or the client's ``X-Request-Id``, http.html 3.1.0.1.x
custom headers, when it sends one), ``peer`` the client address and ``charset`` utf-8.

As the HL7 intake commits a message's raw bytes together with what it changed (one commit, one fsync), an
applied request is stored in the unit of work of its change (:func:`applied`): the change and its message
commit together or not at all. A request that is refused or fails is stored after the rollback, in a unit of
work of its own, with its answer (:func:`answered`). Either way the row exists before the client reads the
answer; a process that dies before answering leaves nothing, and the client, which got no answer, sends again.

Its answer is recorded in the existing columns: ``ack`` = the response body (the resource, or
the OperationOutcome of an error), ``ack_code`` AA (applied), AE (failed, e.g. 409/412/422/5xx:
nothing was applied) or AR (refused as a request: 400/404/405/406/415), ``error`` "HTTP <status>:
<diagnostics>", ``changes`` one entry with the HTTP status and the resource written. A FHIR message
left RECEIVED (by an earlier version that stored first) changed nothing; the recovery job marks it ERROR.

FHIR messages are not fed to the HL7 intake when reprocessed: the REST API refuses to reprocess
them (409) until FHIR reprocessing exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.db import unit_of_work
from app.models import InboundMessage, MessageStatus, Order, Patient, RequestedProcedure
from app.services.messages import finish, store_received

TRANSPORT = "fhir"
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# Refused as a request (AR): unreadable, unknown endpoint or type, interaction or media type not offered.
REFUSED = (400, 404, 405, 406, 413, 415)
_INTERACTIONS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def message_type(method: str, parts: list[str], body: bytes) -> str:
    """'FHIR <type> <interaction>' of a write request on the path segments after /fhir."""
    if not parts:
        kind = ""
        try:
            data = json.loads(body.decode("utf-8-sig")) if body.strip() else None
            kind = data.get("type", "") if isinstance(data, dict) else ""
        except (UnicodeDecodeError, ValueError):
            pass
        name = f"FHIR Bundle {kind if kind in ('transaction', 'batch') else method.lower()}"
    elif len(parts) >= 2 and method == "POST":
        name = f"FHIR {parts[0]} operation"
    else:
        interaction = _INTERACTIONS.get(method, method.lower())
        if len(parts) == 1 and method in ("PUT", "PATCH", "DELETE"):
            interaction = "conditional " + interaction
        name = f"FHIR {parts[0]} {interaction}"
    return name[:32]


@dataclass(frozen=True)
class Write:
    """A write request as received, not yet stored (:func:`applied` or :func:`answered` store it)."""

    method: str
    path: str
    query: str
    body: bytes
    peer: str
    request_id: str
    parts: tuple[str, ...]


def _row(session: Session, write: Write) -> InboundMessage:
    row = store_received(session, write.body, transport=TRANSPORT, peer=write.peer[:128])
    row.message_type = message_type(write.method, list(write.parts), write.body)
    line = f"{write.method} {write.path}" + (f"?{write.query}" if write.query else "")
    row.control_id = (write.request_id or line)[:199]
    row.charset = "utf-8"
    return row


def _keys(row: InboundMessage, written) -> None:
    """The patient and accession columns of the message (the analyst's search), from what it wrote."""
    if isinstance(written, RequestedProcedure):
        written = written.order
    if isinstance(written, Order):
        row.accession_number = (written.accession_number or "")[:16]
        written = written.patient
    if isinstance(written, Patient):
        row.patient_key = (written.patient_id or "")[:64]


def applied(session: Session, write: Write | None, status: int, body: bytes, *, reference: str = "",
            written=None) -> None:
    """Store the request, PROCESSED, in the unit of work of the change it made (one commit for both)."""
    if write is None:
        return
    row = _row(session, write)
    _keys(row, written)
    finish(row, MessageStatus.PROCESSED, ack=body, ack_code="AA",
           changes=[{"http_status": status, **({"resource": reference} if reference else {})}])


def answered(factory, write: Write, status: int, body: bytes) -> None:
    """Store a request that was not applied in a unit of work (refused or failed, after its rollback: REJECTED
    when refused as a request, else ERROR), or a success answered outside one (PROCESSED)."""
    try:
        outcome = json.loads(body.decode("utf-8")) if body and status >= 400 else {}
        texts = [i.get("diagnostics", "") for i in outcome.get("issue", [])]
    except (UnicodeDecodeError, ValueError, AttributeError):
        texts = []
    with unit_of_work(factory) as session:
        row = _row(session, write)
        if status < 400:
            finish(row, MessageStatus.PROCESSED, ack=body, ack_code="AA", changes=[{"http_status": status}])
            return
        refused = status in REFUSED
        finish(row, MessageStatus.REJECTED if refused else MessageStatus.ERROR, ack=body,
               ack_code="AR" if refused else "AE", error=f"HTTP {status}: " + "; ".join(t for t in texts if t),
               changes=[{"http_status": status}])
