"""Reprocessing over HTTP: only messages that were not applied; a PROCESSED or DUPLICATE one is a 409 problem."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.db import unit_of_work
from app.models import InboundMessage, MessageStatus, Order
from interfaces.hl7.intake import HL7Intake
from interfaces.runtime import build_wsgi_app
from mappings.profile import ProfileSet
from tests.test_intake import orm


@pytest.fixture
def intake(settings, session_factory):
    return HL7Intake(settings, session_factory, ProfileSet(settings.mappings_path).get("default"))


@pytest.fixture
def client(settings, session_factory, read_factory, intake):
    app = build_wsgi_app(settings, session_factory, read_factory, intake=intake)
    app.testing = True
    return app.test_client()


def test_a_processed_message_is_refused_with_409_and_keeps_its_history(client, intake, session_factory):
    intake.handle(orm("NW", "RP-1"))
    intake.handle(orm("NW", "RP-1"))  # the resend: a DUPLICATE
    with unit_of_work(session_factory) as session:
        before = [(m.status, m.ack, m.changes, m.attempts) for m in
                  session.scalars(select(InboundMessage).order_by(InboundMessage.id))]
    for mid, status in ((1, "PROCESSED"), (2, "DUPLICATE")):
        response = client.post(f"/api/messages/{mid}/reprocess")
        assert response.status_code == 409 and response.mimetype == "application/problem+json"
        assert status in response.json["detail"] and "not applied" in response.json["detail"]
    with unit_of_work(session_factory) as session:
        after = [(m.status, m.ack, m.changes, m.attempts) for m in
                 session.scalars(select(InboundMessage).order_by(InboundMessage.id))]
        assert session.scalar(select(func.count()).select_from(Order)) == 1
    assert after == before and before[0][0] is MessageStatus.PROCESSED and before[0][2]


def test_a_bulk_reprocess_by_type_leaves_processed_messages_alone(client, intake, session_factory):
    intake.handle(orm("NW", "RP-2"))
    intake.handle(orm("CA", "RP-3", placer="LATER", accession="ACC-LATER"))     # AE: the order is not there yet
    intake.handle(orm("NW", "RP-4", placer="LATER", accession="ACC-LATER"))
    body = client.post("/api/messages/reprocess", json={"type": "ORM^O01"}).json
    assert (body["count"], body["refused"]) == (3, 2)
    by_id = {r["id"]: r for r in body["results"]}
    assert "PROCESSED" in by_id[1]["refused"] and "PROCESSED" in by_id[3]["refused"]
    assert (by_id[2]["status"], by_id[2]["ack_code"]) == ("PROCESSED", "AA")   # the CA now finds its order
    with unit_of_work(session_factory) as session:
        rows = session.scalars(select(InboundMessage).order_by(InboundMessage.id)).all()
        assert [m.status for m in rows] == [MessageStatus.PROCESSED] * 3
        assert rows[0].changes and rows[0].attempts == 1
