"""JSON API of scheduling (issue 7): resources, a room's day, booking, rescheduling and cancelling.

GET  /api/resources                                   every resource (rooms, modalities)
GET  /api/resources/<name>
PUT  /api/resources/<name>     {ae_title, station_name, modalities, opening_hours, default_minutes, slot_minutes,
                                active}               create or replace (the keys of mappings/resources.py)
GET  /api/resources/<name>/day?date=YYYY-MM-DD        opening hours, bookings, free intervals (site-local times)
POST /api/appointments         {"step_id": 7} or {"sps_id": "...", "accession": "..."}, optional "resource" and
                               "start" (YYYY-MM-DDTHH:MM, site time): book; without "start" the next free slot
GET  /api/appointments/<id>
POST /api/appointments/<id>/reschedule   {"start": ..., "resource": optional}
POST /api/appointments/<id>/cancel

Changes need the role "schedule" (app.services.auth). A clash or a closed room is 409 naming the booking in the
way or the opening hours; a bad value is 400 naming the key.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import NotFound as HTTPNotFound

from app.errors import InvalidInput
from app.models import Appointment, Resource
from app.services import scheduling
from interfaces import inputs
from interfaces.http.actions import acting, body, reader, text_field, writer
from mappings.resources import ResourceFileError, resource_data

scheduling_api = Blueprint("scheduling_api", __name__)


@scheduling_api.get("/api/resources")
def list_resources():
    with reader() as session:
        items = [scheduling.resource_view(r) for r in session.query(Resource).order_by(Resource.name)]
    return jsonify(resources=items, count=len(items))


@scheduling_api.get("/api/resources/<name>")
def show_resource(name: str):
    with reader() as session:
        return jsonify(scheduling.resource_view(scheduling.find_resource(session, name)))


@scheduling_api.put("/api/resources/<name>")
def save_resource(name: str):
    acting("schedule")
    data = body()
    if data.get("name", name) != name:
        raise InvalidInput(f"the body names resource {data.get('name')!r}, the path {name!r}", location="name")
    try:
        definition = resource_data({**data, "name": name}, "the body")
    except ResourceFileError as exc:
        raise InvalidInput(str(exc), location="body") from None
    with writer() as session:
        view = scheduling.resource_view(scheduling.save_resource(session, definition))
    return jsonify(view)


@scheduling_api.get("/api/resources/<name>/day")
def room_day(name: str):
    raw = request.args.get("date", "").strip()
    if not raw:
        raise InvalidInput("date missing: /api/resources/<name>/day?date=YYYY-MM-DD", location="date", missing=True)
    day = inputs.day(raw, "date")
    with reader() as session:
        return jsonify(scheduling.room_day(session, scheduling.find_resource(session, name), day))


def _start(data: dict, *, required: bool):
    raw = data.get("start")
    if raw is None and not required:
        return None
    if not isinstance(raw, str):
        raise InvalidInput("start must be a site-local time YYYY-MM-DDTHH:MM", location="start", missing=raw is None)
    return inputs.site_time(raw, "start")


@scheduling_api.post("/api/appointments")
def book():
    actor, data = acting("schedule"), body()
    step_id = data.get("step_id")
    with writer() as session:
        step = scheduling.find_step(session, step_id=inputs.record_id(step_id, "step_id") if step_id is not None
                                    else None, sps_id=text_field(data, "sps_id", required=False),
                                    accession=text_field(data, "accession", required=False))
        name = text_field(data, "resource", required=False)
        resource = scheduling.find_resource(session, name) if name else None
        start = _start(data, required=False)
        if start is None:
            booking = scheduling.book_next_free(session, step, actor.cause, resource=resource)
        else:
            if resource is None:
                raise InvalidInput("a booking at a given start needs the resource", location="resource", missing=True)
            booking = scheduling.book(session, step, resource, start, actor.cause)
        view = scheduling.booking_view(booking)
    return jsonify(view), 201


@scheduling_api.get("/api/appointments/<int:appointment_id>")
def show_booking(appointment_id: int):
    with reader() as session:
        booking = session.get(Appointment, appointment_id)
        if booking is None:
            raise HTTPNotFound(f"no appointment {appointment_id}")
        return jsonify(scheduling.booking_view(booking))


@scheduling_api.post("/api/appointments/<int:appointment_id>/reschedule")
def reschedule(appointment_id: int):
    actor, data = acting("schedule"), body()
    with writer() as session:
        booking = scheduling.reschedule(session, appointment_id, _start(data, required=True), actor.cause,
                                        resource_name=text_field(data, "resource", required=False))
        view = scheduling.booking_view(booking)
    return jsonify(view)


@scheduling_api.post("/api/appointments/<int:appointment_id>/cancel")
def cancel(appointment_id: int):
    actor = acting("schedule")
    body()
    with writer() as session:
        view = scheduling.booking_view(scheduling.cancel_booking(session, appointment_id, actor.cause))
    return jsonify(view)
