"""The pages: procedure board (with arrival, no-show, start and completion where the role allows), order (with
each procedure's status history and its reports), patient search and patient, message browser, audit log.

Each page reads through the core's read models (app.queries), records who saw which patient's data
(app.services.audit) and renders a template; analysts' actions call the services passed to create_app.
"""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

from flask import abort, current_app, g, redirect, render_template, request, url_for

from app.commands import Cause
from app.db import unit_of_work
from app.models import MessageStatus, StepStatus
from app.queries import board as board_views
from app.queries import orders as order_views
from app.queries import patients as patient_views
from app.queries import reports as report_views
from app.services import audit, auth, tracking
from interfaces.web import web
from interfaces.web.forms import Form
from interfaces.web.security import is_background, reader, record, requires, safe_next, sessions, settings

STEP_STATUSES = tuple(s.value for s in StepStatus)
MESSAGE_STATUSES = tuple(s.value for s in MessageStatus)


def _zone() -> ZoneInfo:
    return ZoneInfo(settings().site_timezone)


def _today() -> dt.date:
    return dt.datetime.now(_zone()).date()


# Procedure board -----------------------------------------------------------------------------
@web.get("/board")
@requires("board")
def board():
    form = Form(request.args, ("date", "modality", "station", "status"))
    day = form.date("date") or _today()
    if not form.values["date"]:
        form.values["date"] = day.isoformat()
    modality = form.text("modality", max_length=16)
    station = form.text("station", max_length=64)
    status = form.choice("status", StepStatus)
    rows, groups = [], {}
    with reader() as db:
        modalities = board_views.modalities(db)
        if form.ok:
            rows = board_views.day_steps(db, day, modality=modality, station=station, status=status)
    for row in rows:
        groups.setdefault((row["modality"], row["station"] or "no station"), []).append(row)
    if form.ok and not is_background():  # the page's own auto refresh is not a new view
        record("view", entity="board", entity_id=day.isoformat(),
               detail=f"{len(rows)} procedures; filters {json.dumps(form.values, ensure_ascii=False)}")
    return render_template("board.html", form=form, day=day, groups=groups, count=len(rows), modalities=modalities,
                           actions=BOARD_ACTIONS, here=request.full_path.rstrip("?"),
                           statuses=STEP_STATUSES, refreshed=dt.datetime.now(_zone()).strftime("%H:%M:%S"),
                           previous=(day - dt.timedelta(days=1)).isoformat(),
                           next=(day + dt.timedelta(days=1)).isoformat()), 200 if form.ok else 400


# What the board offers a person for a procedure in each state (app.services.tracking; permission = action name).
BOARD_ACTIONS = (("arrive", "Arrived", ("SCHEDULED",)), ("no-show", "No-show", ("SCHEDULED", "ARRIVED")),
                 ("start", "Start", ("ORDERED", "SCHEDULED", "ARRIVED")), ("complete", "Complete", ("IN_PROGRESS",)))
_TRACKING = {"arrive": tracking.arrive, "no-show": tracking.no_show, "start": tracking.start,
             "complete": tracking.complete}


@web.post("/board/procedures/<int:procedure_id>/<action>")
@requires("board")
def board_action(procedure_id: int, action: str):
    """Arrival, no-show, start or completion of one procedure from the board (the role must allow the action)."""
    if action not in _TRACKING:
        abort(404, f"There is no action {action!r}.")
    if not auth.may(g.user.role, action):
        record("denied", entity="procedure", entity_id=procedure_id, detail=action)
        abort(403)
    cause = Cause("user", reference=g.user.username, sender=f"{g.user.role} via web")
    with unit_of_work(sessions()) as db:
        proc = tracking.find_procedure(db, procedure_id)
        _TRACKING[action](db, proc, cause)
        patient_key, accession = proc.order.patient.patient_id, proc.order.accession_number
    record("change", entity="procedure", entity_id=procedure_id, patient_key=patient_key,
           detail=f"{action} (order {accession})")
    return redirect(safe_next(request.form.get("next", "")) if request.form.get("next") else url_for("web.board"))


# Order ---------------------------------------------------------------------------------------
@web.get("/orders/<int:order_id>")
@requires("patients")
def order(order_id: int):
    with reader() as db:
        item = order_views.get_order(db, order_id)
        if item is None:
            abort(404, f"There is no order {order_id}.")
        reports = report_views.order_reports(db, order_id)
        history = order_views.search_messages(db, accession=item["accession_number"], limit=50)
    zone = _zone()
    for proc in item["procedures"]:
        for moved in proc["history"]:
            at = dt.datetime.fromisoformat(moved["at"]).replace(tzinfo=dt.timezone.utc).astimezone(zone)
            moved["local_at"] = at.strftime("%Y-%m-%d %H:%M:%S")
    record("view", entity="order", entity_id=order_id, patient_key=item["patient"]["patient_id"],
           detail=f"accession {item['accession_number']}")
    return render_template("order.html", order=item, reports=reports, history=history, zone=settings().site_timezone)


# Patients ------------------------------------------------------------------------------------
@web.get("/patients")
@requires("patients")
def patients():
    form = Form(request.args, ("q",))
    results = None
    if "q" in request.args:
        text = form.text("q", required=True, min_length=2, max_length=64)
        if form.ok:
            with reader() as db:
                results = patient_views.search_patients(db, text)
            record("search", entity="patient", detail=f"q={text!r}: {len(results)} found")
    return render_template("patients.html", form=form, results=results), 200 if form.ok else 400


