"""JSON API: health, orders (with their linked studies), studies, inbound messages."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import text

from app.db import unit_of_work
from app.errors import InvalidInput, NotFound
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


@api.get("/api/messages")
def list_messages():
    with _reader() as session:
        items = views.search_messages(session, control_id=request.args.get("control_id", "").strip(),
                                      status=_choice("status", MessageStatus),
                                      message_type=request.args.get("type", "").strip(), limit=_limit())
    return jsonify(messages=items, count=len(items))


@api.get("/api/messages/<int:message_id>")
def show_message(message_id: int):
    with _reader() as session:
        item = views.get_message(session, message_id)
    if item is None:
        raise NotFound(f"no message {message_id}", location="message_id")
    return jsonify(item)
