"""Reporting (issue 7): draft, sign preliminary and final, addendum and amendment, through the JSON API with the
radiologist's role; the procedure's lifecycle follows; invalid transitions are refused naming the current state and
change nothing; the ORU^R01 of every signature is in the outbox; the report shows on the order (API and page)."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import select

from app.commands import PerformedStepData
from app.db import unit_of_work
from app.models import OutboxMessage, ProcedureState, Report, ReportState, Role
from app.services import outbox, reports, tracking
from interfaces.hl7.tokenizer import parse
from interfaces.hl7.writer import Header, report_message
from tests.web.conftest import csrf_of, order_message

UID = "1.2.826.0.1.3680043.10.1356.8"


@pytest.fixture
def web_settings(settings):
    return dataclasses.replace(settings, auth_required=True)


@pytest.fixture
def routed(session_factory):
    outbox.route(session_factory, {reports.REPORT: ["his"]})
    return session_factory


def _api(client, method: str, path: str, **kwargs):
    return client.open(path, method=method, headers={"X-CSRF-Token": csrf_of(client.get("/board").text)}, **kwargs)


def _performed(session_factory) -> None:
    with unit_of_work(session_factory) as db:
        tracking.start_performed_step(db, PerformedStepData(sop_instance_uid=UID, status="IN PROGRESS",
                                                            sps_id="WEB-ACC-SPS", station_aet="CT_ROOM1"))
    with unit_of_work(session_factory) as db:
        tracking.update_performed_step(db, PerformedStepData(sop_instance_uid=UID, status="COMPLETED"))


def _state(session_factory) -> tuple[str, list]:
    with unit_of_work(session_factory) as db:
        proc = tracking.find_procedure(db, 1)
        return proc.state.value, [(r.id, r.kind, r.state.value, r.status) for r in
                                  db.scalars(select(Report).order_by(Report.id))]


def test_a_report_is_drafted_signed_added_to_and_amended(client_as, intake, routed):
    intake.handle(order_message())
    radiologist = client_as(Role.RADIOLOGIST)
    early = _api(radiologist, "POST", "/api/procedures/1/reports", json={"text": "too early"})
    assert early.status_code == 409 and "is SCHEDULED; cannot write its report" in early.json["detail"]
    _performed(routed)

    draft = _api(radiologist, "POST", "/api/procedures/1/reports", json={"text": "No acute findings."})
    assert draft.status_code == 201
    assert (draft.json["state"], draft.json["kind"], draft.json["author"]) == ("DRAFT", "report", "radiologist-user")
    second = _api(radiologist, "POST", "/api/procedures/1/reports", json={"text": "another"})
    assert second.status_code == 409 and "already has report 1 (DRAFT)" in second.json["detail"]
    edited = _api(radiologist, "PUT", "/api/reports/1", json={"text": "No acute findings.\nLungs clear."})
    assert edited.json["text"] == "No acute findings.\nLungs clear."

    preliminary = _api(radiologist, "POST", "/api/reports/1/sign", json={"preliminary": True}).json
    assert (preliminary["state"], preliminary["status"], preliminary["signed_by"]) == ("PRELIMINARY", "P",
                                                                                     "radiologist-user")
    assert _state(routed)[0] == "PRELIMINARY"
    twice = _api(radiologist, "POST", "/api/reports/1/sign", json={"preliminary": True})
    assert twice.status_code == 409 and twice.json["detail"] == ("report 1 is PRELIMINARY; cannot sign it "
                                                                 "preliminary again")
    final = _api(radiologist, "POST", "/api/reports/1/sign").json
    assert (final["state"], final["status"]) == ("FINAL", "F") and _state(routed)[0] == "FINAL"
    again = _api(radiologist, "POST", "/api/reports/1/sign")
    assert again.status_code == 409 and again.json["detail"] == "report 1 is FINAL; cannot sign it final again"
    changed = _api(radiologist, "PUT", "/api/reports/1", json={"text": "changed"})
    assert changed.status_code == 409 and "is FINAL; its text can no longer change" in changed.json["detail"]

    addendum = _api(radiologist, "POST", "/api/reports/1/addenda", json={"text": "Compared with prior: stable."})
    assert addendum.status_code == 201 and (addendum.json["kind"], addendum.json["parent_id"]) == ("addendum", 1)
    assert _api(radiologist, "POST", "/api/reports/2/sign").json["status"] == "C"
    amendment = _api(radiologist, "POST", "/api/reports/1/amendments", json={"text": "Small nodule, right lung."})
    assert amendment.status_code == 201
    prelim = _api(radiologist, "POST", "/api/reports/3/sign", json={"preliminary": True})
    assert prelim.status_code == 409 and "signed final, not preliminary" in prelim.json["detail"]
    assert _api(radiologist, "POST", "/api/reports/3/sign").json["state"] == "FINAL"
    assert _state(routed) == ("FINAL", [(1, "report", "AMENDED", "F"), (2, "addendum", "FINAL", "C"),
                                        (3, "amendment", "FINAL", "C")])
    late = _api(radiologist, "POST", "/api/reports/1/amendments", json={"text": "x"})
    assert late.status_code == 409 and "report 1 is AMENDED; cannot amend it" in late.json["detail"]

    with unit_of_work(routed) as db:      # one ORU per signature, in order, with the result status sent
        sent = db.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
    assert [(r.kind, r.payload["result_status"], r.payload["report_id"]) for r in sent] == [
        ("report", "P", 1), ("report", "F", 1), ("report", "C", 2), ("report", "C", 3)]
    assert "Compared with prior: stable." in sent[2].payload["text"] and "Lungs clear." in sent[2].payload["text"]
    oru = parse(report_message(sent[1].payload, header=Header("RIS", "RAD", "HIS", "HOSP", "OUT1",
                                                             sent[1].created_at)))
    assert oru.raw("MSH", 9) == "ORU^R01^ORU_R01" and oru.value("OBR", 25) == "F" and oru.value("OBR", 18) == "WEB-ACC"
    assert [oru.value("OBX", 5)] == ["No acute findings."]          # the first OBX: line one

    order = radiologist.get("/api/orders/1").json
    assert [(r["id"], r["kind"], r["state"]) for r in order["reports"]] == [
        (1, "report", "AMENDED"), (2, "addendum", "FINAL"), (3, "amendment", "FINAL")]
    page = radiologist.get("/orders/1").text
    assert "Small nodule, right lung." in page and "Amendment 3" in page and "signed by radiologist-user" in page


def test_only_radiologists_write_reports_and_a_refusal_changes_nothing(client_as, intake, session_factory):
    intake.handle(order_message())
    _performed(session_factory)
    technologist = _api(client_as(Role.TECHNOLOGIST), "POST", "/api/procedures/1/reports", json={"text": "mine"})
    assert technologist.status_code == 403 and "may not report" in technologist.json["detail"]
    radiologist = client_as(Role.RADIOLOGIST)
    assert _api(radiologist, "POST", "/api/procedures/1/reports", json={"text": "  "}).status_code == 400
    assert _api(radiologist, "POST", "/api/procedures/1/reports", json=["x"]).status_code == 400
    assert _api(radiologist, "POST", "/api/procedures/1/reports", json={"text": "ok"}).status_code == 201
    with unit_of_work(session_factory) as db:     # cancelled under the radiologist's hands: signing is refused
        proc = tracking.find_procedure(db, 1)
        proc.state = ProcedureState.DISCONTINUED
    refused = _api(radiologist, "POST", "/api/reports/1/sign")
    assert refused.status_code == 409 and "is DISCONTINUED; cannot sign its report final" in refused.json["detail"]
    assert _state(session_factory) == ("DISCONTINUED", [(1, "report", "DRAFT", "")])
    assert radiologist.get("/api/reports/1").json["state"] == "DRAFT"
    assert radiologist.get("/api/reports/99").status_code == 404


def test_without_sign_in_the_open_api_needs_the_signers_name(app, intake, session_factory, web_settings):
    from interfaces.runtime import build_wsgi_app

    open_app = build_wsgi_app(dataclasses.replace(web_settings, auth_required=False),
                              session_factory, app.extensions["ris.read_sessions"])
    client = open_app.test_client()
    intake.handle(order_message())
    _performed(session_factory)
    nameless = client.post("/api/procedures/1/reports", json={"text": "x"})
    assert nameless.status_code == 400 and nameless.json["location"] == "report.author"
    made = client.post("/api/procedures/1/reports", json={"text": "x", "author": "dr-who"})
    assert made.status_code == 201 and made.json["author"] == "dr-who"
    signed = client.post("/api/reports/1/sign", json={"signed_by": "dr-who"}).json
    assert (signed["state"], signed["signed_by"]) == ("FINAL", "dr-who")
    with unit_of_work(session_factory) as db:
        assert db.get(Report, 1).state is ReportState.FINAL
        last = tracking.find_procedure(db, 1).transitions[-1]
        assert (last.cause_kind, last.cause_reference) == ("user", "anonymous")
