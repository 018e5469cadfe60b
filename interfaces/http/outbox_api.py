"""JSON API of the outbox: what the engine sends, to whom, and what became of it; manual retry of dead letters.

GET  /api/outbox?status=DEAD&destination=his&order_id=7&limit=100   newest first
GET  /api/outbox/<id>                                               with payload, content sent and the reply
POST /api/outbox/<id>/retry                                         DEAD or FAILED -> PENDING (409 otherwise)
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from app.db import unit_of_work
from app.errors import NotFound
from app.models import OutboxStatus
from app.queries import outbox as views
from app.services import outbox
from interfaces.http.api import _choice, _limit
from interfaces.inputs import record_id

outbox_api = Blueprint("outbox_api", __name__)


def _order_id() -> int | None:
    raw = request.args.get("order_id", "").strip()
    if not raw:
        return None
    return record_id(raw, "order_id")


@outbox_api.get("/api/outbox")
def list_outbox():
    with unit_of_work(current_app.extensions["ris.read_sessions"]) as session:
        items = views.search_outbox(session, status=_choice("status", OutboxStatus),
                                    destination=request.args.get("destination", "").strip(),
                                    order_id=_order_id(), limit=_limit())
    return jsonify(messages=items, count=len(items))


@outbox_api.get("/api/outbox/<int:row_id>")
def show_outbox(row_id: int):
    with unit_of_work(current_app.extensions["ris.read_sessions"]) as session:
        item = views.get_outbox(session, row_id)
    if item is None:
        raise NotFound(f"no outbox message {row_id}", location="outbox_id")
    return jsonify(item)


@outbox_api.post("/api/outbox/<int:row_id>/retry")
def retry_outbox(row_id: int):
    with unit_of_work(current_app.extensions["ris.sessions"]) as session:
        row = outbox.retry(session, row_id)
        item = views.outbox_view(row)
    return jsonify(item)
