"""The FHIR edge uses the engine's one mapping profile set (the HL7 intake's): a bad file is refused
there, the last good profile stays active, and FHIR keeps answering (B2 of the FHIR audit)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from interfaces.runtime import build_wsgi_app
from tests.fhir.conftest import FhirClient, fixture, worklist

TABLE = "\ntables:\n  procedures:\n    '57698-3': {modality: NM}\n"


def _app(settings, session_factory, read_factory, folder: Path):
    app = build_wsgi_app(dataclasses.replace(settings, mappings_dir=str(folder)), session_factory, read_factory)
    app.testing = True
    return app


def _nm_order(client: FhirClient, patient: dict, accession: str) -> dict:
    body = fixture("servicerequest_mr_knee.json", patient=patient["id"])
    body.pop("category")
    body["identifier"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "ACSN"}]}, "value": accession}]
    body["code"] = {"coding": [{"system": "http://loinc.org", "code": "57698-3"}]}
    return client.create(body)


def test_a_bad_mapping_file_does_not_break_fhir(settings, session_factory, read_factory, tmp_path):
    folder = tmp_path / "mappings"
    folder.mkdir()
    default = (Path(settings.mappings_path) / "default.yaml").read_text(encoding="utf-8")
    (folder / "default.yaml").write_text(default + TABLE, encoding="utf-8")
    (folder / "bad.yaml").write_text("name: bad\nextends: default\ncolour: blue\n", encoding="utf-8")
    app = _app(settings, session_factory, read_factory, folder)
    client = FhirClient(app.test_client())

    assert client.get("/fhir/Patient").status_code == 200
    patient = client.create(fixture("patient_doe.json"))
    _nm_order(client, patient, "NMACC1")
    assert worklist(read_factory, "NMACC1")[0].modality == "NM"
    # The same profile set as the intake and the analyst tools: they list the refused file.
    described = app.test_client().get("/api/mappings").json
    assert described["valid"] is False and [p["file"] for p in described["problems"]] == ["bad.yaml"]


def test_a_default_profile_broken_at_run_time_keeps_its_last_good_version(settings, session_factory, read_factory,
                                                                           tmp_path):
    folder = tmp_path / "mappings"
    folder.mkdir()
    default = (Path(settings.mappings_path) / "default.yaml").read_text(encoding="utf-8")
    (folder / "default.yaml").write_text(default + TABLE, encoding="utf-8")
    app = _app(settings, session_factory, read_factory, folder)
    client = FhirClient(app.test_client())
    patient = client.create(fixture("patient_doe.json"))

    (folder / "default.yaml").write_text(default + TABLE + "colour: blue\n", encoding="utf-8")
    profiles = app.extensions["ris.services"]["mapping_profiles"]
    assert [p.file for p in profiles.reload()] == ["default.yaml"]   # refused, as the intake sees it

    _nm_order(client, patient, "NMACC2")                                # the last good table still maps
    assert worklist(read_factory, "NMACC2")[0].modality == "NM"
    assert client.get(f"/fhir/Patient/{patient['id']}").status_code == 200
