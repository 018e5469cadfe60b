"""JSON API: health, orders (with their linked studies), studies, inbound messages, mapping profiles."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import text

from app.db import unit_of_work
from app.errors import Conflict, InvalidInput, NotFound, Unsupported
from app.models import LinkStatus, MessageStatus, OrderStatus
from app.queries import orders as views
from app.queries import reports as report_views
from interfaces import inputs
from mappings.profile import ProfileError

api = Blueprint("api", __name__)


def _reader():
    return unit_of_work(current_app.extensions["ris.read_sessions"])


def _choice(name: str, kind) -> str:
    value = request.args.get(name, "").strip()
    if value and value not in {m.value for m in kind}:
        allowed = ", ".join(m.value for m in kind)
        raise InvalidInput(f"{name}={value!r} is not one of {allowed}", location=name)
    return value


def _limit() -> int:
    return inputs.whole_number(request.args.get("limit", "100"), "limit", low=1, high=1000)


@api.get("/health")
def health():
    with _reader() as session:
        session.execute(text("SELECT 1"))
    return jsonify(status="ok", database="ok")


@api.get("/api/orders")
def list_orders():
    with _reader() as session:
        items = views.search_orders(session, accession=request.args.get("accession", "").strip(),
                                    patient_id=request.args.get("patient_id", "").strip(),
                                    status=_choice("status", OrderStatus), limit=_limit())
    return jsonify(orders=items, count=len(items))


@api.get("/api/orders/<int:order_id>")
def show_order(order_id: int):
    """One order: each procedure with its lifecycle ``state`` and ``history`` (every transition with its time and
    cause), and the order's ``reports``."""
    with _reader() as session:
        item = views.get_order(session, order_id)
        if item is not None:
            item["reports"] = report_views.order_reports(session, order_id)
    if item is None:
        raise NotFound(f"no order {order_id}", location="order_id")
    return jsonify(item)


@api.get("/api/studies")
def list_studies():
    with _reader() as session:
        items = views.search_studies(session, link_status=_choice("link_status", LinkStatus),
                                     accession=request.args.get("accession", "").strip(), limit=_limit())
    return jsonify(studies=items, count=len(items))


def _time(name: str, source) -> dt.datetime | None:
    """An ISO 8601 time filter as naive UTC (audit times); without an offset it is UTC."""
    raw = str(source.get(name, "") or "").strip()
    return inputs.moment(raw, name, None) if raw else None


def _message_criteria(source) -> dict:
    status = str(source.get("status", "") or "").strip()
    if status and status not in {m.value for m in MessageStatus}:
        raise InvalidInput(f"status={status!r} is not one of {', '.join(m.value for m in MessageStatus)}",
                           location="status")
    return {"control_id": str(source.get("control_id", "") or "").strip(), "status": status,
            "message_type": str(source.get("type", "") or "").strip(),
            "patient_id": str(source.get("patient_id", "") or "").strip(),
            "accession": str(source.get("accession", "") or "").strip(),
            "since": _time("since", source), "until": _time("until", source)}


@api.get("/api/messages")
def list_messages():
    with _reader() as session:
        items = views.search_messages(session, limit=_limit(), **_message_criteria(request.args))
    return jsonify(messages=items, count=len(items))


def _service(name: str):
    """A service of another adapter, passed in by the composition root (interfaces.runtime)."""
    service = current_app.extensions["ris.services"].get(name)
    if service is None:
        raise Unsupported(f"{name.replace('_', ' ')} is not available in this process", location="path")
    return service


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@api.post("/api/messages/<int:message_id>/reprocess")
def reprocess_message(message_id: int):
    """Apply a stored message that was not applied again; ``?dry_run=true`` shows the effect and changes
    nothing. A PROCESSED or DUPLICATE message is refused: 409 problem document naming its status."""
    with _reader() as session:
        found = views.get_message(session, message_id)
    if found is None:
        raise NotFound(f"no message {message_id}", location="message_id")
    _reprocessable(found["id"], found["transport"])
    result = _service("reprocess_message")(message_id, dry_run=_flag(request.args.get("dry_run", "")))
    return jsonify(id=message_id, dry_run=_flag(request.args.get("dry_run", "")), **result.as_dict())


