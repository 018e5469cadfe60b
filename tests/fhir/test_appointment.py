"""Appointment over FHIR R4 on the core's appointments (the ones SIU S12-S15 make)."""

from __future__ import annotations

import datetime as dt

import pytest

from app.db import unit_of_work
from app.models import Appointment, AppointmentStatus
from tests.fhir.conftest import fixture, matches, outcome

SIU = (
    "MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||SIU^S12|SIU-9|P|2.3\r"
    "SCH|PL-APT-9|FI-APT-9||||||||30|min|^^30^20261210093000\r"
    "PID|||SIUPAT^^^HOSP||SIU^SAM||19700101|M\r"
).encode("ascii")


@pytest.fixture
def order(fhir, patient) -> dict:
    return fhir.create(fixture("servicerequest_mr_knee.json", patient=patient["id"]))


def booked(patient: dict, **extra) -> dict:
    return {"resourceType": "Appointment", "status": "booked", "identifier": [{"value": "APT-1"}],
            "start": "2026-12-10T08:00:00Z", "end": "2026-12-10T08:30:00Z",
            "participant": [{"actor": {"reference": f"Patient/{patient['id']}"}, "status": "accepted"},
                            {"actor": {"reference": "Practitioner/7", "display": "Dr Ada Radiologist"},
                             "status": "accepted"},
                            {"actor": {"reference": "Location/3", "display": "MR room 2"}, "status": "accepted"}],
            **extra}


def stored(session_factory, aid: str) -> Appointment:
    with unit_of_work(session_factory) as session:
        return session.get(Appointment, int(aid))


def test_create_read_and_search(fhir, patient, order, session_factory):
    created = fhir.create(booked(patient, basedOn=[{"reference": f"ServiceRequest/{order['id']}"}]))
    row = stored(session_factory, created["id"])
    # 08:00Z is 09:00 in Europe/Berlin (CET in December)
    assert (row.status, row.start, row.duration_minutes) == (AppointmentStatus.BOOKED, dt.datetime(2026, 12, 10, 9), 30)
    assert (row.resource, row.location, row.order_fk, row.placer_appointment_id) == \
        ("Dr Ada Radiologist", "MR room 2", int(order["id"]), "APT-1")
    assert row.filler_appointment_id == f"RIS-APT-{row.id}"
    assert created["start"] == "2026-12-10T09:00:00+01:00" and created["minutesDuration"] == 30
    assert created["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    assert fhir.get(f"/fhir/Appointment/{created['id']}").json == created
    for query in (f"patient=Patient/{patient['id']}", "status=booked", "date=2026-12-10",
                  "date=ge2026-12-10T08:59:00%2B01:00", f"based-on=ServiceRequest/{order['id']}", "identifier=APT-1"):
        assert [a["id"] for a in matches(fhir.search(f"/fhir/Appointment?{query}"))] == [created["id"]], query
    for query in ("status=proposed", "date=2026-12-11", "based-on=ServiceRequest/999999", "patient=Patient/999999"):
        assert matches(fhir.search(f"/fhir/Appointment?{query}")) == [], query
    revinc = fhir.search(f"/fhir/ServiceRequest?_id={order['id']}&_revinclude=Appointment:based-on")
    assert [e["resource"]["resourceType"] for e in revinc["entry"]] == ["ServiceRequest", "Appointment"]


def test_cancel_with_status_cancelled(fhir, patient, session_factory):
    created = fhir.create(booked(patient))
    changed = dict(created, status="cancelled")
    response = fhir.put(f"/fhir/Appointment/{created['id']}", changed)
    assert response.status_code == 200 and response.json["status"] == "cancelled"
    assert stored(session_factory, created["id"]).status is AppointmentStatus.CANCELLED
    assert matches(fhir.search("/fhir/Appointment?status=cancelled"))[0]["id"] == created["id"]


def test_proposed_keeps_no_time_and_bad_input_is_refused(fhir, patient, session_factory):
    proposed = booked(patient, status="proposed", identifier=[{"value": "APT-P"}],
                      requestedPeriod=[{"start": "2026-12-01", "end": "2026-12-09"}])
    del proposed["start"], proposed["end"]
    created = fhir.create(proposed)
    assert created["status"] == "proposed" and "start" not in created
    assert stored(session_factory, created["id"]).start is None
    before = fhir.search("/fhir/Appointment")["total"]
    cases = [
        (dict(booked(patient), identifier=[{"value": "APT-2"}], start=None, end=None), 422, "Appointment.start"),
        (dict(booked(patient), identifier=[{"value": "APT-3"}], status="fulfilled"), 422, "Appointment.status"),
        (dict(booked(patient), identifier=[{"value": "APT-4"}], basedOn=[{"reference": "ServiceRequest/999999"}]),
         422, "Appointment.basedOn[0]"),
        (dict(booked(patient), identifier=[{"value": "APT-5"}],
              participant=[{"actor": {"reference": "Patient/999999"}, "status": "accepted"}]),
         422, "Appointment.participant[0].actor"),
    ]
    for body, status, where in cases:
        response = fhir.post("/fhir/Appointment", {k: v for k, v in body.items() if v is not None})
        assert response.status_code == status and outcome(response)["expression"] == [where], response.json
    duplicate = fhir.post("/fhir/Appointment", dict(booked(patient), identifier=[{"value": "APT-1"}]))
    assert duplicate.status_code == 201
    again = fhir.post("/fhir/Appointment", dict(booked(patient), identifier=[{"value": "APT-1"}]))
    assert again.status_code == 409
    assert fhir.search("/fhir/Appointment")["total"] == before + 1


def test_an_siu_appointment_is_readable_and_cancellable_over_fhir(fhir, intake, session_factory):
    ack = intake.handle(SIU)
    assert b"MSA|AA" in ack, ack
    [found] = matches(fhir.search("/fhir/Appointment?identifier=FI-APT-9"))
    assert found["status"] == "booked" and found["identifier"][0]["value"] == "PL-APT-9"
    response = fhir.put(f"/fhir/Appointment/{found['id']}", dict(found, status="cancelled"))
    assert response.status_code == 200
    with unit_of_work(session_factory) as session:
        assert session.query(Appointment).count() == 1
        assert session.get(Appointment, int(found["id"])).status is AppointmentStatus.CANCELLED


def test_if_match_on_an_appointment_is_refused_not_ignored(fhir, patient, session_factory):
    """Appointments are not versioned (no ETag): an If-Match cannot be checked, so the update is refused (412)
    instead of applied unchecked; without If-Match (or with '*') it applies."""
    created = fhir.create(booked(patient))
    assert "ETag" not in fhir.get(f"/fhir/Appointment/{created['id']}").headers
    moved = dict(created, start="2026-12-11T08:00:00Z", end="2026-12-11T08:30:00Z")
    refused = fhir.put(f"/fhir/Appointment/{created['id']}", moved, headers={"If-Match": 'W/"1"'})
    assert refused.status_code == 412 and outcome(refused)["expression"] == ["If-Match"]
    assert "not versioned" in outcome(refused)["diagnostics"]
    assert stored(session_factory, created["id"]).start == dt.datetime(2026, 12, 10, 9)
    applied = fhir.put(f"/fhir/Appointment/{created['id']}", moved, headers={"If-Match": "*"})
    assert applied.status_code == 200
    assert stored(session_factory, created["id"]).start == dt.datetime(2026, 12, 11, 9)
