"""Every file of ../shared/corpus/fhir, with the behaviour SOURCES.md gives for it (skipped without the corpus).

Client-assigned ids in the corpus ('Patient/dicom') are ids of the server the examples came from:
the test creates the patient here first and points the reference at the id this server assigned.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from app.commands import InstanceData
from app.db import unit_of_work
from app.models import Appointment, AppointmentStatus, Patient
from app.services.archive import index_instance
from tests.corpus import corpus_path
from tests.fhir.conftest import ACSN, counts, matches, outcome, worklist


def load(name: str) -> dict:
    return json.loads(corpus_path("fhir", name).read_text(encoding="utf-8"))


def create_patient(fhir, name: str) -> dict:
    return fhir.create(load(name))


def stored_patient(session_factory, pid: str) -> Patient:
    with unit_of_work(session_factory) as session:
        return session.get(Patient, int(pid))


# Patients ------------------------------------------------------------------------------------
def test_patient_dicom_family_only_and_unknown_extensions(fhir, session_factory):
    created = create_patient(fhir, "r4_patient_dicom_mint_extensions.json")
    row = stored_patient(session_factory, created["id"])
    assert (row.name, row.patient_id, row.issuer, row.sex) == ("MINT_TEST", "MINT1234",
                                                              "http://nema.org/examples/patients", "M")
    assert "extension" not in json.dumps(created)


def test_patient_official_name_wins_over_usual_and_maiden(fhir, session_factory):
    created = create_patient(fhir, "r4_patient_example_multiple_names_contact.json")
    row = stored_patient(session_factory, created["id"])
    assert (row.name, row.patient_id, row.birth_date) == ("Chalmers^Peter^James", "12345", dt.date(1974, 12, 25))


def test_patient_seealso_links_are_no_merge(fhir, session_factory):
    pat1 = create_patient(fhir, "r4_patient_pat1_link_seealso.json")
    pat2 = create_patient(fhir, "r4_patient_pat2_link_seealso_gender_ext.json")
    assert pat1["id"] != pat2["id"] and pat1["active"] and pat2["active"]
    assert "link" not in pat1 and "photo" not in pat1
    one, two = stored_patient(session_factory, pat1["id"]), stored_patient(session_factory, pat2["id"])
    assert one.merged_into_fk is None and two.merged_into_fk is None
    assert two.sex == "O" and pat2["gender"] == "other"


def test_patient_with_only_a_text_name_keeps_it_whole(fhir, session_factory, read_factory):
    created = create_patient(fhir, "r4_patient_ch_cjk_text_name.json")
    row = stored_patient(session_factory, created["id"])
    assert row.name == "张无忌" and row.patient_id == "3112219680806371X"
    assert created["name"][0]["family"] == "张无忌"
    order = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
             "code": {"text": "CT head"}, "subject": {"reference": f"Patient/{created['id']}"},
             "identifier": [{"type": {"coding": [ACSN]}, "value": "CJK-1"}],
             "occurrenceDateTime": "2026-12-10T09:00:00+01:00"}
    fhir.create(order)
    [item] = worklist(read_factory, "CJK-1")
    assert item.patient_name == "张无忌"  # the DICOM side declares ISO_IR 192 for it (tests/dicom)


# ServiceRequests -----------------------------------------------------------------------------
def test_service_request_without_identifier_gets_an_accession(fhir, read_factory):
    patient = create_patient(fhir, "r4_patient_dicom_mint_extensions.json")
    body = load("r4_servicerequest_di_chest_ct_no_accession.json")
    body["subject"]["reference"] = f"Patient/{patient['id']}"
    created = fhir.create(body)
    [accession] = [i["value"] for i in created["identifier"] if i.get("type", {}).get("coding") == [ACSN]]
    [item] = worklist(read_factory, accession)
    assert (item.modality, item.code_value, item.code_scheme, item.patient_id) == ("CT", "24627-2", "LN", "MINT1234")
    # 09:33:27+07:00 is 02:33:27Z, which is 04:33:27 in Europe/Berlin (CEST, +02:00, in May)
    assert item.scheduled_start == dt.datetime(2013, 5, 8, 4, 33, 27)
    assert created["occurrenceDateTime"] == "2013-05-08T09:33:27+07:00"   # as sent: it means the stored time
    assert created["requester"] == body["requester"]   # kept as sent; the worklist has its display
    assert item.requesting_physician == "Dr. Adam Careful"
    assert created["reasonCode"] == [{"text": "Check for metastatic disease"}]


def test_lipid_panel_is_no_imaging_order_and_contained_refs_are_not_looked_up(fhir, session_factory):
    patient = create_patient(fhir, "r4_patient_example_multiple_names_contact.json")
    body = load("r4_servicerequest_lipid_contained_observation_specimen.json")
    body["subject"]["reference"] = f"Patient/{patient['id']}"
    before = counts(session_factory)
    response = fhir.post("/fhir/ServiceRequest", body)
    assert response.status_code == 422
    item = outcome(response)
    assert "modality missing" in item["diagnostics"] and item["expression"] == ["ServiceRequest.code"]
    assert counts(session_factory) == before


def test_r5_service_request_is_refused_with_the_r5_element_named(fhir, session_factory):
    create_patient(fhir, "r4_patient_dicom_mint_extensions.json")
    before = counts(session_factory)
    body = load("r5_servicerequest_di_codeablereference.json")
    response = fhir.post("/fhir/ServiceRequest", body)
    assert response.status_code == 400
    item = outcome(response)
    assert "FHIR R5" in item["diagnostics"] and "ServiceRequest.code.concept" in item["expression"]
    declared = fhir.post("/fhir/ServiceRequest", body, content_type="application/fhir+json; fhirVersion=5.0")
    assert declared.status_code == 415
    assert counts(session_factory) == before


# ImagingStudy --------------------------------------------------------------------------------
def index_study(session_factory, study: dict, *, patient_id: str, accession: str = "") -> None:
    """Index the study's instances as C-STORE would (app.services.archive), from the corpus JSON."""
    uid = next(i["value"] for i in study["identifier"] if i.get("system") == "urn:dicom:uid").removeprefix("urn:oid:")
    with unit_of_work(session_factory) as session:
        for series in study["series"]:
            for n, instance in enumerate(series["instance"]):
                index_instance(session, InstanceData(
                    study_instance_uid=uid, series_instance_uid=series["uid"], sop_instance_uid=instance["uid"],
                    sop_class_uid=instance["sopClass"]["code"].removeprefix("urn:oid:"), path=f"/nowhere/{n}",
                    size=0, patient_id=patient_id, accession_number=accession, modality=series["modality"]["code"],
                    series_number=str(series.get("number", "")), instance_number=str(instance.get("number", ""))))


