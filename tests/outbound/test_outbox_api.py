"""The outbox through the JSON API (Flask test client): dead letters with their reason, filters, manual retry."""

from __future__ import annotations

import pytest

from interfaces.runtime import build_wsgi_app
from tests.outbound.conftest import drain, mpps, place_order


@pytest.fixture
def client(out_settings, session_factory, read_factory, dispatcher):
    app = build_wsgi_app(out_settings, session_factory, read_factory)
    app.testing = True
    return app.test_client()


def test_dead_letter_is_visible_and_can_be_retried(client, dispatcher, receiver, session_factory, out_settings):
    place_order(session_factory, out_settings, "ACC-1")
    mpps(session_factory, "ACC-1", "IN PROGRESS")
    receiver.answer = "AR"
    dispatcher.run_once()

    body = client.get("/api/outbox?status=DEAD&destination=his").json
    assert body["count"] == 1
    [dead] = body["messages"]
    assert (dead["status"], dead["attempts"], dead["kind"]) == ("DEAD", 1, "order.status")
    assert dead["last_error"] == "AR: answer AR on purpose" and dead["cause"]["kind"] == "mpps"
    assert client.get("/api/outbox?status=SENT").json["count"] == 0
    assert client.get("/api/outbox?destination=other").json["count"] == 0
    assert client.get(f"/api/outbox?order_id={dead['order_id']}").json["count"] == 1

    detail = client.get(f"/api/outbox/{dead['id']}").json
    assert detail["content"].startswith("MSH|^~\\&|RIS|RADIOLOGY|HIS|HOSP|")
    assert f"|{dead['message_id']}|" in detail["content"] and "MSA|AR|" in detail["reply"]
    assert detail["payload"]["accession_number"] == "ACC-1"

    retried = client.post(f"/api/outbox/{dead['id']}/retry")
    assert retried.status_code == 200 and (retried.json["status"], retried.json["attempts"]) == ("PENDING", 0)
    receiver.answer = "AA"
    assert drain(dispatcher, lambda: client.get(f"/api/outbox/{dead['id']}").json["status"] == "SENT")
    assert receiver.control_ids() == [dead["message_id"]] * 2       # the same message id: the HIS can deduplicate

    again = client.post(f"/api/outbox/{dead['id']}/retry")
    assert again.status_code == 409 and "SENT" in again.json["detail"]


def test_bad_requests_are_problem_documents(client):
    assert client.post("/api/outbox/999/retry").status_code == 404
    assert client.get("/api/outbox/999").status_code == 404
    bad = client.get("/api/outbox?status=LOST")
    assert bad.status_code == 400 and bad.json["location"] == "status"
    assert client.get("/api/outbox?order_id=x").status_code == 400
