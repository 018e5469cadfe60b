"""One composition for every entry point: ``ris serve`` (interfaces.runtime.Engine) and the web side alone (wsgi.py)
wire their sessions with the same function, so both write outbox rows for the configured destinations and keep the
site's time; the scheduling resources of the data folder are loaded by both."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import sys
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from app.db import unit_of_work
from app.models import InboundMessage, OrderStatus, OutboxMessage, Order, Resource
from app.services import scheduling
from interfaces.runtime import Engine
from tests.test_intake import orm

ZONE = "Pacific/Kiritimati"     # UTC+14: a "now" taken in UTC is half a day off
ROOMS = """resources:
  - name: CT-A
    ae_title: CT_A
    station_name: CTA
    modalities: [CT]
    opening_hours: {mon: [["08:00", "16:00"]]}
"""


@pytest.fixture
def composed(settings, tmp_path, monkeypatch):
    """The engine of ``ris serve`` and the application of wsgi.py, from the same environment."""
    rooms = tmp_path / "rooms"
    rooms.mkdir()
    (rooms / "rooms.yaml").write_text(ROOMS)
    env = {"RIS_DATA_DIR": str(tmp_path), "RIS_DATABASE_URL": settings.database, "RIS_HIS_MLLP": "127.0.0.1:9",
           "RIS_SITE_TIMEZONE": ZONE, "RIS_RESOURCES_DIR": str(rooms), "RIS_SCHEDULER_ENABLED": "false"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("wsgi", None)
    wsgi = importlib.import_module("wsgi")
    engine = Engine(dataclasses.replace(settings, his_mllp="127.0.0.1:9", site_timezone=ZONE,
                                        resources_dir=str(rooms), scheduler_enabled=False))
    yield engine, wsgi
    engine.db.dispose()
    wsgi.database.dispose()
    sys.modules.pop("wsgi", None)


def test_both_entry_points_wire_their_sessions_alike(composed):
    engine, wsgi = composed
    assert wsgi.database.sessions.kw["info"] == engine.sessions.kw["info"]
    assert wsgi.database.read_sessions.kw["info"] == engine.read_sessions.kw["info"]
    assert engine.sessions.kw["info"][scheduling.ZONE_KEY] == ZONE


def test_a_change_made_through_the_web_side_alone_writes_its_outbox_rows(composed):
    engine, wsgi = composed
    assert b"MSA|AE|X-CA" in engine.intake.handle(orm("CA", "X-CA"))      # the order is not there yet
    assert b"MSA|AA|X-NW" in engine.intake.handle(orm("NW", "X-NW"))
    with unit_of_work(engine.sessions) as session:
        ca = session.scalar(select(InboundMessage.id).where(InboundMessage.control_id == "X-CA"))
    answer = wsgi.app.test_client().post(f"/api/messages/{ca}/reprocess")
    assert answer.status_code == 200 and answer.json["ack_code"] == "AA"
    with unit_of_work(engine.sessions) as session:
        assert session.scalar(select(Order.status)) is OrderStatus.CANCELLED
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.cause_message_fk == ca)).all()
        assert [(r.destination, r.payload["status"]) for r in rows] == [("his", "CANCELLED")]


def test_both_entry_points_keep_the_sites_time(composed):
    engine, wsgi = composed
    expected = dt.datetime.now(ZoneInfo(ZONE)).replace(tzinfo=None)
    for factory in (engine.sessions, wsgi.database.sessions, wsgi.database.read_sessions):
        with unit_of_work(factory) as session:
            assert abs(scheduling.local_now(session) - expected) < dt.timedelta(minutes=2)


def test_both_entry_points_load_the_resources_of_the_data_folder(composed):
    engine, wsgi = composed
    with unit_of_work(wsgi.database.read_sessions) as session:
        rooms = [(r.name, r.ae_title, r.modalities, r.opening_hours) for r in session.scalars(select(Resource))]
    assert rooms == [("CT-A", "CT_A", ["CT"], {"mon": [["08:00", "16:00"]]})]


def test_a_bad_resources_file_stops_the_start_with_its_file_and_line(settings, tmp_path):
    from interfaces.runtime import StartupError

    rooms = tmp_path / "bad-rooms"
    rooms.mkdir()
    (rooms / "rooms.yaml").write_text(ROOMS.replace("modalities: [CT]", "modalities: [CT]\n    colour: red"))
    with pytest.raises(StartupError, match=r"rooms.yaml:2: unknown key 'colour'.*RIS_RESOURCES_DIR"):
        Engine(dataclasses.replace(settings, resources_dir=str(rooms), scheduler_enabled=False))
    (rooms / "rooms.yaml").write_text(ROOMS.replace('"16:00"', '"06:00"'))
    with pytest.raises(StartupError, match=r"resource CT-A: mon interval \['08:00', '06:00'\]"):
        Engine(dataclasses.replace(settings, resources_dir=str(rooms), scheduler_enabled=False))