@web.get("/patients/<int:pk>")
@requires("patients")
def patient(pk: int):
    with reader() as db:
        item = patient_views.get_patient(db, pk)
    if item is None:
        abort(404, f"There is no patient {pk}.")
    record("view", entity="patient", entity_id=pk, patient_key=item["patient_id"])
    return render_template("patient.html", patient=item)


# Messages ------------------------------------------------------------------------------------
_MESSAGE_FIELDS = ("control_id", "patient_id", "accession", "type", "status", "since", "until")


@web.get("/messages")
@requires("messages")
def messages():
    form = Form(request.args, _MESSAGE_FIELDS)
    criteria = {"control_id": form.text("control_id", max_length=199), "patient_id": form.text("patient_id"),
                "accession": form.text("accession", max_length=16), "message_type": form.text("type", max_length=32),
                "status": form.choice("status", MessageStatus), "since": form.datetime("since", _zone()),
                "until": form.datetime("until", _zone())}
    form.check_order("since", "until", criteria["since"], criteria["until"])
    results = []
    if form.ok:
        with reader() as db:
            results = order_views.search_messages(db, limit=200, **criteria)
        record("search", entity="message", patient_key=criteria["patient_id"],
               detail=f"{len(results)} found; filters {json.dumps(form.values, ensure_ascii=False)}")
    return render_template("messages.html", form=form, results=results, statuses=MESSAGE_STATUSES), \
        200 if form.ok else 400


def _message_or_404(db, message_id: int) -> dict:
    item = order_views.get_message(db, message_id)
    if item is None:
        abort(404, f"There is no message {message_id}.")
    return item


def _fields(message_id: int) -> tuple[list[dict], str]:
    """The message's fields with their HL7 names, through the analysts' mapping test (commits nothing)."""
    service = current_app.extensions["ris.services"].get("test_mapping")
    if service is None:
        return [], "The field names are not available in this process."
    try:
        report = service(raw=None, message_id=message_id, profile_name=None)
    except Exception as exc:  # noqa: BLE001 - a message that cannot be read still has its page
        return [], f"The fields cannot be shown: {exc}"
    return report["fields"], report["parse_error"]


def _render_message(message_id: int, result=None, status: int = 200):
    with reader() as db:
        item = _message_or_404(db, message_id)
    fields, fields_error = _fields(message_id)
    return render_template("message.html", message=item, fields=fields, fields_error=fields_error,
                           segments=[s for s in item["raw"].replace("\n", "\r").split("\r") if s],
                           ack_segments=[s for s in (item["ack"] or "").replace("\n", "\r").split("\r") if s],
                           changes=json.dumps(item["changes"], indent=2, ensure_ascii=False),
                           result=result, status_code=status), status


@web.get("/messages/<int:message_id>")
@requires("messages")
def message(message_id: int):
    with reader() as db:
        item = _message_or_404(db, message_id)
    record("view", entity="message", entity_id=message_id, patient_key=item["patient_id"])
    return _render_message(message_id)


@web.post("/messages/<int:message_id>/reprocess")
@requires("reprocess")
def reprocess(message_id: int):
    mode = request.form.get("mode", "")
    if mode not in ("dry-run", "apply"):
        abort(400, "Choose 'Dry run' or 'Reprocess'.")
    with reader() as db:
        item = _message_or_404(db, message_id)
    service = current_app.extensions["ris.services"].get("reprocess_message")
    if service is None:
        abort(404, "Reprocessing is not available in this process.")
    dry_run = mode == "dry-run"
    result = service(message_id, dry_run=dry_run).as_dict()
    with reader() as db:  # the patient may be known only now that the message applied
        patient_key = _message_or_404(db, message_id)["patient_id"] or item["patient_id"]
    record("view" if dry_run else "change", entity="message", entity_id=message_id, patient_key=patient_key,
           detail=f"{'dry run of ' if dry_run else ''}reprocess: {result['status']} {result['ack_code']}")
    result["dry_run"] = dry_run
    result["changes_text"] = json.dumps(result["changes"], indent=2, ensure_ascii=False)
    return _render_message(message_id, result)


# Audit log -----------------------------------------------------------------------------------
@web.get("/admin/audit")
@requires("audit")
def audit_log():
    form = Form(request.args, ("username", "action", "patient_key", "since", "until"))
    criteria = {"username": form.text("username"), "action": form.choice("action", audit.ACTIONS),
                "patient_key": form.text("patient_key"), "since": form.datetime("since", _zone()),
                "until": form.datetime("until", _zone())}
    form.check_order("since", "until", criteria["since"], criteria["until"])
    events = []
    if form.ok:
        with reader() as db:
            events = audit.search(db, limit=500, **criteria)
    zone = _zone()
    for event in events:
        at = dt.datetime.fromisoformat(event["at"]).replace(tzinfo=dt.timezone.utc).astimezone(zone)
        event["local_at"] = at.strftime("%Y-%m-%d %H:%M:%S")
    return render_template("audit.html", form=form, events=events, actions=audit.ACTIONS,
                           zone=settings().site_timezone), 200 if form.ok else 400


@web.app_template_filter("person")
def person_name(value: str) -> str:
    """An HL7/DICOM person name (FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX) for people: 'FAMILY, GIVEN MIDDLE'."""
    parts = (value or "").split("^")
    family, rest = parts[0], " ".join(p for p in parts[1:3] if p)
    return f"{family}, {rest}" if family and rest else family or rest
