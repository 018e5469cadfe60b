"""JSON API: health, orders (with their linked studies), studies, inbound messages."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import text

from app.db import unit_of_work
from app.errors import InvalidInput, NotFound, Unsupported
from app.models import LinkStatus, MessageStatus, OrderStatus
from app.queries import orders as views

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
    raw = request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise InvalidInput(f"limit={raw!r} must be a whole number from 1 to 1000", location="limit")
    return int(raw)


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
    with _reader() as session:
        item = views.get_order(session, order_id)
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
    raw = str(source.get(name, "") or "").strip()
    if not raw:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name}={raw!r} is not an ISO 8601 date or time", location=name) from None
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


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


def _reprocessor():
    service = current_app.extensions["ris.services"].get("reprocess_message")
    if service is None:
        raise Unsupported("message reprocessing is not available in this process", location="path")
    return service


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@api.post("/api/messages/<int:message_id>/reprocess")
def reprocess_message(message_id: int):
    """Apply a stored message again; ``?dry_run=true`` shows the effect and changes nothing."""
    with _reader() as session:
        if views.get_message(session, message_id) is None:
            raise NotFound(f"no message {message_id}", location="message_id")
    result = _reprocessor()(message_id, dry_run=_flag(request.args.get("dry_run", "")))
    return jsonify(id=message_id, dry_run=_flag(request.args.get("dry_run", "")), **result.as_dict())


@api.post("/api/messages/reprocess")
def reprocess_messages():
    """Reprocess the messages matching a filter (JSON body: status, control_id, type, patient_id,
    accession, since, until, limit, dry_run), oldest first."""
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
    service = _reprocessor()
    results = [{"id": mid, **service(mid, dry_run=dry_run).as_dict()} for mid in ids]
    return jsonify(dry_run=dry_run, count=len(results), results=results)


@api.get("/api/messages/<int:message_id>")
def show_message(message_id: int):
    with _reader() as session:
        item = views.get_message(session, message_id)
    if item is None:
        raise NotFound(f"no message {message_id}", location="message_id")
    return jsonify(item)
