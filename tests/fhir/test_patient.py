"""Patient over FHIR R4: create, read, update with If-Match, vread/history, search and paging."""

from __future__ import annotations

from app.db import unit_of_work
from app.models import Patient
from tests.fhir.conftest import fixture, matches, outcome


def test_create_keeps_mr_identifier_official_name_and_reads_back(fhir, patient, session_factory):
    assert patient["meta"]["versionId"] == "1"
    assert patient["identifier"][0]["value"] == "FHIR-PAT-1"
    assert patient["identifier"][0]["system"] == "urn:oid:1.2.826.0.1.3680043.10.1356.99"
    assert patient["name"][0]["family"] == "Testperson" and patient["name"][0]["given"] == ["Johanna", "Maria"]
    with unit_of_work(session_factory) as session:
        row = session.get(Patient, int(patient["id"]))
        assert (row.patient_id, row.name, row.sex, row.birth_date.isoformat()) == \
            ("FHIR-PAT-1", "Testperson^Johanna^Maria^Dr.", "F", "1981-04-12")
    read = fhir.get(f"/fhir/Patient/{patient['id']}")
    assert read.status_code == 200 and read.headers["ETag"] == 'W/"1"'
    assert read.json == patient


def test_create_twice_with_the_same_identifier_is_a_conflict(fhir, patient):
    response = fhir.post("/fhir/Patient", fixture("patient_doe.json"))
    assert response.status_code == 409
    item = outcome(response)
    assert item["code"] == "conflict" and f"Patient/{patient['id']}" in item["diagnostics"]
    assert item["expression"] == ["Patient.identifier[1].value"]


def test_conditional_create_returns_the_existing_patient(fhir, patient):
    response = fhir.post("/fhir/Patient", fixture("patient_doe.json"),
                         headers={"If-None-Exist": "identifier=urn:oid:1.2.826.0.1.3680043.10.1356.99|FHIR-PAT-1"})
    assert response.status_code == 200 and response.json["id"] == patient["id"]
    bad = fhir.post("/fhir/Patient", fixture("patient_doe.json"), headers={"If-None-Exist": "nonsense=1"})
    assert bad.status_code == 400 and "nonsense" in outcome(bad)["diagnostics"]


