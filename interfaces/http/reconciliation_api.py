"""JSON API of reconciliation (app.queries.reconciliation, app.services.reconciliation): what the archive could
not link, ranked candidates with their reasons, and the manual link / unlink, each recorded in the audit trail.

GET  /api/reconciliation/studies?status=UNMATCHED|AMBIGUOUS&limit=100   waiting studies with candidate orders
GET  /api/reconciliation/studies/<study uid>                           one study with its candidates
POST /api/reconciliation/studies/<study uid>/link     {"order_id": 7 | "accession_number": "A1",
                                                      "requested_procedure_id": "...", "reason": "..."}
POST /api/reconciliation/studies/<study uid>/unlink   {"reason": "..."}
GET  /api/reconciliation/orders?limit=100             performed without images, scheduled with candidates,
                                                      several studies
GET  /api/reconciliation/performed-steps?limit=100    MPPS that named no scheduled step, with candidate steps
POST /api/reconciliation/performed-steps/<sop uid>/link  {"step_id": 3 | "sps_id": "S1", "accession_number": "A1",
                                                         "reason": "..."}
"""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request
from sqlalchemy import select

from app.db import unit_of_work
from app.errors import InvalidInput, NotFound
from app.models import LinkStatus, Study
from app.queries import reconciliation as views
from app.services import reconciliation
from interfaces.http.api import _choice, _limit

reconciliation_api = Blueprint("reconciliation_api", __name__)


def _window() -> float:
    return current_app.config["RIS_SETTINGS"].reconciliation_window_hours


def _reader():
    return unit_of_work(current_app.extensions["ris.read_sessions"])


def _writer():
    return unit_of_work(current_app.extensions["ris.sessions"])


def _actor() -> reconciliation.Actor:
    user = g.get("user")
    return reconciliation.Actor(username=getattr(user, "username", "") or "", role=getattr(user, "role", "") or "",
                                source=request.remote_addr or "", channel="api")


def _body() -> dict:
    body = request.get_json(silent=True)
    if body is None and not request.data:
        return {}
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", location="body")
    return body


def _text(body: dict, name: str) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be text", location=name)
    return value.strip()


def _number(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput(f"{name} must be a whole number from 1", location=name)
    return value


@reconciliation_api.get("/api/reconciliation/studies")
def list_studies():
    status = _choice("status", LinkStatus)
    if status == LinkStatus.LINKED.value:
        raise InvalidInput("status=LINKED: only UNMATCHED or AMBIGUOUS studies wait for reconciliation",
                           location="status")
    with _reader() as session:
        items = views.unmatched_studies(session, status=status, limit=_limit(), window_hours=_window())
    return jsonify(studies=items, count=len(items))


@reconciliation_api.get("/api/reconciliation/studies/<study_uid>")
def show_study(study_uid: str):
    with _reader() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:
            raise NotFound(f"no archived study {study_uid}", location="study_instance_uid")
        item = {**views.study_summary(session, study),
                "candidates": [views.candidate_view(c) for c in views.study_candidates(session, study, _window())]}
    return jsonify(item)


@reconciliation_api.post("/api/reconciliation/studies/<study_uid>/link")
def link_study(study_uid: str):
    body = _body()
    with _writer() as session:
        study = reconciliation.link_study(session, study_uid, actor=_actor(), order_id=_number(body, "order_id"),
                                          accession=_text(body, "accession_number"),
                                          requested_procedure_id=_text(body, "requested_procedure_id"),
                                          reason=_text(body, "reason"))
        item = views.study_summary(session, study)
    return jsonify(item)


@reconciliation_api.post("/api/reconciliation/studies/<study_uid>/unlink")
def unlink_study(study_uid: str):
    body = _body()
    with _writer() as session:
        study = reconciliation.unlink_study(session, study_uid, actor=_actor(), reason=_text(body, "reason"))
        item = views.study_summary(session, study)
    return jsonify(item)


@reconciliation_api.get("/api/reconciliation/orders")
def list_orders():
    with _reader() as session:
        result = views.unmatched_orders(session, limit=_limit(), window_hours=_window())
    return jsonify(result)


@reconciliation_api.get("/api/reconciliation/performed-steps")
def list_performed_steps():
    with _reader() as session:
        items = views.unmatched_performed_steps(session, limit=_limit(), window_hours=_window())
    return jsonify(performed_steps=items, count=len(items))


@reconciliation_api.post("/api/reconciliation/performed-steps/<sop_uid>/link")
def link_performed_step(sop_uid: str):
    body = _body()
    with _writer() as session:
        performed = reconciliation.link_performed(session, sop_uid, actor=_actor(), step_id=_number(body, "step_id"),
                                                  sps_id=_text(body, "sps_id"),
                                                  accession=_text(body, "accession_number"),
                                                  reason=_text(body, "reason"))
        item = views.performed_view(performed)
    return jsonify(item)
