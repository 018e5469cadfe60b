"""The analyst's tools, which commit nothing: ``ris mapping check``, ``ris mapping test``,
GET /api/mappings and POST /api/mappings/test (through the CLI entry point and Flask's test client)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from sqlalchemy import func, select

from app.db import unit_of_work
from app.models import InboundMessage, Order
from interfaces.cli import main
from interfaces.hl7.intake import HL7Intake
from interfaces.runtime import build_wsgi_app, load_profiles
from tests.mappings.fixtures import GOLDEN, SITE, folder_with, golden_message, order, rewrite

NORTHWIND_CASE = GOLDEN / "northwind" / "orm_o01_accession_obr3_station_orc18.hl7"


@pytest.fixture
def env(monkeypatch, settings, tmp_path):
    """The ``ris`` command's settings: this test's database, data folder and a mapping folder."""
    folder = folder_with(tmp_path, site_b=SITE)
    for name, value in {"RIS_DATA_DIR": str(tmp_path), "RIS_DATABASE_URL": settings.database_url,
                        "RIS_MAPPINGS_DIR": str(folder), "RIS_SITE_TIMEZONE": "Europe/Berlin"}.items():
        monkeypatch.setenv(name, value)
    return folder


def count(session_factory, model) -> int:
    with unit_of_work(session_factory) as session:
        return session.scalar(select(func.count()).select_from(model))


# ris mapping check -----------------------------------------------------------------------------
def test_check_lists_the_profiles_of_a_good_folder(env, capsys):
    assert main(["mapping", "check"]) == 0
    out = capsys.readouterr().out
    assert "default@" in out and "site-b@" in out and "site_b.yaml <- default.yaml" in out and "SITEB^NORTH" in out


def test_check_names_file_line_and_key_of_every_problem(env, capsys):
    rewrite(env / "site_b.yaml", SITE.replace("as: modality", "as: shout"))
    rewrite(env / "other.yaml", "name: other\nextends: default\ncolour: red\n")
    assert main(["mapping", "check", str(env)]) == 1
    err = capsys.readouterr().err
    assert "other.yaml:3: colour: unknown key" in err
    assert "site_b.yaml:9: step.modality.as: unknown transform 'shout'" in err


def test_check_of_the_shipped_folder_passes(monkeypatch, capsys):
    monkeypatch.delenv("RIS_MAPPINGS_DIR", raising=False)
    assert main(["mapping", "check"]) == 0
    assert "northwind@" in capsys.readouterr().out


# ris mapping test ------------------------------------------------------------------------------
def test_test_shows_fields_profile_commands_worklist_and_ack_and_commits_nothing(env, session_factory, tmp_path,
                                                                                  capsys):
    message = tmp_path / "order.hl7"
    message.write_bytes(order("T1", orc18="CT_ORC18"))
    assert main(["mapping", "test", str(message)]) == 0
    out = capsys.readouterr().out
    assert "== profile\nsite-b@" in out
    assert "ORC-18" in out and "Entering Device (CE)" in out and "CT_ORC18" in out
    assert '"command": "PlaceOrder"' in out and '"accession_number": "B-100"' in out
    assert '"ScheduledStationAETitle": "CT_ORC18"' in out and '"Modality": "CT"' in out
    assert "== ACK\nMSH|" in out and "MSA|AA|T1" in out
    assert count(session_factory, Order) == 0 and count(session_factory, InboundMessage) == 0


def test_test_of_a_stored_message_with_another_profile(env, settings, session_factory, tmp_path, capsys):
    intake = HL7Intake(settings, session_factory, load_profiles(dataclasses.replace(settings, mappings_dir=str(env))))
    intake.handle(order("T2", code="MRK^MR knee^L"))            # not in site-b's table: AE, kept for reprocessing
    with unit_of_work(session_factory) as session:
        [row] = session.scalars(select(InboundMessage)).all()
        message_id, ack_code = row.id, row.ack_code
    assert ack_code == "AE"
    assert main(["mapping", "test", "--message-id", str(message_id), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["profile"]["name"] == "site-b" and report["ack_code"] == "AE"
    assert report["error"] == "profile 'site-b': table 'procedures' has no entry 'MRK'"
    # the default profile reads the modality from the procedure text and would accept it
    assert main(["mapping", "test", "--message-id", str(message_id), "--profile", "default", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["profile"]["name"] == "default" and report["ack_code"] == "AA"
    assert report["worklist"][0]["ScheduledProcedureStepSequence"][0]["Modality"] == "MR"
    with unit_of_work(session_factory) as session:
        assert session.get(InboundMessage, message_id).profile.startswith("site-b@")   # unchanged
    assert count(session_factory, Order) == 0


def test_test_of_a_stored_id_replays_an_applied_order_as_if_it_were_new(env, settings, session_factory, capsys):
    intake = HL7Intake(settings, session_factory, load_profiles(dataclasses.replace(settings, mappings_dir=str(env))))
    assert b"MSA|AA" in intake.handle(order("T3", accession="B-300", orc18="CT_ORC18"))
    with unit_of_work(session_factory) as session:
        [row] = session.scalars(select(InboundMessage)).all()
        message_id, before = row.id, (row.status, row.profile, row.ack)
    assert main(["mapping", "test", str(message_id), "--json"]) == 0          # a number that is no file: an id
    report = json.loads(capsys.readouterr().out)
    assert report["ack_code"] == "AA", report["error"]                       # not "order ... already exists"
    assert report["worklist"][0]["AccessionNumber"] == "B-300"
    assert report["worklist"][0]["ScheduledProcedureStepSequence"][0]["ScheduledStationAETitle"] == "CT_ORC18"
    with unit_of_work(session_factory) as session:
        row = session.get(InboundMessage, message_id)
        assert (row.status, row.profile, row.ack) == before
        assert [o.accession_number for o in session.scalars(select(Order))] == ["B-300"]   # the order as it was


def test_test_needs_a_file_or_a_message_id(env, capsys):
    assert main(["mapping", "test"]) == 2
    assert "give a message FILE, or a stored message's id" in capsys.readouterr().err
    assert main(["mapping", "test", "--message-id", "999"]) == 2
    assert "no message 999" in capsys.readouterr().err
    assert main(["mapping", "test", "998"]) == 2
    assert "no message 998" in capsys.readouterr().err
    assert main(["mapping", "test", "no-such-file.hl7"]) == 2
    assert "No such file or directory" in capsys.readouterr().err


# HTTP ------------------------------------------------------------------------------------------
@pytest.fixture
def client(settings, session_factory, read_factory):
    app = build_wsgi_app(settings, session_factory, read_factory)
    app.testing = True
    return app.test_client()


def test_get_mappings_lists_profiles_versions_and_validation(client):
    body = client.get("/api/mappings").json
    assert body["valid"] is True and body["problems"] == [] and body["default"] == "default"
    by_name = {p["name"]: p for p in body["profiles"]}
    assert by_name["default"]["default"] is True and len(by_name["default"]["version"]) == 12
    assert by_name["northwind"]["senders"] == ["NORTHWIND^NORTH"]
    assert by_name["northwind"]["files"] == ["northwind.yaml", "default.yaml"]
    assert by_name["northwind"]["tables"] == {"procedures": 4}


def test_post_mapping_test_gives_the_same_report_and_commits_nothing(client, session_factory):
    text = golden_message(NORTHWIND_CASE).decode("latin-1").replace("\r", "\n")
    response = client.post("/api/mappings/test", json={"message": text})
    assert response.status_code == 200
    body = response.json
    expected = json.loads(NORTHWIND_CASE.with_suffix(".json").read_text())
    assert body["profile"]["name"] == "northwind" and body["ack_code"] == "AA"
    assert body["commands"] == expected["commands"] and body["worklist"] == expected["worklist"]
    assert {"path": "OBR-3", "name": "Filler Order Number", "type": "EI",
            "value": "NWACC-100^NORTHWIND"} in body["fields"]
    assert body["ack"].startswith("MSH|")
    assert count(session_factory, Order) == 0 and count(session_factory, InboundMessage) == 0


@pytest.mark.parametrize("payload, status, words", [
    ({}, 400, "give either message"),
    ({"message": "MSH|x", "message_id": 1}, 400, "give either message"),
    ({"message_id": "one"}, 400, "whole number"),
    ({"message_id": 4242}, 404, "no message 4242"),
    ({"message": "MSH|^~\\&|A|B|C|D|20260101||ADT^A04|1|P|2.5\nPID|||1", "profile": "nope"}, 404,
     "no profile named 'nope'"),
])
def test_post_mapping_test_refuses_bad_requests(client, payload, status, words):
    response = client.post("/api/mappings/test", json=payload)
    assert response.status_code == status and words in response.json["detail"]


def test_get_mappings_shows_a_refused_file_and_the_profile_still_active(settings, session_factory, read_factory,
                                                                       tmp_path):
    folder = folder_with(tmp_path, site_b=SITE)
    app = build_wsgi_app(dataclasses.replace(settings, mappings_dir=str(folder)), session_factory, read_factory)
    app.testing = True
    client = app.test_client()
    version = {p["name"]: p["version"] for p in client.get("/api/mappings").json["profiles"]}["site-b"]
    rewrite(folder / "site_b.yaml", SITE.replace("table: procedures, column: modality", "table: procs"))
    time.sleep(1.1)                    # the engine looks at the folder at most once a second
    body = client.get("/api/mappings").json
    assert body["valid"] is False
    assert body["problems"] == [{"file": "site_b.yaml", "line": 8, "key": "step.modality.from.0.table",
                                 "problem": "no table 'procs' in this profile (tables: procedures)"}]
    assert {p["name"]: p["version"] for p in body["profiles"]}["site-b"] == version


def test_post_mapping_test_of_an_unreadable_message(client):
    body = client.post("/api/mappings/test", json={"message": "this is not HL7"}).json
    assert body["profile"] is None and body["ack_code"] == "AR" and body["fields"] == []
    assert body["parse_error"]