def test_update_with_if_match_versions_and_vread(fhir, patient):
    pid = patient["id"]
    changed = dict(fixture("patient_doe.json"), id=pid, gender="other", birthDate="1981-04-13")
    first = fhir.put(f"/fhir/Patient/{pid}", changed, headers={"If-Match": 'W/"1"'})
    assert first.status_code == 200 and first.headers["ETag"] == 'W/"2"'
    assert (first.json["gender"], first.json["birthDate"], first.json["meta"]["versionId"]) == \
        ("other", "1981-04-13", "2")
    stale = fhir.put(f"/fhir/Patient/{pid}", changed, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert "version 2" in outcome(stale)["diagnostics"] and outcome(stale)["expression"] == ["If-Match"]
    old = fhir.get(f"/fhir/Patient/{pid}/_history/1")
    assert old.status_code == 200 and old.json["gender"] == "female" and old.headers["ETag"] == 'W/"1"'
    assert fhir.get(f"/fhir/Patient/{pid}/_history/2").json["gender"] == "other"
    assert fhir.get(f"/fhir/Patient/{pid}/_history/9").status_code == 404
    history = fhir.get(f"/fhir/Patient/{pid}/_history").json
    assert history["type"] == "history" and [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    # R4 bdl-3 / bdl-4: every history entry carries the request that made it and its response
    assert [e["request"] for e in history["entry"]] == [{"method": "PUT", "url": f"Patient/{pid}"},
                                                       {"method": "POST", "url": "Patient"}]
    assert [(e["response"]["status"], e["response"]["etag"]) for e in history["entry"]] == [
        ("200 OK", 'W/"2"'), ("201 Created", 'W/"1"')]
    assert history["entry"][0]["response"]["lastModified"] == first.json["meta"]["lastUpdated"]


def test_update_needs_the_matching_id_and_an_existing_patient(fhir, patient):
    body = fixture("patient_doe.json")
    missing = fhir.put(f"/fhir/Patient/{patient['id']}", body)
    assert missing.status_code == 400 and outcome(missing)["expression"] == ["Patient.id"]
    other = fhir.put(f"/fhir/Patient/{patient['id']}", dict(body, id="77"))
    assert other.status_code == 400 and "does not match" in outcome(other)["diagnostics"]
    unknown = fhir.put("/fhir/Patient/424242", dict(body, id="424242"))
    assert unknown.status_code == 404 and outcome(unknown)["code"] == "not-found"


def test_update_with_another_identifier_renames_like_a47(fhir, patient):
    body = fixture("patient_doe.json")
    body["identifier"][1]["value"] = "FHIR-PAT-1-NEW"
    response = fhir.put(f"/fhir/Patient/{patient['id']}", dict(body, id=patient["id"]))
    assert response.status_code == 200 and response.json["identifier"][0]["value"] == "FHIR-PAT-1-NEW"
    other = fhir.create({"resourceType": "Patient", "identifier": [{"system": body["identifier"][1]["system"],
                                                                     "value": "OTHER-1"}]})
    body["identifier"][1]["value"] = "OTHER-1"
    taken = fhir.put(f"/fhir/Patient/{patient['id']}", dict(body, id=patient["id"]))
    assert taken.status_code == 409 and other["id"] != patient["id"]


def test_search_by_identifier_name_birthdate_gender_and_id(fhir, patient):
    pid = patient["id"]
    fhir.create({"resourceType": "Patient", "identifier": [{"value": "X-2"}], "name": [{"family": "Other"}],
                 "birthDate": "1990-01-01", "gender": "male"})

    def ids(query):
        return [r["id"] for r in matches(fhir.search(f"/fhir/Patient?{query}"))]

    assert ids("identifier=FHIR-PAT-1") == [pid]
    assert ids("identifier=urn:oid:1.2.826.0.1.3680043.10.1356.99|FHIR-PAT-1") == [pid]
    assert ids("identifier=urn:oid:9.9|FHIR-PAT-1") == []
    assert ids("name=testp") == [pid] and ids("name=johanna") == [pid] and ids("name=maria") == [pid]
    assert ids("name:exact=Johanna") == [pid] and ids("name:exact=johanna") == [] and ids("name:exact=Joh") == []
    assert ids("name:contains=stper") == [pid] and ids("name=stper") == []
    assert ids("family=TESTPERSON") == [pid] and ids("family=Johanna") == []
    assert ids("birthdate=1981-04-12") == [pid] and ids("birthdate=1981") == [pid]
    assert ids("birthdate=lt1985-01-01") == [pid] and ids("birthdate=ge1985") != [pid]
    assert ids("gender=female") == [pid] and len(ids("gender=male,female")) == 2
    assert ids(f"_id={pid}") == [pid] and ids("_id=abc") == []
    assert ids("_lastUpdated=gt2000-01-01T00:00:00Z") == ids("") and ids("_lastUpdated=lt2000") == []


def test_paging_links_walk_every_match_once(fhir):
    for n in range(7):
        fhir.create({"resourceType": "Patient", "identifier": [{"value": f"PAGE-{n}"}], "name": [{"family": "Pager"}]})
    seen, url, pages = [], "/fhir/Patient?family=Pager&_count=3", 0
    while url and pages < 10:
        bundle = fhir.search(url)
        assert bundle["total"] == 7
        seen += [r["identifier"][0]["value"] for r in matches(bundle)]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = nxt[0].replace("http://localhost", "") if nxt else None
        pages += 1
    assert pages == 3 and sorted(seen) == [f"PAGE-{n}" for n in range(7)]
    assert fhir.search("/fhir/Patient?_count=0")["total"] == 7
    assert fhir.get("/fhir/Patient?_count=-1").status_code == 400


def test_unknown_search_parameter_lenient_and_strict(fhir, patient):
    lenient = fhir.search("/fhir/Patient?shoesize=42&identifier=FHIR-PAT-1")
    assert [r["id"] for r in matches(lenient)] == [patient["id"]]
    self_link = next(link["url"] for link in lenient["link"] if link["relation"] == "self")
    assert "shoesize" not in self_link and "identifier=FHIR-PAT-1" in self_link
    [note] = [e["resource"] for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "shoesize" in note["issue"][0]["diagnostics"] and note["issue"][0]["severity"] == "warning"
    strict = fhir.get("/fhir/Patient?shoesize=42", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and outcome(strict)["expression"] == ["shoesize"]
    modifier = fhir.get("/fhir/Patient?gender:text=f", headers={"Prefer": "handling=strict"})
    assert modifier.status_code == 400 and ":text" in outcome(modifier)["diagnostics"]


def test_patient_changed_by_hl7_gets_a_new_version(fhir, patient, intake):
    adt = ("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ADT^A08|V-1|P|2.5\r"
           "EVN|A08\r"
           "PID|||FHIR-PAT-1^^^urn:oid:1.2.826.0.1.3680043.10.1356.99||TESTPERSON^JOHANNA||19810412|F\r").encode()
    assert b"MSA|AA" in intake.handle(adt)
    read = fhir.get(f"/fhir/Patient/{patient['id']}")
    assert read.json["meta"]["versionId"] == "2" and read.json["name"][0]["family"] == "TESTPERSON"
    gone = fhir.get(f"/fhir/Patient/{patient['id']}/_history/1")
    assert gone.status_code == 200 and gone.json["name"][0]["family"] == "Testperson"


def test_a_patient_merged_by_hl7_points_to_the_survivor_and_cannot_be_updated(fhir, intake):
    for value in ("MRG-OLD", "MRG-NEW"):
        fhir.create({"resourceType": "Patient", "identifier": [{"system": "HOSP", "value": value}],
                     "name": [{"family": value}]})
    a40 = ("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ADT^A40|M-1|P|2.5\r"
           "EVN|A40\r"
           "PID|||MRG-NEW^^^HOSP||MRG-NEW\r"
           "MRG|MRG-OLD^^^HOSP\r").encode()
    assert b"MSA|AA" in intake.handle(a40)
    old = matches(fhir.search("/fhir/Patient?identifier=HOSP|MRG-OLD"))[0]
    new = matches(fhir.search("/fhir/Patient?identifier=HOSP|MRG-NEW"))[0]
    assert old["active"] is False and old["link"] == [{"other": {"reference": f"Patient/{new['id']}"},
                                                       "type": "replaced-by"}]
    assert new["active"] is True and new["link"] == [{"other": {"reference": f"Patient/{old['id']}"},
                                                      "type": "replaces"}]
    refused = fhir.put(f"/fhir/Patient/{old['id']}", dict(old, gender="male"))
    assert refused.status_code == 409 and f"Patient/{new['id']}" in outcome(refused)["diagnostics"]


def test_search_by_post_with_a_form(fhir, patient):
    response = fhir.client.post("/fhir/Patient/_search", data={"identifier": "FHIR-PAT-1"})
    assert response.status_code == 200 and [e["resource"]["id"] for e in response.json["entry"]] == [patient["id"]]
