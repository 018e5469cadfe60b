"""Subscriptions (R4 + Subscriptions Backport, rest-hook) delivered from the outbox to a real HTTP receiver on
127.0.0.1, with retries on transient errors and a dead letter (subscription status error) on permanent ones."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading

import pytest
from sqlalchemy import select

from app.commands import InstanceData, PerformedStepData
from app.db import unit_of_work
from app.models import OutboxMessage, OutboxStatus, ProcedureStep, StepStatus
from app.services.archive import index_instance
from app.services.tracking import start_performed_step
from interfaces.fhir.subscription import BACKPORT, CONTENT, FILTER, TOPIC_BASE
from interfaces.runtime import build_delivery
from tests.fhir.conftest import ACSN, fixture, outcome


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers with the next scripted status (200 when
    the script is used up)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: list[int] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.stop()


@pytest.fixture
def delivery(settings, session_factory, read_factory):
    """The engine's outbox dispatcher (the composition root's wiring), retrying at once in tests."""
    made = build_delivery(dataclasses.replace(settings, outbox_backoff_seconds=0, outbox_max_attempts=3),
                          session_factory, read_factory)
    yield made
    made.close()


def backport(endpoint: str, topic: str, query: str = "", content: str = "full-resource", **extra) -> dict:
    body = {"resourceType": "Subscription", "status": "requested", "reason": "tests", "criteria": TOPIC_BASE + topic,
            "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                        "_payload": {"extension": [{"url": CONTENT, "valueCode": content}]},
                        "header": ["Authorization: Bearer t0ken"]}, **extra}
    if query:
        body["_criteria"] = {"extension": [{"url": FILTER, "valueString": query}]}
    return body


def order(fhir, patient: dict, accession: str) -> dict:
    body = fixture("servicerequest_mr_knee.json", patient=patient["id"])
    body["identifier"] = [{"type": {"coding": [ACSN]}, "value": accession}]
    return fhir.create(body)


def rows(session_factory) -> list[tuple[str, OutboxStatus]]:
    with unit_of_work(session_factory) as session:
        return [(r.destination, r.status) for r in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]


def test_a_status_notification_reaches_the_endpoint(fhir, patient, receiver, delivery, session_factory):
    other = fhir.create(dict(fixture("patient_doe.json"), identifier=[{"system": "urn:x", "value": "OTHER"}]))
    sub = fhir.create(backport(receiver.url, "servicerequest-status", f"ServiceRequest?patient=Patient/{patient['id']}"))
    assert sub["status"] == "active" and sub["criteria"] == TOPIC_BASE + "servicerequest-status"
    assert sub["_criteria"]["extension"][0]["valueString"] == f"ServiceRequest?patient=Patient/{patient['id']}"
    assert fhir.get(f"/fhir/Subscription/{sub['id']}").json == sub
    mine = order(fhir, patient, "SUBACC1")
    order(fhir, other, "SUBACC2")                        # another patient: the filter leaves it out
    assert rows(session_factory) == [(f"subscription/{sub['id']}", OutboxStatus.PENDING)]
    assert delivery.run_once() == {f"subscription/{sub['id']}": 1}
    [sent] = receiver.requests
    assert sent["path"] == "/hook" and sent["headers"]["Authorization"] == "Bearer t0ken"
    assert sent["headers"]["Content-Type"] == "application/fhir+json" and sent["headers"]["X-Message-Id"]
    bundle = sent["body"]
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    status, focus = bundle["entry"]
    params = {p["name"]: p for p in status["resource"]["parameter"]}
    assert status["resource"]["meta"]["profile"] == [BACKPORT + "backport-subscription-status-r4"]
    assert params["topic"]["valueCanonical"] == TOPIC_BASE + "servicerequest-status"
    assert params["type"]["valueCode"] == "event-notification"
    event = {p["name"]: p for p in params["notification-event"]["part"]}
    assert event["event-number"]["valueString"] == "1"
    assert event["focus"]["valueReference"]["reference"] == f"http://localhost/fhir/ServiceRequest/{mine['id']}"
    assert focus["resource"]["id"] == mine["id"] and focus["request"] == {"method": "POST", "url": "ServiceRequest"}
    assert rows(session_factory) == [(f"subscription/{sub['id']}", OutboxStatus.SENT)]

    revoked = fhir.put(f"/fhir/ServiceRequest/{mine['id']}", {**{k: v for k, v in mine.items() if k != "meta"},
                                                             "status": "revoked"})
    assert revoked.status_code == 200
    same = fhir.put(f"/fhir/ServiceRequest/{mine['id']}", {**{k: v for k, v in revoked.json.items() if k != "meta"}})
    assert same.status_code == 200                      # no status change: no notification
    delivery.run_once()
    assert len(receiver.requests) == 2
    second = receiver.requests[1]["body"]
    assert second["entry"][1]["resource"]["status"] == "revoked"
    assert {p["name"]: p for p in second["entry"][0]["resource"]["parameter"]}[
        "events-since-subscription-start"]["valueString"] == "2"


def test_task_and_imaging_study_topics(fhir, patient, receiver, delivery, session_factory):
    tasks = fhir.create({"resourceType": "Subscription", "status": "requested", "reason": "mpps",
                         "criteria": "Task?status=in-progress",
                         "channel": {"type": "rest-hook", "endpoint": receiver.url}})   # R4 style, empty payload
    studies = fhir.create(backport(receiver.url, "imagingstudy-available", content="id-only"))
    order(fhir, patient, "SUBACC3")
    assert rows(session_factory) == []                   # a new Task is accepted, not in-progress
    with unit_of_work(session_factory) as session:
        start_performed_step(session, PerformedStepData(sop_instance_uid="1.2.826.0.1.3680043.10.1356.81.1",
                                                        status="IN PROGRESS", accession_number="SUBACC3",
                                                        sps_id="SUBACC3", modality="MR"))
        index_instance(session, InstanceData(
            study_instance_uid="1.2.826.0.1.3680043.10.1356.81.2", series_instance_uid="1.2.826.0.1.3680043.10.1356.81.3",
            sop_instance_uid="1.2.826.0.1.3680043.10.1356.81.4", sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
            path="/nowhere", size=0, patient_id="FHIR-PAT-1", accession_number="SUBACC3", modality="MR"))
    delivery.run_once()
    by_topic = {r["body"]["entry"][0]["resource"]["parameter"][1]["valueCanonical"]: r["body"]
                for r in receiver.requests}
    assert set(by_topic) == {TOPIC_BASE + "task-status", TOPIC_BASE + "imagingstudy-available"}
    assert len(by_topic[TOPIC_BASE + "task-status"]["entry"]) == 1   # empty content: only the status
    study = by_topic[TOPIC_BASE + "imagingstudy-available"]["entry"][1]
    assert study["fullUrl"].startswith("http://localhost/fhir/ImagingStudy/") and "resource" not in study
    assert tasks["criteria"] == "Task?status=in-progress" and studies["status"] == "active"


def test_transient_errors_are_retried_and_permanent_ones_stop_the_subscription(fhir, patient, receiver, delivery,
                                                                               session_factory):
    sub = fhir.create(backport(receiver.url, "servicerequest-status"))
    receiver.script = [503, 429]
    order(fhir, patient, "SUBACC4")
    order(fhir, patient, "SUBACC5")
    assert delivery.run_once() == {f"subscription/{sub['id']}": 0}   # 503: retried later, the next one waits
    assert delivery.run_once() == {f"subscription/{sub['id']}": 0}   # 429: again
    assert delivery.run_once() == {f"subscription/{sub['id']}": 2}   # then both, in order
    accessions = [r["body"]["entry"][1]["resource"]["requisition"]["value"] for r in receiver.requests]
    assert accessions == ["SUBACC4", "SUBACC4", "SUBACC4", "SUBACC5"]
    assert len({r["headers"]["X-Message-Id"] for r in receiver.requests[:3]}) == 1   # the same message, retried

    receiver.script = [410]
    order(fhir, patient, "SUBACC6")
    delivery.run_once()
    with unit_of_work(session_factory) as session:
        dead = session.scalars(select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.DEAD)).one()
        assert "HTTP 410" in dead.last_error and dead.attempts == 1
    delivery.run_once()   # the next round sets the subscription to error, with the reason
    read = fhir.get(f"/fhir/Subscription/{sub['id']}").json
    assert read["status"] == "error" and "HTTP 410" in read["error"]
    order(fhir, patient, "SUBACC7")
    assert [d for d, s in rows(session_factory) if s is OutboxStatus.PENDING] == []   # error: nothing more


def test_changes_rolled_back_notify_nothing(fhir, patient, receiver, session_factory):
    fhir.create(backport(receiver.url, "task-status"))
    created = order(fhir, patient, "SUBACC8")
    before = rows(session_factory)
    with unit_of_work(session_factory) as session:     # a savepoint rolled back: its change is not notified
        step = session.scalars(select(ProcedureStep)).one()
        savepoint = session.begin_nested()
        step.status = StepStatus.HELD
        session.flush()
        savepoint.rollback()
    assert rows(session_factory) == before
    refused = fhir.put(f"/fhir/ServiceRequest/{created['id']}", {**{k: v for k, v in created.items() if k != "meta"},
                                                                "status": "completed"})
    assert refused.status_code == 422 and rows(session_factory) == before


def test_a_failed_job_of_a_group_commit_notifies_nothing(fhir, patient, receiver, session_factory):
    from app.group_commit import GroupCommitter
    fhir.create(backport(receiver.url, "task-status"))
    order(fhir, patient, "SUBACC10")
    before = rows(session_factory)

    def fails(session):
        session.scalars(select(ProcedureStep)).one().status = StepStatus.HELD
        session.flush()
        raise RuntimeError("this job fails after its change")

    def holds(session):
        session.scalars(select(ProcedureStep)).one().status = StepStatus.HELD

    committer = GroupCommitter(session_factory).start()
    try:
        with pytest.raises(RuntimeError):
            committer.run(fails)
        assert rows(session_factory) == before
        committer.run(holds)                       # the same change, succeeding: notified once
    finally:
        committer.stop()
    assert [status for _, status in rows(session_factory)[len(before):]] == [OutboxStatus.PENDING]


def test_orders_from_hl7_are_notified_created_and_revoked(fhir, receiver, settings, session_factory):
    """The HL7 intake writes orders with Core statements (app.rows), not the ORM: its new and cancelled orders are
    notified all the same, also through the group commit; a message that fails in its group notifies nothing."""
    from app.group_commit import GroupCommitter
    from interfaces.hl7.intake import HL7Intake
    from mappings.profile import ProfileSet
    from tests.test_intake import orm

    fhir.create(backport(receiver.url, "servicerequest-status", content="id-only"))
    tasks = fhir.create(backport(receiver.url, "task-status", content="id-only"))
    committer = GroupCommitter(session_factory).start()
    try:
        intake = HL7Intake(settings, session_factory, ProfileSet(settings.mappings_path).get("default"), committer)
        assert b"MSA|AA|S1" in intake.handle(orm("NW", "S1", placer="PL-S1", accession="ACC-S1"))
        assert b"MSA|AE|S2" in intake.handle(orm("NW", "S2", placer="PL-S2", accession="ACC-S1"))   # taken
        assert b"MSA|AA|S3" in intake.handle(orm("CA", "S3", placer="PL-S1", accession="ACC-S1"))
    finally:
        committer.stop()
    with unit_of_work(session_factory) as session:
        sent = [(r.destination, r.payload["focus"], r.payload["created"])
                for r in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]
        step_id = session.scalars(select(ProcedureStep.id)).one()
    requests = [(focus, created) for dest, focus, created in sent if dest != f"subscription/{tasks['id']}"]
    assert requests == [("ServiceRequest/1", True), ("ServiceRequest/1", False)]     # created, then revoked
    assert [(f, c) for d, f, c in sent if d == f"subscription/{tasks['id']}"] == [(f"Task/{step_id}", True),
                                                                                 (f"Task/{step_id}", False)]
    assert fhir.get("/fhir/ServiceRequest/1").json["status"] == "revoked"


def test_off_and_deleted_subscriptions_send_nothing(fhir, patient, receiver, session_factory):
    sub = fhir.create(backport(receiver.url, "servicerequest-status"))
    off = fhir.put(f"/fhir/Subscription/{sub['id']}", {**{k: v for k, v in sub.items() if k != "meta"},
                                                        "status": "off"})
    assert off.status_code == 200 and off.json["status"] == "off"
    order(fhir, patient, "SUBACC9")
    assert rows(session_factory) == []
    assert fhir.call("DELETE", f"/fhir/Subscription/{sub['id']}").status_code == 204
    assert fhir.get(f"/fhir/Subscription/{sub['id']}").status_code == 410


@pytest.mark.parametrize("change, expression, words", [
    ({"channel": {"type": "email", "endpoint": "mailto:x@example.org"}}, "Subscription.channel.type", "rest-hook"),
    ({"criteria": TOPIC_BASE + "weather"}, "Subscription.criteria", "no topic"),
    ({"criteria": "Observation?code=x"}, "Subscription.criteria", "notifications are sent for"),
    ({"_criteria": {"extension": [{"url": FILTER, "valueString": "Task?status=x"}]}}, "Subscription.criteria",
     "must be a search on ServiceRequest"),
    ({"_criteria": {"extension": [{"url": FILTER, "valueString": "ServiceRequest?colour=red"}]}},
     "Subscription.criteria", "unknown search parameter 'colour'"),
    ({"channel": {"type": "rest-hook", "endpoint": "ftp://127.0.0.1/x"}}, "Subscription.channel.endpoint", "http"),
])
def test_subscriptions_this_server_cannot_serve_are_422(fhir, change, expression, words):
    body = {**backport("http://127.0.0.1:9/hook", "servicerequest-status"), **change}
    response = fhir.post("/fhir/Subscription", body)
    assert response.status_code == 422, response.json
    assert outcome(response)["expression"] == [expression] and words in outcome(response)["diagnostics"]


def test_the_topics_are_in_the_capability_statement(fhir):
    [entry] = [r for r in fhir.get("/fhir/metadata").json["rest"][0]["resource"] if r["type"] == "Subscription"]
    assert sorted(e["valueCanonical"] for e in entry["extension"]) == sorted(
        TOPIC_BASE + t for t in ("servicerequest-status", "task-status", "imagingstudy-available"))


def test_the_running_engine_delivers_notifications_by_itself(settings, receiver):
    """The engine's scheduler job sends what the outbox holds, over real HTTP on loopback both ways."""
    import time
    import urllib.request

    from interfaces.runtime import Engine

    engine = Engine(dataclasses.replace(settings, scheduler_enabled=True, outbox_poll_seconds=0.2))
    engine.start()
    try:
        base = f"http://127.0.0.1:{engine.http_port}/fhir"

        def post(url: str, body: dict) -> dict:
            request = urllib.request.Request(url, json.dumps(body).encode(), method="POST",
                                             headers={"Content-Type": "application/fhir+json"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                return json.loads(answer.read())

        post(f"{base}/Subscription", backport(receiver.url, "servicerequest-status", content="id-only"))
        patient = post(f"{base}/Patient", fixture("patient_doe.json"))
        created = post(f"{base}/ServiceRequest", fixture("servicerequest_mr_knee.json", patient=patient["id"]))
        deadline = time.monotonic() + 20
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.1)
        [sent] = receiver.requests
        assert sent["body"]["entry"][1]["fullUrl"] == f"{base}/ServiceRequest/{created['id']}"
    finally:
        engine.stop()
