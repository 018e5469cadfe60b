"""ServiceRequest over FHIR R4: the same orders, procedures, steps and worklist items as HL7 ORM."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from app.commands import PerformedStepData
from app.db import unit_of_work
from app.services.tracking import start_performed_step, update_performed_step
from interfaces.runtime import build_wsgi_app
from tests.fhir.conftest import ACSN, FhirClient, counts, fixture, matches, outcome, worklist

ORM = (
    "MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ORM^O01|SR-1|P|2.3.1\r"
    "PID|||SRPAT^^^HOSP||HLSEVEN^HANNA||19700101|F\r"
    "ORC|NW|HL7-PL^HIS|||||^^^20261207081500\r"
    "OBR|1|HL7-PL^HIS||24877-3^MR Knee^LN||||||||||||||HL7ACC|||||MR\r"
).encode("ascii")


@pytest.fixture
def knee(fhir, patient) -> dict:
    return fhir.create(fixture("servicerequest_mr_knee.json", patient=patient["id"]))


def test_create_schedules_the_step_in_the_worklist(knee, patient, read_factory):
    assert knee["status"] == "active" and knee["subject"]["reference"] == f"Patient/{patient['id']}"
    assert knee["priority"] == "urgent" and knee["meta"]["versionId"] == "1"
    [item] = worklist(read_factory, "FHIRACC77")
    assert (item.patient_id, item.patient_name, item.modality) == ("FHIR-PAT-1", "Testperson^Johanna^Maria^Dr.", "MR")
    assert item.scheduled_start == dt.datetime(2026, 12, 7, 8, 15)  # 07:15Z in Europe/Berlin
    assert (item.code_value, item.code_scheme, item.code_meaning) == ("24877-3", "LN", "MR Knee")
    assert (item.placer_order_number, item.placer_issuer) == ("PLACER-77", "urn:oid:1.2.826.0.1.3680043.10.1356.98")
    assert (item.order_priority, item.requesting_physician, item.reason) == ("U", "Dr. Rita Referrer",
                                                                            "knee pain after fall")
    assert item.sps_id == item.requested_procedure_id == "FHIRACC77"
    uid = next(i["value"] for i in knee["identifier"] if i.get("system") == "urn:dicom:uid")
    assert uid == f"urn:oid:{item.study_instance_uid}"


def test_fhir_order_and_hl7_order_give_the_same_worklist_item(fhir, intake, read_factory):
    assert b"MSA|AA" in intake.handle(ORM)
    hl7_patient = matches(fhir.search("/fhir/Patient?identifier=HOSP|SRPAT"))[0]
    body = fixture("servicerequest_mr_knee.json", patient=hl7_patient["id"])
    body["identifier"] = [{"type": {"coding": [ACSN]}, "value": "FHIRACC"},
                          {"type": {"coding": [dict(ACSN, code="PLAC")]}, "system": "HIS", "value": "FHIR-PL"}]
    body.update(occurrenceDateTime="2026-12-07T08:15:00+01:00", priority=None, requester=None, reasonCode=None)
    fhir.create({k: v for k, v in body.items() if v is not None})
    [from_hl7] = worklist(read_factory, "HL7ACC")
    [from_fhir] = worklist(read_factory, "FHIRACC")
    different = {f.name for f in dataclasses.fields(from_hl7)
                 if getattr(from_hl7, f.name) != getattr(from_fhir, f.name)}
    # Only identifiers and texts the two orders carry differently; patient, modality, time, code are the same.
    assert different <= {"accession_number", "placer_order_number", "placer_issuer", "filler_order_number",
                         "requested_procedure_id", "sps_id", "study_instance_uid", "procedure_description",
                         "step_description", "step_pk"}     # (the filler order number is the accession here)
    assert from_fhir.scheduled_start == from_hl7.scheduled_start and from_fhir.modality == "MR"


def test_an_hl7_order_is_readable_as_service_request_and_task(fhir, intake):
    intake.handle(ORM)
    [sr] = matches(fhir.search("/fhir/ServiceRequest?identifier=HL7ACC"))
    assert sr["status"] == "active" and sr["intent"] == "order"
    assert {"type": {"coding": [ACSN]}, "value": "HL7ACC"} in sr["identifier"]
    assert sr["code"]["coding"][0] == {"code": "24877-3", "system": "http://loinc.org", "display": "MR Knee"}
    assert sr["occurrenceDateTime"] == "2026-12-07T08:15:00+01:00"
    patient = fhir.get(f"/fhir/{sr['subject']['reference']}").json
    assert patient["identifier"][0]["value"] == "SRPAT" and patient["name"][0]["family"] == "HLSEVEN"
    [task] = matches(fhir.search(f"/fhir/Task?based-on=ServiceRequest/{sr['id']}"))
    assert (task["status"], task["code"]["coding"][0]["code"], task["for"]) == ("accepted", "MR", sr["subject"])
    assert task["executionPeriod"]["start"] == "2026-12-07T08:15:00+01:00"
    assert fhir.get(f"/fhir/Task/{task['id']}").json == task


def test_without_accession_the_engine_assigns_one_and_returns_it(fhir, patient, read_factory):
    body = fixture("servicerequest_mr_knee.json", patient=patient["id"])
    body["identifier"] = body["identifier"][:1]
    created = fhir.create(body)
    [accession] = [i["value"] for i in created["identifier"] if i.get("type", {}).get("coding") == [ACSN]]
    assert accession.startswith("RIS") and len(worklist(read_factory, accession)) == 1


def test_search_by_patient_status_identifier_code_dates(fhir, knee, patient, intake):
    intake.handle(ORM)

    def ids(query):
        return [r["id"] for r in matches(fhir.search(f"/fhir/ServiceRequest?{query}"))]

    me = [knee["id"]]
    assert ids(f"patient=Patient/{patient['id']}") == me and ids(f"subject={patient['id']}") == me
    assert ids(f"patient=http://localhost/fhir/Patient/{patient['id']}") == me
    assert len(ids("status=active")) == 2 and ids("status=revoked") == []
    assert ids("identifier=FHIRACC77") == me
    assert ids("identifier=urn:oid:1.2.826.0.1.3680043.10.1356.98|PLACER-77") == me
    assert ids("identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|ACSN|FHIRACC77") == me
    uid = next(i["value"] for i in knee["identifier"] if i.get("system") == "urn:dicom:uid")
    assert ids(f"identifier=urn:dicom:uid|{uid}") == me
    assert len(ids("code=http://loinc.org|24877-3")) == 2
    assert ids("occurrence=2026-12-07T08:15:00+01:00") != [] and ids("occurrence=2027") == []
    assert len(ids("_lastUpdated=ge2020-01-01")) == 2 and ids("_lastUpdated=lt2020-01-01") == []


def test_revoke_cancels_the_order_and_the_worklist_forgets_it(fhir, knee, read_factory):
    url = f"/fhir/ServiceRequest/{knee['id']}"
    revoked = dict(knee, status="revoked")
    stale = fhir.put(url, revoked, headers={"If-Match": 'W/"0"'})
    assert stale.status_code == 412 and worklist(read_factory, "FHIRACC77")
    response = fhir.put(url, revoked, headers={"If-Match": 'W/"1"'})
    assert response.status_code == 200 and response.json["status"] == "revoked"
    assert response.json["meta"]["versionId"] == "2" and response.headers["ETag"] == 'W/"2"'
    assert worklist(read_factory, "FHIRACC77") == []
    [task] = matches(fhir.search(f"/fhir/Task?based-on=ServiceRequest/{knee['id']}"))
    assert task["status"] == "cancelled"
    assert fhir.get(f"{url}/_history/1").json["status"] == "active"
    assert [r["id"] for r in matches(fhir.search("/fhir/ServiceRequest?status=revoked"))] == [knee["id"]]


def test_hold_release_and_reschedule_by_update(fhir, knee, read_factory):
    url = f"/fhir/ServiceRequest/{knee['id']}"
    held = fhir.put(url, dict(knee, status="on-hold"))
    assert held.status_code == 200 and held.json["status"] == "on-hold" and worklist(read_factory, "FHIRACC77") == []
    moved = dict(knee, status="active", occurrenceDateTime="2026-12-09T12:00:00+01:00")
    released = fhir.put(url, moved)
    assert released.status_code == 200 and released.json["status"] == "active"
    [item] = worklist(read_factory, "FHIRACC77")
    assert item.scheduled_start == dt.datetime(2026, 12, 9, 12, 0)
    other_acc = dict(moved, identifier=[{"type": {"coding": [ACSN]}, "value": "CHANGED"}])
    refused = fhir.put(url, other_acc)
    assert refused.status_code == 409 and "cannot change" in outcome(refused)["diagnostics"]
    completed = fhir.put(url, dict(moved, status="completed"))
    assert completed.status_code == 422 and outcome(completed)["expression"] == ["ServiceRequest.status"]


@pytest.mark.parametrize("subject, words", [
    ({"reference": "Patient/999999"}, "does not exist"),
    ({"reference": "Group/1"}, "is not a Patient reference"),
    ({"reference": "#nothere"}, "names no contained Patient"),
    ({"identifier": {"system": "x", "value": "nobody"}}, "no Patient has identifier"),
])
def test_a_wrong_subject_reference_is_422_and_creates_nothing(fhir, patient, session_factory, subject, words):
    body = fixture("servicerequest_mr_knee.json", patient=patient["id"])
    body["subject"] = subject
    response = fhir.post("/fhir/ServiceRequest", body)
    assert response.status_code == 422
    assert words in outcome(response)["diagnostics"]
    assert outcome(response)["expression"][0].startswith("ServiceRequest.subject")
    assert counts(session_factory)[1] == 0


def test_a_non_imaging_order_is_refused_where_the_modality_should_be(fhir, patient, session_factory):
    body = fixture("servicerequest_mr_knee.json", patient=patient["id"])
    body.pop("category")
    body["code"] = {"coding": [{"system": "http://loinc.org", "code": "57698-3", "display": "Lipid panel"}]}
    response = fhir.post("/fhir/ServiceRequest", body)
    assert response.status_code == 422
    item = outcome(response)
    assert item["code"] == "required" and "modality" in item["diagnostics"]
    assert item["expression"] == ["ServiceRequest.code"]
    assert counts(session_factory)[1] == 0


def test_a_duplicate_accession_is_a_conflict_at_its_identifier(fhir, knee, patient):
    body = fixture("servicerequest_mr_knee.json", patient=patient["id"])
    body["identifier"] = body["identifier"][1:]
    response = fhir.post("/fhir/ServiceRequest", body)
    assert response.status_code == 409
    assert outcome(response)["expression"] == ["ServiceRequest.identifier[0]"]
    too_long = dict(body, identifier=[{"type": {"coding": [ACSN]}, "value": "X" * 17}])
    response = fhir.post("/fhir/ServiceRequest", too_long)
    assert response.status_code == 422 and "16 characters" in outcome(response)["diagnostics"]


def test_a_contained_patient_is_registered_from_the_order(fhir, read_factory):
    created = fhir.create(fixture("servicerequest_contained_patient.json"))
    [patient] = matches(fhir.search("/fhir/Patient?identifier=HOSP|CONT-PAT-9"))
    assert created["subject"]["reference"] == f"Patient/{patient['id']}" and patient["gender"] == "other"
    accession = next(i["value"] for i in created["identifier"] if i.get("type", {}).get("coding") == [ACSN])
    [item] = worklist(read_factory, accession)
    assert (item.modality, item.scheduled_start) == ("US", dt.datetime(2026, 12, 8, 10, 0))


def test_task_search_by_patient_status_and_code(fhir, knee, patient):
    def ids(query):
        return [r["id"] for r in matches(fhir.search(f"/fhir/Task?{query}"))]

    [task] = ids(f"patient=Patient/{patient['id']}")
    assert ids("status=accepted") == [task] and ids("status=completed") == []
    assert ids("code=MR") == [task] and ids("identifier=FHIRACC77") == [task]
    create = fhir.post("/fhir/Task", {"resourceType": "Task", "status": "requested", "intent": "order"})
    assert create.status_code == 405 and "create" in outcome(create)["diagnostics"]


def test_mpps_progress_shows_in_task_and_service_request(fhir, knee, session_factory):
    performed = PerformedStepData(sop_instance_uid="1.2.826.0.1.3680043.10.1356.77.1", status="IN PROGRESS",
                                  accession_number="FHIRACC77", sps_id="FHIRACC77", modality="MR")
    with unit_of_work(session_factory) as session:
        start_performed_step(session, performed)
    [task] = matches(fhir.search(f"/fhir/Task?based-on=ServiceRequest/{knee['id']}"))
    assert task["status"] == "in-progress"
    started = fhir.get(f"/fhir/ServiceRequest/{knee['id']}").json
    assert started["status"] == "active" and started["meta"]["versionId"] == "2"
    with unit_of_work(session_factory) as session:
        update_performed_step(session, dataclasses.replace(performed, status="COMPLETED"))
    assert matches(fhir.search(f"/fhir/Task?based-on=ServiceRequest/{knee['id']}"))[0]["status"] == "completed"
    done = fhir.get(f"/fhir/ServiceRequest/{knee['id']}").json
    assert done["status"] == "completed" and done["meta"]["versionId"] == "3"
    revoke = fhir.put(f"/fhir/ServiceRequest/{knee['id']}", dict(done, status="revoked"))
    assert revoke.status_code == 409 and "COMPLETED" in outcome(revoke)["diagnostics"]


def test_modality_from_the_mapping_profiles_procedure_table(settings, session_factory, read_factory, tmp_path):
    """An analyst maps procedure codes to modalities in the profile (``tables: procedures``), no code change."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    default = (Path(settings.mappings_path) / "default.yaml").read_text(encoding="utf-8")
    (folder / "default.yaml").write_text(default + "\ntables:\n  procedures:\n    '57698-3': {modality: NM}\n",
                                         encoding="utf-8")
    app = build_wsgi_app(dataclasses.replace(settings, mappings_dir=str(folder)), session_factory, read_factory)
    client = FhirClient(app.test_client())
    patient = client.create(fixture("patient_doe.json"))
    body = fixture("servicerequest_mr_knee.json", patient=patient["id"])
    body.pop("category")
    body["code"] = {"coding": [{"system": "http://loinc.org", "code": "57698-3"}]}
    client.create(body)
    [item] = worklist(read_factory, "FHIRACC77")
    assert item.modality == "NM"


