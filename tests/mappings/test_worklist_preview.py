""""What will modality X see": GET /api/mappings/worklist and ``ris mapping worklist`` run the worklist SCP's own
handler as calling AE title X against the live worklist; their items must be exactly what a real C-FIND of that
modality (pynetdicom SCU, AE title X, over a socket to the engine's DICOM AE) receives."""

from __future__ import annotations

import json

import pytest
from pynetdicom.sop_class import ModalityWorklistInformationFind

from app.storage import ArchiveStore
from config.settings import REPO_ROOT
from interfaces.cli import main
from interfaces.dicom.server import DicomServer
from interfaces.hl7.intake import HL7Intake
from interfaces.mapping_tools import dataset_json, modality_identifier
from interfaces.runtime import build_wsgi_app
from mappings.profile import ProfileSet
from tests.dicom.conftest import associate, scu
from tests.test_intake import hl7, seg, segments

DAY, NEXT_DAY = "20261214", "20261215"


def order(ctrl: str, accession: str, station: str, start: str, modality: str = "CT") -> bytes:
    return hl7(f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||OMI^O23^OMI_O23|{ctrl}|P|2.5.1",
               f"PID|||PAT-{ctrl}^^^HOSP||VORSCHAU^{ctrl}||19700101|F",
               f"ORC|NW|PL-{ctrl}^HIS", seg("TQ1", {1: "1", 7: start}), f"OBR|1|PL-{ctrl}^HIS||CTH^CT head^L",
               seg("IPC", {1: accession, 2: f"RP-{ctrl}", 3: f"1.2.826.0.1.3680043.10.1356.99.9{len(ctrl)}{ctrl[-1]}",
                           4: f"SPS-{ctrl}", 5: modality, 9: station}))


@pytest.fixture
def live(settings, session_factory):
    """A live worklist: three steps on DAY (two for CT_ROOM1, one for CT_ROOM2), one on the next day."""
    intake = HL7Intake(settings, session_factory, ProfileSet(REPO_ROOT / "mappings", "default"))
    for ctrl, accession, station, start in (("W1", "WACC-1", "CT_ROOM1", f"{DAY}083000"),
                                            ("W2", "WACC-2", "CT_ROOM2", f"{DAY}091500"),
                                            ("W3", "WACC-3", "CT_ROOM1", f"{DAY}140000"),
                                            ("W4", "WACC-4", "CT_ROOM1", f"{NEXT_DAY}083000")):
        assert segments(intake.handle(order(ctrl, accession, station, start)))["MSA"][1] == "AA"


@pytest.fixture
def server(settings, session_factory, read_factory, live):
    srv = DicomServer(settings, session_factory, read_factory, ArchiveStore(settings.archive_path))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(settings, session_factory, read_factory, live):
    app = build_wsgi_app(settings, session_factory, read_factory)
    app.testing = True
    return app.test_client()


def c_find_as(port: int, calling_aet: str, **keys) -> list[dict]:
    """The answers a modality with AE title ``calling_aet`` receives over DICOM, as the preview writes them."""
    assoc = associate(scu(ModalityWorklistInformationFind, ae_title=calling_aet), port)
    try:
        answers = [ds for status, ds in assoc.send_c_find(modality_identifier(**keys), ModalityWorklistInformationFind)
                   if ds is not None]
    finally:
        assoc.release()
    return [dataset_json(ds) for ds in answers]


@pytest.mark.parametrize("query, keys, accessions", [
    (f"date={DAY}", {"date": DAY}, ["WACC-1", "WACC-2", "WACC-3"]),
    (f"date={DAY}&station_aet=CT_ROOM2", {"date": DAY, "station_aet": "CT_ROOM2"}, ["WACC-2"]),
    (f"date={NEXT_DAY}", {"date": NEXT_DAY}, ["WACC-4"]),
    (f"date=2026-12-14/2026-12-15", {"date": f"{DAY}-{NEXT_DAY}"}, ["WACC-1", "WACC-2", "WACC-3", "WACC-4"]),
    ("date=", {"date": ""}, ["WACC-1", "WACC-2", "WACC-3", "WACC-4"]),
    (f"date={DAY}&modality=MR", {"date": DAY, "modality": "MR"}, []),
])
def test_the_preview_answers_exactly_as_the_worklist_scp_answers_that_modality(client, server, query, keys,
                                                                             accessions):
    body = client.get(f"/api/mappings/worklist?calling_aet=CT_ROOM1&{query}").json
    assert body["calling_aet"] == "CT_ROOM1" and body["called_aet"] == "RIS"
    assert body["status"] == {"code": "0x0000", "meaning": "Success"}
    assert [item["AccessionNumber"] for item in body["items"]] == accessions and body["count"] == len(accessions)
    assert body["items"] == c_find_as(server.port, "CT_ROOM1", **keys)
    assert body["identifier"]["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepStartDate"] == keys["date"]


def test_an_item_carries_what_a_modality_needs(client):
    [item] = client.get(f"/api/mappings/worklist?calling_aet=CT_ROOM2&date={DAY}&station_aet=CT_ROOM2").json["items"]
    assert item["SpecificCharacterSet"] == "ISO_IR 192"
    assert (item["PatientID"], item["PatientName"], item["AccessionNumber"]) == ("PAT-W2", "VORSCHAU^W2", "WACC-2")
    [sps] = item["ScheduledProcedureStepSequence"]
    assert (sps["Modality"], sps["ScheduledStationAETitle"], sps["ScheduledProcedureStepStartTime"],
            sps["ScheduledProcedureStepID"]) == ("CT", "CT_ROOM2", "091500", "SPS-W2")


@pytest.mark.parametrize("query, status, words", [
    ("", 400, "give calling_aet"),
    ("calling_aet=CT_ROOM1_IS_TOO_LONG", 400, "is not an AE title"),
    ("calling_aet=CT1&date=20261332", 400, "20261332 is not a calendar date"),
    ("calling_aet=CT1&date=tomorrow", 400, "is not a date or range"),
    ("calling_aet=CT1&modality=C\\T", 400, "backslash"),
])
def test_bad_requests_name_what_is_wrong(client, query, status, words):
    response = client.get(f"/api/mappings/worklist?{query}")
    assert response.status_code == status and response.mimetype == "application/problem+json"
    assert words in response.json["detail"]


def test_ris_mapping_worklist_prints_what_the_modality_sees(live, settings, monkeypatch, capsys):
    for name, value in {"RIS_DATA_DIR": str(settings.data_dir), "RIS_DATABASE_URL": settings.database_url,
                        "RIS_SITE_TIMEZONE": "Europe/Berlin"}.items():
        monkeypatch.setenv(name, value)
    assert main(["mapping", "worklist", "--calling-aet", "CT_ROOM1", "--date", DAY, "--station-aet", "CT_ROOM1"]) == 0
    out = capsys.readouterr().out
    assert "== worklist for calling AE CT_ROOM1 at RIS (date 20261214, station CT_ROOM1)" in out
    assert "WACC-1" in out and "WACC-3" in out and "WACC-2" not in out
    assert "== 2 item(s); status 0x0000 Success" in out
    assert main(["mapping", "worklist", "--calling-aet", "CT_ROOM1", "--date", DAY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 3
    assert main(["mapping", "worklist", "--calling-aet", "CT_ROOM1", "--date", "yesterday"]) == 2
    assert "is not a date or range" in capsys.readouterr().err
