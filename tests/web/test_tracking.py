"""Tracking (issue 7) through the JSON API and the pages (issue 8 page 1): each requested procedure's state and its
history with time and cause (HL7 message, MPPS, user), and the actions people take (arrival, no-show, start,
completion) with the roles that may take them."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from sqlalchemy import select

from app.commands import PerformedStepData
from app.db import unit_of_work
from app.models import Appointment, AppointmentStatus, AuditEvent, Role
from app.services import scheduling, tracking
from tests.web.conftest import csrf_of, order_message

TODAY = dt.date.today()


@pytest.fixture
def web_settings(settings):
    return dataclasses.replace(settings, auth_required=True)


def _today(hour: int = 8) -> str:
    return f"{TODAY:%Y%m%d}{hour:02d}3000"


def _api(client, method: str, path: str, **kwargs):
    token = csrf_of(client.get("/board").text)
    return client.open(path, method=method, headers={"X-CSRF-Token": token}, **kwargs)


def _arrival(control_id: str = "A10-1") -> bytes:
    return (f"MSH|^~\\&|HIS|HOSP|RIS|RAD|{TODAY:%Y%m%d}080000||ADT^A10|{control_id}|P|2.3.1\r"
            f"EVN|A10|{TODAY:%Y%m%d}081500\rPID|||WEB-PAT^^^HOSP||WEBTEST^WILMA||19700101|F\rPV1|1|O\r").encode()


def test_the_order_answers_each_procedures_state_and_history_with_its_causes(client_as, intake, session_factory):
    intake.handle(order_message(start=_today()))
    intake.handle(_arrival())
    with unit_of_work(session_factory) as db:
        tracking.start_performed_step(db, PerformedStepData(sop_instance_uid="1.2.826.0.1.3680043.10.1356.7",
                                                            status="IN PROGRESS", sps_id="WEB-ACC-SPS",
                                                            station_aet="CT_ROOM1"))
    order = client_as(Role.TECHNOLOGIST).get("/api/orders/1").json
    [proc] = order["procedures"]
    assert proc["state"] == "IN_PROGRESS" and proc["id"] == 1
    moves = [(h["from"], h["to"], h["cause"]["kind"], h["cause"]["reference"]) for h in proc["history"]]
    assert moves == [(None, "ORDERED", "hl7", "WEB-1"), ("ORDERED", "SCHEDULED", "hl7", "WEB-1"),
                     ("SCHEDULED", "ARRIVED", "hl7", "A10-1"),
                     ("ARRIVED", "IN_PROGRESS", "mpps", "1.2.826.0.1.3680043.10.1356.7")]
    assert proc["history"][0]["cause"]["message_id"] == 1 and proc["history"][2]["cause"]["message_id"] == 2
    assert proc["history"][3]["cause"]["text"] == "MPPS 1.2.826.0.1.3680043.10.1356.7 from CT_ROOM1"
    assert proc["history"][2]["note"] == f"arrived {TODAY:%Y-%m-%d} 08:15"
    assert all(dt.datetime.fromisoformat(h["at"]) for h in proc["history"])
    assert order["reports"] == []


def test_people_arrive_start_and_complete_procedures_through_the_api(client_as, intake, session_factory):
    intake.handle(order_message(start=_today()))
    technologist = client_as(Role.TECHNOLOGIST)
    arrived = _api(technologist, "POST", "/api/procedures/1/arrive")
    assert arrived.status_code == 200 and arrived.json["procedures"][0]["state"] == "ARRIVED"
    assert arrived.json["procedures"][0]["steps"][0]["status"] == "ARRIVED"
    started = _api(technologist, "POST", "/api/procedures/1/start").json
    assert (started["status"], started["procedures"][0]["state"]) == ("IN_PROGRESS", "IN_PROGRESS")
    done = _api(technologist, "POST", "/api/procedures/1/complete").json
    assert (done["status"], done["procedures"][0]["state"]) == ("COMPLETED", "COMPLETED")
    last = done["procedures"][0]["history"][-1]
    assert (last["from"], last["to"], last["cause"]["kind"], last["cause"]["reference"], last["cause"]["sender"]) == (
        "IN_PROGRESS", "COMPLETED", "user", "technologist-user", "technologist via api")
    assert last["cause"]["text"] == "technologist-user (technologist via api)"
    again = _api(technologist, "POST", "/api/procedures/1/arrive")
    assert again.status_code == 409 and again.mimetype == "application/problem+json"
    assert "is COMPLETED; cannot mark the patient arrived" in again.json["detail"]
    with unit_of_work(session_factory) as db:
        assert db.query(AuditEvent).filter_by(action="change", entity="procedures").count() == 3


def test_roles_decide_who_may_take_which_action(client_as, intake):
    intake.handle(order_message(start=_today()))
    radiologist = _api(client_as(Role.RADIOLOGIST), "POST", "/api/procedures/1/arrive")
    assert radiologist.status_code == 403 and "may not arrive" in radiologist.json["detail"]
    scheduler = client_as(Role.SCHEDULER)
    assert _api(scheduler, "POST", "/api/procedures/1/start").status_code == 403
    assert _api(scheduler, "POST", "/api/procedures/1/arrive").status_code == 200
    assert _api(scheduler, "POST", "/api/procedures/1/fly").status_code == 404
    assert _api(scheduler, "POST", "/api/procedures/99/arrive").status_code == 404
    assert client_as(Role.SCHEDULER).post("/api/procedures/1/no-show").status_code == 403   # no CSRF header


def test_a_no_show_frees_the_booking_and_sends_the_procedure_back_to_ordered(client_as, intake, session_factory):
    with unit_of_work(session_factory) as db:
        scheduling.save_resource(db, scheduling.ResourceData(
            name="CT1", ae_title="CT_ROOM1", modalities=("CT",), opening_hours={d: [["00:00", "24:00"]]
                                                                                 for d in scheduling.WEEKDAYS}))
    intake.handle(order_message(start=_today()))
    with unit_of_work(session_factory) as db:
        booking = scheduling.book(db, tracking.find_procedure(db, 1).steps[0], scheduling.find_resource(db, "CT1"),
                                  dt.datetime.combine(TODAY, dt.time(8, 30)), tracking.Cause("test"))
        booking_id = booking.id
    answer = _api(client_as(Role.SCHEDULER), "POST", "/api/procedures/1/no-show").json
    assert answer["procedures"][0]["state"] == "ORDERED"
    assert answer["procedures"][0]["steps"][0]["status"] == "UNSCHEDULED"
    assert answer["procedures"][0]["history"][-1]["note"] == "no-show"
    with unit_of_work(session_factory) as db:
        assert db.get(Appointment, booking_id).status is AppointmentStatus.NOSHOW
    refused = _api(client_as(Role.SCHEDULER), "POST", "/api/procedures/1/no-show")
    assert refused.status_code == 409 and "is ORDERED; cannot mark it a no-show" in refused.json["detail"]


def test_the_board_offers_the_actions_the_role_allows_and_they_work(client_as, intake, session_factory):
    intake.handle(order_message(start=_today()))
    day = f"/board?date={TODAY.isoformat()}"
    radiologist = client_as(Role.RADIOLOGIST).get(day).text
    assert "WEB-ACC" in radiologist and "/board/procedures/1/" not in radiologist
    technologist = client_as(Role.TECHNOLOGIST)
    page = technologist.get(day).text
    for action in ("arrive", "no-show", "start"):
        assert f'action="/board/procedures/1/{action}"' in page
    assert 'action="/board/procedures/1/complete"' not in page       # not for a SCHEDULED procedure
    assert 'aria-label="Arrived: WEBTEST, WILMA, WEB-ACC"' in page
    moved = technologist.post("/board/procedures/1/arrive", data={"csrf_token": csrf_of(page), "next": day})
    assert moved.status_code == 302 and moved.headers["Location"] == day
    page = technologist.get(day).text
    assert 'class="status status-ARRIVED"' in page and 'action="/board/procedures/1/arrive"' not in page
    refused = technologist.post("/board/procedures/1/arrive", data={"csrf_token": csrf_of(page)})
    assert refused.status_code == 409 and "is ARRIVED; cannot mark the patient arrived" in refused.text
    scheduler = client_as(Role.SCHEDULER)
    assert scheduler.post("/board/procedures/1/start", data={"csrf_token": csrf_of(scheduler.get(day).text)}
                          ).status_code == 403                        # the role may not start it
    order_page = technologist.get("/orders/1").text
    assert "Status history" in order_page and "technologist-user (technologist via web)" in order_page
    assert 'class="status status-ARRIVED">ARRIVED' in order_page
    with unit_of_work(session_factory) as db:
        changes = db.scalars(select(AuditEvent.detail).where(AuditEvent.entity == "procedure",
                                                             AuditEvent.action == "change")).all()
    assert changes == ["arrive (order WEB-ACC)"]
