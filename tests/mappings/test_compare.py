"""Comparing two versions of the profiles on the same stored messages: ``ris mapping compare`` and
POST /api/mappings/compare. Per message, what would differ in the commands and the worklist items; nothing is
committed (the messages, their status and profile, and the orders stay as they were)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from sqlalchemy import func, select

from app.db import unit_of_work
from app.models import InboundMessage, Order
from interfaces.cli import main
from interfaces.mapping_tools import MessageFilter, compare_candidates
from interfaces.runtime import build_wsgi_app, load_profiles
from interfaces.hl7.intake import HL7Intake
from tests.mappings.fixtures import SITE, folder_with, order
from tests.test_intake import segments

# The new version: site-b's CT head goes to another room, and it learns the knee code MRK.
NEW_SITE = SITE.replace("station_aet: CT_B1", "station_aet: CT_B9").replace(
    "    USA: {modality: US, description: US abdomen}\n",
    "    USA: {modality: US, description: US abdomen}\n    MRK: {modality: MR, description: MR knee}\n")


@pytest.fixture
def stored(settings, session_factory, tmp_path):
    """The live folder (default + site-b) and four stored messages: 1 CT head (station from the table), 2 CT head
    with ORC-18 (the message's station wins), 3 a knee site-b does not know (AE), 4 from another sender."""
    folder = folder_with(tmp_path, site_b=SITE)
    live = dataclasses.replace(settings, mappings_dir=str(folder))
    intake = HL7Intake(live, session_factory, load_profiles(live))
    acks = [intake.handle(order("C1", accession="B-1")),
            intake.handle(order("C2", accession="B-2", orc18="CT_ORC18")),
            intake.handle(order("C3", accession="B-3", code="MRK^MR knee^L")),
            intake.handle(order("C4", app="HIS", facility="HOSP", accession="", modality="CT"))]
    assert [segments(a)["MSA"][1] for a in acks] == ["AA", "AA", "AE", "AA"]
    with unit_of_work(session_factory) as session:
        ids = list(session.scalars(select(InboundMessage.id).order_by(InboundMessage.id)))
    return live, folder, ids


def snapshot(session_factory):
    with unit_of_work(session_factory) as session:
        rows = [(m.id, m.status, m.profile, m.ack) for m in session.scalars(select(InboundMessage))]
        return rows, session.scalar(select(func.count()).select_from(Order))


def by_id(report) -> dict:
    return {m["id"]: m for m in report["messages"]}


def test_a_changed_table_shows_per_message_what_differs(stored, session_factory):
    live, folder, ids = stored
    before = snapshot(session_factory)
    report = compare_candidates(live, session_factory, {}, new_files={"site_b.yaml": NEW_SITE})
    assert (report["compared"], report["differing"], report["same"]) == (4, 2, 2)
    assert report["old"]["source"] == str(folder) and report["new"]["source"] == f"{folder} with site_b.yaml"
    messages = by_id(report)
    first, second, knee, other = (messages[i] for i in ids)
    assert first["old"]["profile"] != first["new"]["profile"]          # another version of site-b
    assert [d for d in first["differences"] if d["where"] != "profile"] == [
        {"where": "commands", "path": "[0].order.procedures[0].steps[0].station_aets", "old": ["CT_B1"],
         "new": ["CT_B9"]},
        {"where": "worklist", "path": "[0].ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
         "old": "CT_B1", "new": "CT_B9"}]
    assert second["same"] is True                                    # ORC-18 wins over the table in both versions
    assert knee["same"] is False
    assert (knee["old"]["ack_code"], knee["new"]["ack_code"]) == ("AE", "AA")
    assert knee["old"]["error"] == "profile 'site-b': table 'procedures' has no entry 'MRK'"
    assert {"where": "result", "path": "ack_code", "old": "AE", "new": "AA"} in knee["differences"]
    assert knee["commands"]["old"] == [] and knee["commands"]["new"][0]["command"] == "PlaceOrder"
    assert knee["worklist"]["new"][0]["ScheduledProcedureStepSequence"][0]["Modality"] == "MR"
    assert other["same"] is True and other["old"]["profile"] == other["new"]["profile"]
    assert snapshot(session_factory) == before                       # nothing committed


def test_identifiers_the_engine_generates_are_no_difference(stored, session_factory):
    live, _, ids = stored
    report = compare_candidates(live, session_factory, {"from_id": ids[3], "to_id": ids[3]})
    [message] = report["messages"]
    assert message["same"] is True and message["differences"] == []
    # no accession in the message: each dry run makes one up; it is named, not compared by its key
    with unit_of_work(session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 3


def test_messages_are_selected_by_id_range_status_type_and_sender(stored, session_factory):
    live, _, ids = stored
    select_ = lambda **kw: [m["id"] for m in compare_candidates(live, session_factory, kw)["messages"]]  # noqa: E731
    assert select_(from_id=ids[1], to_id=ids[2]) == ids[1:3]
    assert select_(status="ERROR") == [ids[2]]
    assert select_(sender="HIS^HOSP") == [ids[3]]
    assert select_(message_type="ADT^A01") == []
    assert select_(limit=2) == ids[:2]
    with pytest.raises(Exception, match="limit 0 must be from 1 to 1000"):
        select_(limit=0)
    with pytest.raises(Exception, match="status 'BROKEN' is not one of"):
        select_(status="BROKEN")


def test_two_folders_can_be_compared(stored, session_factory, tmp_path):
    live, folder, ids = stored
    (tmp_path / "other").mkdir()
    other = folder_with(tmp_path / "other", site_b=NEW_SITE)
    report = compare_candidates(live, session_factory, MessageFilter(to_id=ids[0]), new_folder=other)
    assert report["new"]["source"] == str(other) and report["differing"] == 1


# HTTP -----------------------------------------------------------------------------------------------------
@pytest.fixture
def client(stored, session_factory, read_factory):
    live, _, _ = stored
    app = build_wsgi_app(live, session_factory, read_factory)
    app.testing = True
    return app.test_client()


def test_post_compare_gives_the_report_and_commits_nothing(client, stored, session_factory):
    _, _, ids = stored
    before = snapshot(session_factory)
    response = client.post("/api/mappings/compare", json={"new": {"files": {"site_b.yaml": NEW_SITE}},
                                                          "messages": {"status": "ERROR"}})
    assert response.status_code == 200
    body = response.json
    assert list(body) == ["old", "new", "filter", "compared", "differing", "same", "messages"]
    assert body["filter"]["status"] == "ERROR" and body["compared"] == 1 and body["differing"] == 1
    [message] = body["messages"]
    assert message["id"] == ids[2] and message["new"]["ack_code"] == "AA"
    assert set(message) == {"id", "control_id", "message_type", "sender", "received_at", "status", "old", "new",
                            "same", "differences", "commands", "worklist"}
    assert snapshot(session_factory) == before


def test_post_compare_refuses_candidate_profiles_that_do_not_load(client):
    bad = NEW_SITE.replace("station_aet: CT_B9", "station_aet: CT_B9_IS_NO_AE_TITLE")
    response = client.post("/api/mappings/compare", json={"new": {"files": {"site_b.yaml": bad}}})
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    [problem] = response.json["problems"]
    assert (problem["file"], problem["line"], problem["key"]) == ("site_b.yaml", 14, "tables.procedures.CTH.station_aet")
    assert response.json["location"] == "new"


@pytest.mark.parametrize("body, words", [
    ([], "the body is a JSON object"),
    ({"colour": 1}, "the body is a JSON object"),
    ({"messages": {"from": 1}}, "messages selects stored messages by"),
    ({"messages": {"from_id": "one"}}, "from_id must be a whole number"),
    ({"messages": {"since": "yesterday"}}, "is not an ISO 8601 date and time"),
    ({"messages": {"limit": 5000}}, "limit 5000 must be from 1 to 1000"),
    ({"new": {"files": {"../evil.yaml": "name: x"}}}, "is not a profile file name"),
    ({"new": {"folder": "/etc"}}, 'new is {"files"'),
])
def test_post_compare_refuses_bad_requests(client, body, words):
    response = client.post("/api/mappings/compare", json=body)
    assert response.status_code == 400 and words in response.json["detail"], response.json


def test_a_candidate_file_can_be_left_out(client, stored):
    _, _, ids = stored
    body = client.post("/api/mappings/compare", json={"new": {"files": {"site_b.yaml": None}},
                                                      "messages": {"to_id": ids[0]}}).json
    [message] = body["messages"]
    assert message["old"]["profile"].startswith("site-b@") and message["new"]["profile"].startswith("default@")


# CLI ------------------------------------------------------------------------------------------------------
def test_ris_mapping_compare(stored, settings, monkeypatch, tmp_path, capsys):
    live, folder, ids = stored
    for name, value in {"RIS_DATA_DIR": str(settings.data_dir), "RIS_DATABASE_URL": settings.database_url,
                        "RIS_MAPPINGS_DIR": str(folder), "RIS_SITE_TIMEZONE": "Europe/Berlin"}.items():
        monkeypatch.setenv(name, value)
    candidate = tmp_path / "candidate" / "site_b.yaml"
    candidate.parent.mkdir()
    candidate.write_text(NEW_SITE)
    assert main(["mapping", "compare", str(candidate)]) == 1
    out = capsys.readouterr().out
    assert f"-- message {ids[0]} ORM^O01 C1 from SITEB^NORTH: differs" in out
    assert ('   commands: [0].order.procedures[0].steps[0].station_aets: ["CT_B1"] -> ["CT_B9"]' in out)
    assert "== 4 compared, 2 differ, 2 the same" in out and f"message {ids[1]} " not in out
    assert main(["mapping", "compare", str(folder), "--ids", str(ids[0])]) == 0      # the same folder: same
    assert "== 1 compared, 0 differ, 1 the same" in capsys.readouterr().out
    assert main(["mapping", "compare", str(candidate), "--status", "ERROR", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["messages"][0]["new"]["ack_code"] == "AA"
    candidate.write_text(NEW_SITE.replace("as: modality", "as: shout"))
    assert main(["mapping", "compare", str(candidate)]) == 2
    assert "site_b.yaml:9: step.modality.as: unknown transform 'shout'" in capsys.readouterr().err
    assert main(["mapping", "compare", str(candidate), "--ids", "x"]) == 2
