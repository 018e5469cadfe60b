"""Scheduling through the JSON API (issue 7): resources from the API, a room's day, booking, rescheduling and
cancelling with conflict checks; appointments from the HIS (SIU S12-S15 over the HL7 intake, FHIR Appointment) move
the order's step, book our room when they name it, and are refused when the room is taken."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from sqlalchemy import select

from app.db import unit_of_work
from app.models import Appointment, AppointmentStatus, ProcedureStep, Role
from tests.web.conftest import csrf_of, order_message

DAY = dt.date(2026, 12, 7)     # a Monday
CT1 = {"ae_title": "CT_ROOM1", "station_name": "CT1", "modalities": ["CT"],
       "opening_hours": {"mon": [["08:00", "12:00"], ["13:00", "17:00"]]}, "default_minutes": 15,
       "slot_minutes": {"CTCH": 30}}


@pytest.fixture
def web_settings(settings):
    return dataclasses.replace(settings, auth_required=True)


def _api(client, method: str, path: str, **kwargs):
    return client.open(path, method=method, headers={"X-CSRF-Token": csrf_of(client.get("/board").text)}, **kwargs)


@pytest.fixture
def scheduler(client_as):
    client = client_as(Role.SCHEDULER)
    assert _api(client, "PUT", "/api/resources/CT1", json=CT1).status_code == 200
    return client


def _siu(event: str, control_id: str, start: str, *, resource: str = "CT1", placer: str = "WEB-ACC-PL",
         appointment: str = "APT-1") -> bytes:
    return (f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||SIU^{event}|{control_id}|P|2.5.1\r"
            f"SCH|{appointment}|F-{appointment}|||||||30|min|^^30^{start}|{'|' * 14}{placer}^HIS\r"   # SCH-26
            "PID|||WEB-PAT^^^HOSP||WEBTEST^WILMA||19700101|F\r"
            f"AIL|1||{resource}|||{start}\r").encode()


def test_resources_are_saved_listed_and_refused_with_the_key_named(scheduler, client_as):
    listed = scheduler.get("/api/resources").json
    assert listed["count"] == 1 and listed["resources"][0]["opening_hours"] == CT1["opening_hours"]
    bad = _api(scheduler, "PUT", "/api/resources/CT2", json={**CT1, "modalities": ["XX"]})
    assert bad.status_code == 400 and "'XX' is not a DICOM modality" in bad.json["detail"]
    hours = _api(scheduler, "PUT", "/api/resources/CT2", json={**CT1, "opening_hours": {"mon": [["12:00", "08:00"]]}})
    assert hours.status_code == 400 and hours.json["location"] == "resource.opening_hours.mon"
    unknown = _api(scheduler, "PUT", "/api/resources/CT2", json={**CT1, "colour": "blue"})
    assert unknown.status_code == 400 and "unknown key 'colour'" in unknown.json["detail"]
    assert _api(client_as(Role.TECHNOLOGIST), "PUT", "/api/resources/CT2", json=CT1).status_code == 403
    assert scheduler.get("/api/resources/CT9").status_code == 404


def test_book_reschedule_and_cancel_with_conflicts_named(scheduler, intake, session_factory):
    intake.handle(order_message(start="20261207083000"))
    intake.handle(order_message("WEB-2", "WEB-ACC2", "OTHER^OTTO", "WEB-PAT2", "20261207090000"))
    first = _api(scheduler, "POST", "/api/appointments",
                 json={"sps_id": "WEB-ACC-SPS", "resource": "CT1", "start": "2026-12-07T09:00"})
    assert first.status_code == 201
    assert (first.json["start"], first.json["end"], first.json["step"]["sps_id"]) == (
        "2026-12-07T09:00:00", "2026-12-07T09:30:00", "WEB-ACC-SPS")     # CTCH: 30 minutes on CT1
    clash = _api(scheduler, "POST", "/api/appointments",
                 json={"sps_id": "WEB-ACC2-SPS", "resource": "CT1", "start": "2026-12-07T09:15"})
    assert clash.status_code == 409
    assert clash.json["detail"] == ("resource CT1 is taken from 2026-12-07 09:15 to 09:45: booking 1 (order WEB-ACC) "
                                    "on CT1 from 2026-12-07 09:00 to 09:30")
    closed = _api(scheduler, "POST", "/api/appointments",
                  json={"sps_id": "WEB-ACC2-SPS", "resource": "CT1", "start": "2026-12-07T12:00"})
    assert closed.status_code == 409 and "(open mon 08:00-12:00, 13:00-17:00)" in closed.json["detail"]
    second = _api(scheduler, "POST", "/api/appointments",
                  json={"sps_id": "WEB-ACC2-SPS", "resource": "CT1", "start": "2026-12-07T09:30"})
    assert second.status_code == 201
    moved = _api(scheduler, "POST", "/api/appointments/1/reschedule", json={"start": "2026-12-07T09:30"})
    assert moved.status_code == 409 and "booking 2 (order WEB-ACC2)" in moved.json["detail"]
    moved = _api(scheduler, "POST", "/api/appointments/1/reschedule", json={"start": "2026-12-07T13:00"})
    assert moved.status_code == 200 and moved.json["start"] == "2026-12-07T13:00:00"
    day = scheduler.get("/api/resources/CT1/day?date=2026-12-07").json
    assert [(b["id"], b["start"][11:16], b["order"]["accession_number"]) for b in day["bookings"]] == [
        (2, "09:30", "WEB-ACC2"), (1, "13:00", "WEB-ACC")]
    assert day["free"] == [["2026-12-07T08:00:00", "2026-12-07T09:30:00"], ["2026-12-07T10:00:00",
                           "2026-12-07T12:00:00"], ["2026-12-07T13:30:00", "2026-12-07T17:00:00"]]
    assert day["open"] == [["2026-12-07T08:00:00", "2026-12-07T12:00:00"],
                           ["2026-12-07T13:00:00", "2026-12-07T17:00:00"]]
    cancelled = _api(scheduler, "POST", "/api/appointments/1/cancel")
    assert cancelled.status_code == 200 and cancelled.json["status"] == "CANCELLED"
    assert (cancelled.json["step"]["status"], cancelled.json["procedure"]["state"]) == ("UNSCHEDULED", "ORDERED")
    again = _api(scheduler, "POST", "/api/appointments/1/cancel")
    assert again.status_code == 409 and "booking 1 is CANCELLED" in again.json["detail"]
    rebooked = _api(scheduler, "POST", "/api/appointments", json={"sps_id": "WEB-ACC-SPS", "resource": "CT1"})
    assert rebooked.status_code == 201 and rebooked.json["procedure"]["state"] == "SCHEDULED"
    assert scheduler.get("/api/resources/CT1/day?date=31.12.2026").status_code == 400
    assert scheduler.get("/api/resources/CT1/day").json["location"] == "date"
    offset = _api(scheduler, "POST", "/api/appointments/2/reschedule", json={"start": "2026-12-07T13:00+01:00"})
    assert offset.status_code == 400 and "site's clock" in offset.json["detail"]


def test_siu_appointments_move_the_step_and_book_our_room(scheduler, intake, session_factory):
    intake.handle(order_message(start="20261207083000"))
    assert b"MSA|AA|S12-1" in intake.handle(_siu("S12", "S12-1", "20261207100000"))
    with unit_of_work(session_factory) as db:
        step = db.scalars(select(ProcedureStep)).one()
        assert (step.scheduled_start, step.station_aets) == (dt.datetime(2026, 12, 7, 10), ["CT_ROOM1"])
        booking = db.scalars(select(Appointment)).one()
        assert (booking.resource_fk is not None, booking.step_fk, booking.end) == (True, step.id,
                                                                                   dt.datetime(2026, 12, 7, 10, 30))
    intake.handle(order_message("WEB-2", "WEB-ACC2", "OTHER^OTTO", "WEB-PAT2", "20261207090000"))
    taken = intake.handle(_siu("S12", "S12-2", "20261207101500", placer="WEB-ACC2-PL", appointment="APT-2"))
    assert b"MSA|AE|S12-2" in taken and b"resource CT1 is taken from 2026-12-07 10:15" in taken
    assert b"MSA|AA|S14-1" in intake.handle(_siu("S14", "S14-1", "20261207140000"))
    day = scheduler.get("/api/resources/CT1/day?date=2026-12-07").json
    assert [(b["start"][11:16], b["placer_appointment_id"]) for b in day["bookings"]] == [("14:00", "APT-1")]
    assert b"MSA|AA|S15-1" in intake.handle(_siu("S15", "S15-1", "20261207140000"))
    order = scheduler.get("/api/orders/1").json
    assert order["procedures"][0]["state"] == "ORDERED"
    assert order["procedures"][0]["steps"][0]["status"] == "UNSCHEDULED"
    assert order["procedures"][0]["history"][-1]["note"] == "appointment F-APT-1 cancelled"
    assert scheduler.get("/api/resources/CT1/day?date=2026-12-07").json["bookings"] == []


def test_a_fhir_appointment_for_our_room_is_a_booking_with_the_same_checks(scheduler, intake, session_factory):
    intake.handle(order_message(start="20261207083000"))
    intake.handle(order_message("WEB-2", "WEB-ACC2", "OTHER^OTTO", "WEB-PAT2", "20261207090000"))
    headers = {"X-CSRF-Token": csrf_of(scheduler.get("/board").text), "Content-Type": "application/fhir+json"}

    def appointment(order_id: int, start: str, ident: str) -> dict:
        return {"resourceType": "Appointment", "status": "booked", "identifier": [{"value": ident}],
                "start": start, "minutesDuration": 20, "basedOn": [{"reference": f"ServiceRequest/{order_id}"}],
                "participant": [{"actor": {"reference": "Location/1", "display": "CT1"}, "status": "accepted"}]}

    made = scheduler.post("/fhir/Appointment", json=appointment(1, "2026-12-07T10:00:00+01:00", "F-1"),
                          headers=headers)
    assert made.status_code == 201, made.json
    with unit_of_work(session_factory) as db:
        step = db.scalars(select(ProcedureStep).order_by(ProcedureStep.id)).first()
        assert step.scheduled_start == dt.datetime(2026, 12, 7, 10) and step.station_aets == ["CT_ROOM1"]
        assert db.scalars(select(Appointment.status)).all() == [AppointmentStatus.BOOKED]
    clash = scheduler.post("/fhir/Appointment", json=appointment(2, "2026-12-07T10:10:00+01:00", "F-2"),
                           headers=headers)
    assert clash.status_code == 409 and "resource CT1 is taken" in str(clash.json)
    with unit_of_work(session_factory) as db:
        assert len(db.scalars(select(Appointment)).all()) == 1            # nothing of the refused one is kept