def test_an_error_in_a_contained_patient_points_into_it(fhir, session_factory):
    body = fixture("servicerequest_contained_patient.json")
    body["contained"][0]["gender"] = "robot"
    response = fhir.post("/fhir/ServiceRequest", body)
    assert response.status_code == 422
    assert outcome(response)["expression"] == ["ServiceRequest.contained[0].gender"]
    assert counts(session_factory)[:2] == (0, 0)


def test_include_and_revinclude_between_order_patient_task_and_study(fhir, knee, patient):
    def entries(query):
        bundle = fhir.search(query)
        return sorted((e["search"]["mode"], e["resource"]["resourceType"]) for e in bundle["entry"])

    sr = f"ServiceRequest?_id={knee['id']}"
    assert entries(f"/fhir/{sr}&_include=ServiceRequest:subject&_revinclude=Task:based-on") == [
        ("include", "Patient"), ("include", "Task"), ("match", "ServiceRequest")]
    assert entries(f"/fhir/Task?based-on=ServiceRequest/{knee['id']}&_include=Task:based-on&_include=Task:patient") \
        == [("include", "Patient"), ("include", "ServiceRequest"), ("match", "Task")]
    assert entries(f"/fhir/Patient?_id={patient['id']}&_revinclude=ServiceRequest:patient") == [
        ("include", "ServiceRequest"), ("match", "Patient")]
    refused = fhir.get(f"/fhir/{sr}&_include=ServiceRequest:requester", headers={"Prefer": "handling=strict"})
    assert refused.status_code == 400 and "ServiceRequest:subject" in outcome(refused)["diagnostics"]
    lenient = fhir.search(f"/fhir/{sr}&_include=ServiceRequest:requester")
    assert [e["search"]["mode"] for e in lenient["entry"]] == ["match", "outcome"]
    self_link = next(link["url"] for link in lenient["link"] if link["relation"] == "self")
    assert "_include" not in self_link
