"""Batch and transaction Bundles (FHIR R4 http.html 3.1.0.11): all-or-nothing, urn:uuid references,
conditional create/update/references, a transaction-response naming each entry."""

from __future__ import annotations

import copy

from tests.fhir.conftest import ACSN, counts, fixture, matches, worklist

PATIENT_URN = "urn:uuid:8f3c1a52-0c8a-4d55-9d0a-2b1f0e6a7c01"
ORDER_URN = "urn:uuid:3d7a7b10-5a3e-4c55-8f7f-9a3e2b1c0d02"


def order(subject: str, accession: str, **extra) -> dict:
    return {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "code": {"text": "CT thorax"},
            "subject": {"reference": subject}, "identifier": [{"type": {"coding": [ACSN]}, "value": accession}],
            "occurrenceDateTime": "2026-12-11T10:00:00+01:00", **extra}


def transaction(*entries, kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict, full_url: str = "", **request) -> dict:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"], **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def messages(app, kind: str) -> list[dict]:
    return app.test_client().get("/api/messages", query_string={"type": kind}).json["messages"]


def test_patient_and_order_in_one_transaction_reference_by_urn_uuid(fhir, app, read_factory):
    # The order comes first in the Bundle: it is still applied after the patient it references.
    bundle = transaction(post(order(PATIENT_URN, "TX-1"), ORDER_URN), post(fixture("patient_doe.json"), PATIENT_URN))
    response = fhir.post("/fhir", bundle)
    assert response.status_code == 200, response.json
    answer = response.json
    assert answer["type"] == "transaction-response"
    sr, pat = (e["resource"] for e in answer["entry"])
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "201 Created"]
    assert answer["entry"][1]["response"]["location"] == f"Patient/{pat['id']}/_history/1"
    assert answer["entry"][0]["response"]["etag"] == 'W/"1"'
    assert sr["subject"]["reference"] == f"Patient/{pat['id']}"
    [item] = worklist(read_factory, "TX-1")
    assert item.patient_id == "FHIR-PAT-1" and item.modality == "CT"
    [row] = messages(app, "FHIR Bundle transaction")
    assert row["status"] == "PROCESSED" and row["ack_code"] == "AA"


def test_a_failing_entry_rolls_back_everything_and_is_named(fhir, app, session_factory):
    before = counts(session_factory)
    lipids = order(PATIENT_URN, "TX-2", code={"text": "lipid panel"})
    response = fhir.post("/fhir", transaction(post(fixture("patient_doe.json"), PATIENT_URN), post(lipids)))
    assert response.status_code == 422
    [item] = response.json["issue"]
    assert item["diagnostics"].startswith("Bundle.entry[1] (POST ServiceRequest): ")
    assert item["expression"] == ["Bundle.entry[1].resource.code"]
    assert counts(session_factory) == before          # the patient of entry 0 was rolled back too
    [row] = messages(app, "FHIR Bundle transaction")
    assert row["status"] == "ERROR" and "Bundle.entry[1]" in row["error"]
    unknown = fhir.post("/fhir", transaction(post(order("urn:uuid:00000000-0000-0000-0000-000000000000", "TX-3"))))
    assert unknown.status_code == 400 and "names no entry" in unknown.json["issue"][0]["diagnostics"]
    cycle = transaction(post(dict(fixture("patient_doe.json"), link=[{"other": {"reference": ORDER_URN},
                                                                       "type": "seealso"}]), PATIENT_URN),
                        post(order(PATIENT_URN, "TX-4"), ORDER_URN))
    looped = fhir.post("/fhir", cycle)
    assert looped.status_code == 400 and "cycle" in looped.json["issue"][0]["diagnostics"]
    assert counts(session_factory) == before


