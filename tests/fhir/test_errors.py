"""Bad input at the FHIR edge: the right status, an OperationOutcome saying what and where, nothing applied."""

from __future__ import annotations

import pytest
from tests.fhir.conftest import counts, fixture, outcome


def patients(session_factory) -> int:
    return counts(session_factory)[0]


@pytest.mark.parametrize("raw, status, code, words", [
    ("{\"resourceType\": \"Patient\",", 400, "structure", "malformed JSON"),
    ("[1, 2]", 400, "structure", "must be a JSON object"),
    ("", 400, "required", "body is empty"),
    ("{\"resourceType\": \"Observation\"}", 400, "invalid", "does not match the URL"),
    (b"\xff\xfe{}", 400, "structure", "not UTF-8"),
])
def test_unreadable_bodies_are_400(fhir, session_factory, raw, status, code, words):
    response = fhir.post("/fhir/Patient", raw=raw)
    assert response.status_code == status
    assert outcome(response)["code"] == code and words in outcome(response)["diagnostics"]
    assert patients(session_factory) == 0


def test_structure_errors_name_the_element(fhir, session_factory):
    body = {"resourceType": "Patient", "identifier": [{"value": "E-1"}], "name": [{"family": ["not", "a", "string"]}],
            "birthDate": "12.04.1981"}
    response = fhir.post("/fhir/Patient", body)
    assert response.status_code == 400
    item = outcome(response)
    assert item["code"] == "structure"
    assert "Patient.name[0].family" in item["expression"] and "Patient.birthDate" in item["expression"]
    assert patients(session_factory) == 0


@pytest.mark.parametrize("change, status, expression, words", [
    ({"identifier": []}, 422, "Patient.identifier", "identifier with a value is required"),
    ({"gender": "robot"}, 422, "Patient.gender", "administrative-gender"),
    ({"birthDate": "1981"}, 422, "Patient.birthDate", "partial"),
    ({"identifier": [{"value": "A\\B"}]}, 422, "Patient.identifier[0].value", "backslash"),
    ({"identifier": [{"value": "A" * 65}]}, 422, "Patient.identifier[0].value", "longer than 64"),
])
def test_business_rules_are_422_at_the_element(fhir, session_factory, change, status, expression, words):
    body = dict(fixture("patient_doe.json"), **change)
    response = fhir.post("/fhir/Patient", body)
    assert response.status_code == status, response.json
    item = outcome(response)
    assert item["expression"] == [expression] and words in item["diagnostics"]
    assert patients(session_factory) == 0


def test_unknown_types_ids_and_interactions(fhir, patient):
    assert fhir.get("/fhir/Spaceship/1").status_code == 404
    assert "not a FHIR R4 resource type" in outcome(fhir.get("/fhir/Spaceship"))["diagnostics"]
    encounter = fhir.get("/fhir/Encounter?status=finished")
    assert encounter.status_code == 404 and "not served" in outcome(encounter)["diagnostics"]
    assert outcome(fhir.get("/fhir/Patient/abc"))["code"] == "not-found"
    assert outcome(fhir.get("/fhir/Patient/123456"))["diagnostics"] == "Patient/123456 does not exist"
    for method in ("DELETE", "PATCH"):   # Task follows MPPS: read and search only
        response = fhir.call(method, "/fhir/Task/1")
        assert response.status_code == 405 and "not supported" in outcome(response)["diagnostics"]
    assert fhir.put("/fhir/ImagingStudy/1", {"resourceType": "ImagingStudy"}).status_code == 405
    assert fhir.get("/fhir/Patient/1/_history/1/extra").status_code == 404


def test_r5_and_other_media_types_are_refused(fhir, patient, session_factory):
    body = fixture("patient_doe.json")
    xml = fhir.post("/fhir/Patient", raw="<Patient/>", content_type="application/fhir+xml")
    assert xml.status_code == 415 and "application/fhir+json" in outcome(xml)["diagnostics"]
    r5 = fhir.post("/fhir/Patient", body, content_type="application/fhir+json; fhirVersion=5.0")
    assert r5.status_code == 415 and "fhirVersion=5.0" in outcome(r5)["diagnostics"]
    accept = fhir.post("/fhir/Patient", body, headers={"Accept": "application/fhir+json; fhirVersion=5.0"})
    assert accept.status_code == 406
    ok = fhir.post("/fhir/Patient", dict(body, identifier=[{"value": "R4-OK"}]),
                   content_type="application/fhir+json; fhirVersion=4.0")
    assert ok.status_code == 201
    assert patients(session_factory) == 2


def test_prefer_return_minimal_and_operation_outcome(fhir):
    body = fixture("patient_doe.json")
    minimal = fhir.post("/fhir/Patient", body, headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.get_data() == b"" and minimal.headers["Location"].endswith(
        "/_history/1")
    body["identifier"] = [{"value": "OO-1"}]
    oo = fhir.post("/fhir/Patient", body, headers={"Prefer": "return=OperationOutcome"})
    assert oo.status_code == 201 and oo.json["resourceType"] == "OperationOutcome"


def test_base_url_takes_bundles_only(fhir):
    empty = fhir.post("/fhir", {"resourceType": "Bundle", "type": "batch", "entry": []})
    assert empty.status_code == 200 and empty.json["type"] == "batch-response" and empty.json.get("entry", []) == []
    search = fhir.get("/fhir")
    assert search.status_code == 405 and "whole-system search" in outcome(search)["diagnostics"]


def test_search_value_errors(fhir):
    assert "not a FHIR date" in outcome(fhir.get("/fhir/Patient?birthdate=yesterday"))["diagnostics"]
    assert fhir.get("/fhir/Patient?birthdate=sa2020").status_code == 400
    assert fhir.get("/fhir/ServiceRequest?identifier:of-type=nonsense").status_code == 400
    assert fhir.get("/fhir/Patient?_count=100000").status_code == 400


def test_routing_errors_under_fhir_are_operation_outcomes_too(fhir):
    wrong_method = fhir.post("/fhir/metadata", {"resourceType": "Parameters"})
    assert wrong_method.status_code == 405 and outcome(wrong_method)["code"] == "not-supported"
    nowhere = fhir.get("/fhir/Patient/1/_history/1/more")
    assert nowhere.status_code == 404 and "no FHIR endpoint" in outcome(nowhere)["diagnostics"]
