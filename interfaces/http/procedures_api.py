"""JSON API of the procedure lifecycle and of reports (issue 7: tracking, reporting).

POST /api/procedures/<id>/arrive | no-show | start | complete   what a person does (roles: app.services.auth)
POST /api/procedures/<id>/reports        {"text": ..., "author": ...}     a DRAFT report (radiologist)
GET  /api/reports/<id>
PUT  /api/reports/<id>                   {"text": ...}                    change a DRAFT
POST /api/reports/<id>/sign              {"preliminary": false}           sign: PRELIMINARY or FINAL; ORU^R01 out
POST /api/reports/<id>/addenda           {"text": ...}                    a DRAFT addendum to a FINAL report
POST /api/reports/<id>/amendments        {"text": ...}                    a DRAFT amendment of a FINAL report

A procedure action answers the order as GET /api/orders/<id> does (with each procedure's state and history); a
report action answers the report. A transition the lifecycle does not allow is 409 naming the current state.
``author`` / ``signed_by`` in a body are used only when nobody is signed in (RIS_AUTH_REQUIRED off).
"""

from __future__ import annotations

from flask import Blueprint, jsonify
from werkzeug.exceptions import NotFound as HTTPNotFound

from app.queries import orders as order_views
from app.queries import reports as report_views
from app.services import reports, tracking
from interfaces.http.actions import Actor, acting, body, flag, reader, text_field, writer

procedures_api = Blueprint("procedures_api", __name__)

ACTIONS = {"arrive": tracking.arrive, "no-show": tracking.no_show, "start": tracking.start,
           "complete": tracking.complete}


@procedures_api.post("/api/procedures/<int:procedure_id>/<action>")
def procedure_action(procedure_id: int, action: str):
    if action not in ACTIONS:
        raise HTTPNotFound(f"no procedure action {action!r} (actions: {', '.join(ACTIONS)}; reports: POST "
                           f"/api/procedures/{procedure_id}/reports)")
    actor = acting(action)
    with writer() as session:
        proc = tracking.find_procedure(session, procedure_id)
        ACTIONS[action](session, proc, actor.cause)
        order_id = proc.order_fk
    with reader() as session:
        return jsonify(order_views.get_order(session, order_id))


def _name(actor: Actor, data: dict, key: str) -> str:
    return actor.username or text_field(data, key, required=False)


@procedures_api.post("/api/procedures/<int:procedure_id>/reports")
def create_report(procedure_id: int):
    actor, data = acting("report"), body()
    with writer() as session:
        report = reports.create_report(session, procedure_id, text_field(data, "text"), _name(actor, data, "author"),
                                       actor.cause)
        view = report_views.report_view(report)
    return jsonify(view), 201


@procedures_api.get("/api/reports/<int:report_id>")
def show_report(report_id: int):
    with reader() as session:
        view = report_views.get_report(session, report_id)
    if view is None:
        raise HTTPNotFound(f"no report {report_id}")
    return jsonify(view)


@procedures_api.put("/api/reports/<int:report_id>")
def edit_report(report_id: int):
    actor, data = acting("report"), body()
    with writer() as session:
        report = reports.edit_draft(session, report_id, text_field(data, "text"), _name(actor, data, "author"))
        view = report_views.report_view(report)
    return jsonify(view)


@procedures_api.post("/api/reports/<int:report_id>/sign")
def sign_report(report_id: int):
    actor, data = acting("report"), body()
    with writer() as session:
        report = reports.sign(session, report_id, _name(actor, data, "signed_by"), actor.cause,
                              preliminary=flag(data, "preliminary"))
        view = report_views.report_view(report)
    return jsonify(view)


@procedures_api.post("/api/reports/<int:report_id>/<kind>")
def follow_up(report_id: int, kind: str):
    make = {"addenda": reports.add_addendum, "amendments": reports.amend}.get(kind)
    if make is None:
        raise HTTPNotFound(f"no report action {kind!r} (sign, addenda, amendments)")
    actor, data = acting("report"), body()
    with writer() as session:
        report = make(session, report_id, text_field(data, "text"), _name(actor, data, "author"), actor.cause)
        view = report_views.report_view(report)
    return jsonify(view), 201