def _reprocessable(message_id: int, transport: str) -> None:
    """Only HL7 v2 messages are applied again through the HL7 intake: a FHIR request is refused (409)."""
    if transport == "fhir":
        raise Conflict(f"message {message_id} is a FHIR request (transport fhir): FHIR messages are not "
                       "reprocessable yet; send the request to /fhir again", location="transport")


@api.post("/api/messages/reprocess")
def reprocess_messages():
    """Reprocess the messages matching a filter (JSON body: status, control_id, type, patient_id,
    accession, since, until, limit, dry_run), oldest first. Messages that were applied (PROCESSED) or are
    DUPLICATEs are not reprocessed: each is listed with ``refused`` and the reason, and left as it is."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object with the filter, e.g. {\"status\": \"ERROR\"}",
                           location="body")
    criteria = _message_criteria(body)
    if not any(criteria.values()):
        raise InvalidInput("give at least one filter (status, control_id, type, patient_id, accession, since, "
                           "until)", location="body")
    limit = body.get("limit", 100)
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidInput("limit must be a whole number from 1 to 1000", location="limit")
    dry_run = _flag(body.get("dry_run", False))
    with _reader() as session:
        ids = views.message_ids(session, limit=limit, **criteria)
        fhir_ids = set(views.message_ids(session, limit=limit, transport="fhir", **criteria))
    service = _service("reprocess_message")

    def one(mid: int) -> dict:
        if mid in fhir_ids:
            return {"id": mid, "refused": "a FHIR request: FHIR messages are not reprocessable yet"}
        try:
            return {"id": mid, **service(mid, dry_run=dry_run).as_dict()}
        except Conflict as exc:  # applied already (PROCESSED) or a DUPLICATE: left as it is
            return {"id": mid, "refused": exc.message}
    results = [one(mid) for mid in ids]
    return jsonify(dry_run=dry_run, count=len(results), refused=sum("refused" in r for r in results),
                   results=results)


@api.get("/api/messages/<int:message_id>")
def show_message(message_id: int):
    with _reader() as session:
        item = views.get_message(session, message_id)
    if item is None:
        raise NotFound(f"no message {message_id}", location="message_id")
    return jsonify(item)


@api.get("/api/mappings")
def list_mappings():
    """The mapping profiles: name, version, files, senders; and the files refused (file, line, key)."""
    return jsonify(_service("describe_mappings")())


@api.post("/api/mappings/test")
def test_mapping():
    """What a message would do, committing nothing (JSON body: ``message`` text or ``message_id``,
    optional ``profile``): parsed fields with their HL7 names, profile and version, commands,
    worklist items, ACK."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InvalidInput('the body must be a JSON object: {"message": "MSH|..."} or {"message_id": 12}',
                           location="body")
    message, message_id, profile = body.get("message"), body.get("message_id"), body.get("profile")
    if (message is None) == (message_id is None):
        raise InvalidInput("give either message (the HL7 text) or message_id (a stored message)", location="body")
    if message is not None and (not isinstance(message, str) or not message.strip()):
        raise InvalidInput("message must be the HL7 message as text", location="message")
    if message_id is not None:
        message_id = inputs.record_id(message_id if isinstance(message_id, int) else None, "message_id")
    if profile is not None and not isinstance(profile, str):
        raise InvalidInput("profile must be a profile name", location="profile")
    raw = message.replace("\r\n", "\r").replace("\n", "\r").encode("utf-8") if message is not None else None
    try:
        report = _service("test_mapping")(raw=raw, message_id=message_id, profile_name=profile or None)
    except ProfileError as exc:
        raise NotFound(str(exc), location="profile") from None
    return jsonify(report)