def test_imaging_study_linked_by_accession_in_identifier(fhir, session_factory):
    study = load("r4_imagingstudy_xr_accession_in_identifier.json")
    [accession] = [i["value"] for i in study["identifier"] if i.get("type", {}).get("coding", [{}])[0].get("code")
                   == "ACSN"]
    assert accession == "W12342398"
    patient = create_patient(fhir, "r4_patient_dicom_mint_extensions.json")
    order = fhir.create({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                         "code": {"text": "XR chest"}, "orderDetail": [{"coding": [
                             {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "DX"}]}],
                         "subject": {"reference": f"Patient/{patient['id']}"},
                         "identifier": [{"type": {"coding": [ACSN]}, "value": accession}]})
    index_study(session_factory, study, patient_id="MINT1234", accession=accession)
    uid = "2.16.124.113543.6003.1154777499.30246.19789.3503430046"
    for query in (f"identifier={accession}", f"identifier=urn:dicom:uid|urn:oid:{uid}",
                  f"basedon=ServiceRequest/{order['id']}", f"patient=Patient/{patient['id']}"):
        [found] = matches(fhir.search(f"/fhir/ImagingStudy?{query}"))
        assert found["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}], query
    assert found["subject"]["reference"] == f"Patient/{patient['id']}"
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"} in found["identifier"]
    assert found["numberOfInstances"] == sum(len(s["instance"]) for s in study["series"])
    assert [i["uid"] for s in found["series"] for i in s["instance"]] == \
        [i["uid"] for s in study["series"] for i in s["instance"]]
    assert fhir.get(f"/fhir/ImagingStudy/{found['id']}").json == found
    posted = fhir.post("/fhir/ImagingStudy", study)
    assert posted.status_code == 405 and "create" in outcome(posted)["diagnostics"]


def test_imaging_study_with_only_a_uid_stays_unmatched_but_listed(fhir, session_factory):
    study = load("r4_imagingstudy_ct_uid_only.json")
    index_study(session_factory, study, patient_id="NOBODY-HERE")
    [found] = matches(fhir.search("/fhir/ImagingStudy?identifier=urn:dicom:uid|urn:oid:"
                                  "2.16.124.113543.6003.1154777499.30246.19789.3503430045"))
    assert "basedOn" not in found and found["subject"] == {"identifier": {"value": "NOBODY-HERE"}}


@pytest.mark.parametrize("name", ["r5_imagingstudy_xr_accession_in_basedon.json", "r5_imagingstudy_ct_example.json"])
def test_r5_imaging_studies_are_not_accepted(fhir, name):
    """R5 moved the accession to basedOn.identifier; the archive links by the DICOM header's accession, which is
    the same W12342398 in both versions, so the R4 test above covers the link. Studies are never posted here."""
    study = load(name)
    response = fhir.post("/fhir/ImagingStudy", study)
    assert response.status_code == 405
    if "basedOn" in study:
        assert study["basedOn"][0]["identifier"]["value"] == "W12342398"


# Appointments --------------------------------------------------------------------------------
def appointment_for(fhir, name: str) -> tuple[dict, dict]:
    """The corpus Appointment with its 'Patient/example' pointed at the patient created here (Peter Chalmers)."""
    patient = create_patient(fhir, "r4_patient_example_multiple_names_contact.json")
    body = load(name)
    for part in body["participant"]:
        if part.get("actor", {}).get("reference") == "Patient/example":
            part["actor"]["reference"] = f"Patient/{patient['id']}"
    return patient, body


def test_proposed_appointment_is_kept_as_a_request_without_a_time(fhir, session_factory):
    patient, body = appointment_for(fhir, "r4_appointment_examplereq_proposed.json")
    created = fhir.create(body)
    assert created["status"] == "proposed" and "start" not in created
    with unit_of_work(session_factory) as session:
        row = session.get(Appointment, int(created["id"]))
        assert (row.status, row.start, row.placer_appointment_id, row.location) == \
            (AppointmentStatus.PROPOSED, None, "123", "South Wing, second floor")
        assert row.patient_fk == int(patient["id"]) and row.order_fk is None


def test_booked_appointment_gets_its_time_in_site_time_and_its_practitioners(fhir, session_factory):
    patient, body = appointment_for(fhir, "r4_appointment_2docs_booked.json")
    created = fhir.create(body)
    with unit_of_work(session_factory) as session:
        row = session.get(Appointment, int(created["id"]))
        # 09:00Z is 10:00 in Europe/Berlin (CET in December); two hours
        assert (row.status, row.start, row.duration_minutes) == (AppointmentStatus.BOOKED,
                                                                 dt.datetime(2013, 12, 9, 10), 120)
        assert row.resource == "Dr Adam Careful, Luigi Maas" and row.patient_fk == int(patient["id"])
    assert created["start"] == "2013-12-09T10:00:00+01:00" and created["end"] == "2013-12-09T12:00:00+01:00"


@pytest.mark.parametrize("name", ["r5_appointment_booked_basedon_servicerequest.json",
                                  "r5_appointment_examplereq_proposed.json"])
def test_r5_appointments_are_refused_with_a_clear_outcome(fhir, session_factory, name):
    """This endpoint is FHIR R4 only (issue 6: R5 refused with a clear OperationOutcome, no R5 base offered)."""
    before = counts(session_factory)
    response = fhir.post("/fhir/Appointment", load(name))
    assert response.status_code == 400 and "FHIR R5" in outcome(response)["diagnostics"]
    assert counts(session_factory) == before


# Transaction Bundle -----------------------------------------------------------------------------
def test_transaction_bundle_with_unsupported_entries_is_refused_whole(fhir, session_factory):
    """SOURCES.md: process atomically or refuse the unsupported entries for the whole transaction. The $lookup
    operation on ValueSet is not offered: it is named, before anything is applied."""
    bundle = load("r4_bundle_transaction_conditional_ops.json")
    assert bundle["type"] == "transaction"
    before = counts(session_factory)
    response = fhir.post("/fhir", bundle)
    assert response.status_code == 405
    issues = response.json["issue"]
    assert [i["expression"] for i in issues] == [["Bundle.entry[7]"]]
    assert all("nothing was processed" in i["diagnostics"] for i in issues)
    assert "ValueSet/$lookup" in issues[0]["diagnostics"]
    assert counts(session_factory) == before


def test_transaction_bundle_deletes_conditionally_and_by_id(fhir, session_factory):
    """The corpus's DELETE entries: Patient/234 (not here: nothing to delete) and the conditional delete of
    identifier 123456 (no match: nothing to delete) succeed as 204 alongside the conditional writes."""
    bundle = load("r4_bundle_transaction_conditional_ops.json")
    bundle["entry"] = [bundle["entry"][i] for i in (1, 3, 5, 6, 8)]
    response = fhir.post("/fhir", bundle)
    assert response.status_code == 200, response.json
    assert [e["response"]["status"] for e in response.json["entry"]] == [
        "201 Created", "201 Created", "204 No Content", "204 No Content", "200 OK"]
    assert counts(session_factory)[0] == 2


def test_transaction_bundle_supported_entries_all_or_nothing(fhir, session_factory):
    """Without the unsupported entries the first Patient (no identifier: the RIS keys patients by identifier)
    fails the whole transaction, naming the entry; the conditional entries alone apply, matching the
    malformed system 'http:/example.org/fhir/ids' literally."""
    bundle = load("r4_bundle_transaction_conditional_ops.json")
    bundle["entry"] = bundle["entry"][:5]
    before = counts(session_factory)
    response = fhir.post("/fhir", bundle)
    assert response.status_code == 422
    [item] = response.json["issue"]
    assert item["expression"] == ["Bundle.entry[0].resource.identifier"]
    assert item["diagnostics"].startswith("Bundle.entry[0] (POST Patient)")
    assert counts(session_factory) == before
    conditional = dict(bundle, entry=[bundle["entry"][1], bundle["entry"][3]])
    first = fhir.post("/fhir", conditional)
    assert [e["response"]["status"] for e in first.json["entry"]] == ["201 Created", "201 Created"]
    second = fhir.post("/fhir", conditional)
    assert [e["response"]["status"] for e in second.json["entry"]] == ["200 OK", "200 OK"]
    assert [e["resource"]["id"] for e in second.json["entry"]] == [e["resource"]["id"] for e in first.json["entry"]]
    [found] = matches(fhir.search("/fhir/Patient?identifier=http:/example.org/fhir/ids|456456"))
    assert found["identifier"][0]["system"] == "http:/example.org/fhir/ids"
    assert matches(fhir.search("/fhir/Patient?identifier=http://example.org/fhir/ids|456456")) == []
