"""Raw input kept for FHIR (interfaces.fhir.inbound): every write request is an InboundMessage, stored with its
change (or, when refused or failed, after the rollback) and its answer; visible in GET /api/messages; never fed
to the HL7 intake."""

from __future__ import annotations

import datetime as dt
import json

from app.db import unit_of_work
from app.models import InboundMessage, MessageStatus
from interfaces.scheduler.jobs import recover_unfinished_messages
from tests.fhir.conftest import ACSN, fixture


def messages(app, **query) -> list[dict]:
    response = app.test_client().get("/api/messages", query_string=query)
    assert response.status_code == 200, response.json
    return response.json["messages"]


def test_create_is_stored_raw_with_its_answer(app, fhir, patient):
    body = {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "code": {"text": "CT head"},
            "subject": {"reference": f"Patient/{patient['id']}"},
            "identifier": [{"type": {"coding": [ACSN]}, "value": "RAW-1"}]}
    raw = json.dumps(body, indent=1).encode()
    created = fhir.post("/fhir/ServiceRequest", raw=raw, headers={"X-Request-Id": "req-77"})
    assert created.status_code == 201
    [row] = messages(app, type="FHIR ServiceRequest create")
    assert (row["transport"], row["status"], row["ack_code"], row["control_id"], row["accession_number"]) == \
        ("fhir", "PROCESSED", "AA", "req-77", "RAW-1")
    full = app.test_client().get(f"/api/messages/{row['id']}").json
    assert full["raw"].encode() == raw                       # the body bytes, as received
    assert json.loads(full["ack"])["id"] == created.json["id"]  # what was answered
    assert full["changes"] == [{"http_status": 201, "resource": f"ServiceRequest/{created.json['id']}"}]
    [pat] = messages(app, type="FHIR Patient create")
    assert pat["status"] == "PROCESSED" and pat["control_id"] == "POST /fhir/Patient" and pat["patient_id"]
    assert messages(app, type="FHIR ServiceRequest search") == []   # reads are not messages


def test_failures_are_stored_as_error_or_rejected_with_the_operation_outcome(app, fhir, patient):
    fhir.post("/fhir/ServiceRequest", raw=b"{not json")
    fhir.post("/fhir/ServiceRequest", {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                                       "code": {"text": "lipids"}, "subject": {"reference": f"Patient/{patient['id']}"}})
    stale = dict(fixture("patient_doe.json"), id=patient["id"])
    assert fhir.put(f"/fhir/Patient/{patient['id']}", stale, headers={"If-Match": 'W/"99"'}).status_code == 412
    assert fhir.call("DELETE", "/fhir/Task/1").status_code == 405
    rows = {r["message_type"]: r for r in messages(app)}
    create = [r for r in messages(app, type="FHIR ServiceRequest create")]
    assert sorted((r["status"], r["ack_code"]) for r in create) == [("ERROR", "AE"), ("REJECTED", "AR")]
    assert any(r["error"].startswith("HTTP 400: malformed JSON") for r in create)
    assert any(r["error"].startswith("HTTP 422:") and "modality" in r["error"] for r in create)
    assert rows["FHIR Patient update"]["status"] == "ERROR" and "HTTP 412" in rows["FHIR Patient update"]["error"]
    assert rows["FHIR Task delete"]["status"] == "REJECTED"
    detail = app.test_client().get(f"/api/messages/{rows['FHIR Patient update']['id']}").json
    assert json.loads(detail["ack"])["resourceType"] == "OperationOutcome"
    assert detail["changes"] == [{"http_status": 412}]


def test_fhir_messages_are_not_reprocessed_through_the_hl7_intake(app, fhir, patient):
    [row] = messages(app, type="FHIR Patient create")
    client = app.test_client()
    response = client.post(f"/api/messages/{row['id']}/reprocess")
    assert response.status_code == 409 and response.mimetype == "application/problem+json"
    assert "not reprocessable yet" in response.json["detail"]
    bulk = client.post("/api/messages/reprocess", json={"status": "PROCESSED"}).json
    assert bulk["results"] == [{"id": row["id"], "refused": "a FHIR request: FHIR messages are not reprocessable yet"}]
    assert client.get(f"/api/messages/{row['id']}").json["attempts"] == 1


def test_a_fhir_message_left_received_is_marked_error_not_given_to_hl7(session_factory, intake):
    with unit_of_work(session_factory) as session:
        row = InboundMessage(raw=b'{"resourceType":"Patient"}', transport="fhir", message_type="FHIR Patient create",
                             status=MessageStatus.RECEIVED, received_at=dt.datetime(2020, 1, 1))
        session.add(row)
        session.flush()
        msg_id = row.id
    assert recover_unfinished_messages(session_factory, intake, older_than_s=1) == 0
    with unit_of_work(session_factory) as session:
        row = session.get(InboundMessage, msg_id)
        assert (row.status, row.ack_code) == (MessageStatus.ERROR, "AE") and "nothing of it" in row.error


def test_a_write_whose_commit_fails_is_still_stored_with_its_error(app, fhir, patient, session_factory):
    """The request is stored in the unit of work of its change; when that commit fails, it is stored after the
    rollback with the error answered (nothing is lost)."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    failures = []

    def fail(session):   # the commit of the update fails, once
        if not failures:
            failures.append(1)
            raise OperationalError("COMMIT", {}, Exception("disk I/O error (simulated at commit)"))

    event.listen(session_factory, "before_commit", fail)
    try:
        body = dict(fixture("patient_doe.json"), id=patient["id"], gender="other")
        response = fhir.put(f"/fhir/Patient/{patient['id']}", body)
    finally:
        event.remove(session_factory, "before_commit", fail)
    assert response.status_code == 503
    [row] = messages(app, type="FHIR Patient update")
    assert (row["status"], row["ack_code"]) == ("ERROR", "AE") and "HTTP 503" in row["error"]
    assert fhir.get(f"/fhir/Patient/{patient['id']}").json["gender"] == "female"