def test_conditional_create_update_and_references_and_if_match(fhir, patient, session_factory):
    pat = fixture("patient_doe.json")
    system, value = pat["identifier"][1]["system"], pat["identifier"][1]["value"]
    again = post(pat, PATIENT_URN, ifNoneExist=f"identifier={system}|{value}")
    conditional_ref = order(f"Patient?identifier={system}|{value}", "TX-5")
    first = fhir.post("/fhir", transaction(again, post(conditional_ref)))
    assert first.status_code == 200, first.json
    found, created = (e["resource"] for e in first.json["entry"])
    assert first.json["entry"][0]["response"]["status"] == "200 OK" and found["id"] == patient["id"]
    assert created["subject"]["reference"] == f"Patient/{patient['id']}"
    renamed = copy.deepcopy(pat)
    renamed["name"][1]["family"] = "Renamed"
    put = {"resource": renamed, "request": {"method": "PUT", "url": f"Patient?identifier={system}|{value}"}}
    updated = fhir.post("/fhir", transaction(put))
    assert updated.json["entry"][0]["response"]["status"] == "200 OK"
    assert updated.json["entry"][0]["resource"]["name"][0]["family"] == "Renamed"
    stale = {"resource": dict(renamed, id=patient["id"]),
             "request": {"method": "PUT", "url": f"Patient/{patient['id']}", "ifMatch": 'W/"1"'}}
    before = counts(session_factory)
    refused = fhir.post("/fhir", transaction(post(order(f"Patient/{patient['id']}", "TX-6")), stale))
    assert refused.status_code == 412
    assert refused.json["issue"][0]["expression"] == ["Bundle.entry[1].request.ifMatch"]
    assert counts(session_factory) == before
    none = fhir.post("/fhir", transaction(post(order("Patient?identifier=nobody", "TX-7"))))
    assert none.status_code == 412 and "matches 0" in none.json["issue"][0]["diagnostics"]


def test_reads_and_searches_run_after_the_writes_and_minimal_answers(fhir, patient):
    bundle = transaction({"request": {"method": "GET", "url": "Patient?identifier=FHIR-PAT-2"}},
                         {"request": {"method": "GET", "url": f"Patient/{patient['id']}"}},
                         post(dict(fixture("patient_doe.json"), identifier=[{"value": "FHIR-PAT-2"}]), PATIENT_URN))
    answer = fhir.post("/fhir", bundle, headers={"Prefer": "return=minimal"}).json
    search, read, created = answer["entry"]
    assert [r["id"] for r in matches(search["resource"])] == [created["fullUrl"].rsplit("/", 1)[1]]
    assert read["resource"]["id"] == patient["id"] and "resource" not in created


def test_type_level_conditional_update_creates_then_updates(fhir):
    body = dict(fixture("patient_doe.json"), identifier=[{"system": "urn:x", "value": "CU-1"}])
    first = fhir.put("/fhir/Patient?identifier=urn:x|CU-1", body)
    assert first.status_code == 201
    second = fhir.put("/fhir/Patient?identifier=urn:x|CU-1", dict(body, gender="male"))
    assert second.status_code == 200 and second.json["id"] == first.json["id"] and second.json["gender"] == "male"
    assert second.json["meta"]["versionId"] == "2"


def test_batch_entries_succeed_or_fail_on_their_own(fhir, patient, app):
    bundle = transaction(post(order(f"Patient/{patient['id']}", "BA-1")),
                         post(order(f"Patient/{patient['id']}", "BA-2", code={"text": "lipid panel"})),
                         {"request": {"method": "DELETE", "url": f"Patient/{patient['id']}"}}, kind="batch")
    answer = fhir.post("/fhir", bundle).json
    assert answer["type"] == "batch-response"
    ok, bad, delete = answer["entry"]
    assert ok["response"]["status"] == "201 Created"
    assert bad["response"]["status"] == "422 Unprocessable Entity"
    assert bad["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[1].resource.code"]
    assert delete["response"]["status"] == "409 Conflict"   # the patient has the order of entry 0 now
    assert "it has 1 order" in delete["response"]["outcome"]["issue"][0]["diagnostics"]
    assert matches(fhir.search("/fhir/ServiceRequest?identifier=BA-1"))
    assert messages(app, "FHIR Bundle batch")[0]["status"] == "PROCESSED"


def test_other_bundles_and_methods_on_the_base_are_refused(fhir):
    assert fhir.post("/fhir", {"resourceType": "Bundle", "type": "collection"}).status_code == 400
    assert fhir.post("/fhir", fixture("patient_doe.json")).status_code == 400
    assert fhir.call("DELETE", "/fhir").status_code == 405
