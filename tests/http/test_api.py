"""The HTTP side through Flask's test client: health, JSON API, problem documents, FHIR metadata."""

from __future__ import annotations

import pytest

from interfaces.hl7.intake import HL7Intake
from interfaces.runtime import build_wsgi_app
from mappings.profile import ProfileSet

ORDER = (
    "MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ORM^O01|API-1|P|2.3.1\r"
    "PID|||API-PAT^^^HOSP||APITEST^ALMA||19700101|F\r"
    "ORC|NW|API-PL^HIS|||||^^^20261204083000\r"
    "OBR|1|API-PL^HIS||MRH^MR head^L||||||||||||||API-ACC|API-RP|API-SPS||||MR\r"
).encode("ascii")


@pytest.fixture
def client(settings, session_factory, read_factory):
    app = build_wsgi_app(settings, session_factory, read_factory)
    app.testing = True
    return app.test_client()


@pytest.fixture
def intake(settings, session_factory):
    return HL7Intake(settings, session_factory, ProfileSet(settings.mappings_path).get("default"))


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.json == {"status": "ok", "database": "ok"}


def test_order_by_accession_with_its_steps(client, intake):
    intake.handle(ORDER)
    body = client.get("/api/orders?accession=API-ACC").json
    assert body["count"] == 1
    [order] = body["orders"]
    assert (order["accession_number"], order["status"], order["placer_order_number"]) == ("API-ACC", "SCHEDULED", "API-PL")
    assert order["patient"] == {"patient_id": "API-PAT", "issuer": "HOSP", "name": "APITEST^ALMA",
                                "birth_date": "1970-01-01", "sex": "F"}
    [proc] = order["procedures"]
    assert proc["requested_procedure_id"] == "API-RP"
    [step] = proc["steps"]
    assert (step["sps_id"], step["modality"], step["status"]) == ("API-SPS", "MR", "SCHEDULED")
    assert step["scheduled_start"] == "2026-12-04T08:30:00"
    assert order["study_instance_uids"] == []
    assert client.get(f"/api/orders/{order['id']}").json["accession_number"] == "API-ACC"
    assert client.get("/api/orders?accession=NONE").json == {"orders": [], "count": 0}


def test_messages_are_listed_with_their_ack(client, intake):
    intake.handle(ORDER)
    [msg] = client.get("/api/messages?control_id=API-1").json["messages"]
    assert (msg["status"], msg["ack_code"], msg["message_type"]) == ("PROCESSED", "AA", "ORM^O01")
    full = client.get(f"/api/messages/{msg['id']}").json
    assert full["raw"].startswith("MSH|") and "MSA|AA|API-1" in full["ack"]


@pytest.mark.parametrize("url, status, words", [
    ("/api/orders/999", 404, "no order 999"),
    ("/api/orders?status=LOST", 400, "status='LOST' is not one of"),
    ("/api/orders?limit=0", 400, "limit='0'"),
    ("/api/studies?link_status=x", 400, "link_status='x'"),
    ("/api/nothing", 404, ""),
])
def test_bad_requests_get_problem_documents(client, url, status, words):
    response = client.get(url)
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert response.json["status"] == status
    assert words in response.json.get("detail", "")


def test_fhir_capability_statement_says_what_exists(client):
    response = client.get("/fhir/metadata")
    assert response.status_code == 200 and response.mimetype == "application/fhir+json"
    body = response.json
    assert body["resourceType"] == "CapabilityStatement" and body["fhirVersion"] == "4.0.1"
    assert body["rest"][0]["mode"] == "server"
    assert [r["type"] for r in body["rest"][0]["resource"]] == ["Patient", "ServiceRequest", "Task", "ImagingStudy",
                                                                  "Appointment", "DiagnosticReport", "Subscription"]


def test_unknown_fhir_resource_is_an_operation_outcome(client):
    response = client.get("/fhir/Patient/1")
    assert response.status_code == 404 and response.mimetype == "application/fhir+json"
    assert response.json["resourceType"] == "OperationOutcome"
    assert response.json["issue"][0]["code"] == "not-found"
    assert client.get("/fhir/Appointment/1").json["issue"][0]["code"] == "not-found"
    assert client.get("/fhir/Observation/1").json["issue"][0]["code"] == "not-supported"


CANCEL_UNKNOWN = ORDER.replace(b"ORC|NW|", b"ORC|CA|").replace(b"|API-1|", b"|API-2|")


def test_reprocess_after_the_cause_is_fixed_with_dry_run_first(client, intake):
    assert b"MSA|AE|API-2" in intake.handle(CANCEL_UNKNOWN)  # cancel before the order exists
    [failed] = client.get("/api/messages?status=ERROR").json["messages"]
    intake.handle(ORDER)  # now the order exists
    dry = client.post(f"/api/messages/{failed['id']}/reprocess?dry_run=true").json
    assert (dry["dry_run"], dry["status"], dry["ack_code"]) == (True, "PROCESSED", "AA")
    assert any(c["entity"] == "orders" and c["changes"]["status"] == ["SCHEDULED", "CANCELLED"]
               for c in dry["changes"])
    assert client.get("/api/orders?accession=API-ACC").json["orders"][0]["status"] == "SCHEDULED"
    assert client.get(f"/api/messages/{failed['id']}").json["status"] == "ERROR"
    real = client.post(f"/api/messages/{failed['id']}/reprocess").json
    assert (real["status"], real["ack_code"]) == ("PROCESSED", "AA")
    assert client.get("/api/orders?accession=API-ACC").json["orders"][0]["status"] == "CANCELLED"
    shown = client.get(f"/api/messages/{failed['id']}").json
    assert (shown["status"], shown["attempts"]) == ("PROCESSED", 2)


def test_reprocess_a_filtered_set(client, intake):
    intake.handle(CANCEL_UNKNOWN)
    intake.handle(ORDER)
    body = client.post("/api/messages/reprocess", json={"status": "ERROR", "dry_run": True}).json
    assert body["count"] == 1 and body["results"][0]["ack_code"] == "AA"
    assert client.post("/api/messages/reprocess", json={}).status_code == 400
    assert client.post("/api/messages/reprocess", data="x").status_code == 400


def test_message_search_by_patient_accession_and_time(client, intake):
    intake.handle(ORDER)
    [msg] = client.get("/api/messages?patient_id=API-PAT").json["messages"]
    assert msg["accession_number"] == "API-ACC"
    assert client.get("/api/messages?accession=API-ACC").json["count"] == 1
    assert client.get("/api/messages?since=2000-01-01T00:00:00Z").json["count"] == 1
    assert client.get("/api/messages?until=2000-01-01").json["count"] == 0
    assert client.get("/api/messages?since=yesterday").status_code == 400
    full = client.get(f"/api/messages/{msg['id']}").json
    created = {c["entity"] for c in full["changes"] if c["action"] == "created"}
    assert {"patients", "orders", "requested_procedures", "procedure_steps"} <= created
