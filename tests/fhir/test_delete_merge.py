"""Delete (FHIR R4 http.html 3.1.0.7) where it makes sense, and Patient $merge on the merge of ADT A40."""

from __future__ import annotations

from sqlalchemy import select

from app.db import unit_of_work
from app.models import InboundMessage, Patient
from tests.fhir.conftest import fixture, matches, outcome, worklist

MR = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}


def person(fhir, value: str, family: str, system: str = "urn:oid:1.2.3.77") -> dict:
    return fhir.create({"resourceType": "Patient", "identifier": [{"type": {"coding": [MR]}, "system": system,
                                                                   "value": value}],
                        "name": [{"family": family, "given": ["Test"]}], "gender": "female",
                        "birthDate": "1970-01-01"})


def delete(fhir, url: str, **headers):
    return fhir.call("DELETE", url, headers=headers)


# Delete -----------------------------------------------------------------------------------------
def test_delete_a_patient_registered_in_error(fhir, session_factory):
    wrong = person(fhir, "ERR-1", "Mistake")
    url = f"/fhir/Patient/{wrong['id']}"
    stale = delete(fhir, url, **{"If-Match": 'W/"7"'})
    assert stale.status_code == 412
    assert delete(fhir, url, **{"If-Match": 'W/"1"'}).status_code == 204
    gone = fhir.get(url)
    assert gone.status_code == 410 and outcome(gone)["code"] == "deleted"
    assert "was deleted" in outcome(gone)["diagnostics"]
    assert matches(fhir.search("/fhir/Patient?identifier=urn:oid:1.2.3.77|ERR-1")) == []
    assert fhir.get(f"{url}/_history/1").json["name"][0]["family"] == "Mistake"   # history stays readable
    assert fhir.get(f"{url}/_history/2").status_code == 410
    history = fhir.get(f"{url}/_history").json
    assert [(e["request"]["method"], e["response"]["status"]) for e in history["entry"]] == [
        ("DELETE", "204 No Content"), ("POST", "201 Created")]
    assert "resource" not in history["entry"][0]
    assert delete(fhir, url).status_code == 204                  # deleting again changes nothing
    assert fhir.put(url, dict(wrong, gender="male")).status_code == 410
    again = person(fhir, "ERR-1", "Mistake")                      # a new registration is a new resource
    assert again["id"] != wrong["id"] and int(again["id"]) > int(wrong["id"])
    with unit_of_work(session_factory) as session:
        rows = session.scalars(select(InboundMessage).where(InboundMessage.message_type == "FHIR Patient delete")
                               .order_by(InboundMessage.id)).all()
        assert [r.status.value for r in rows] == ["ERROR", "PROCESSED", "PROCESSED"]   # 412, deleted, again
        assert rows[1].changes == [{"http_status": 204, "resource": f"Patient/{wrong['id']}"}]


def test_a_patient_with_orders_is_not_deleted(fhir, patient, session_factory):
    fhir.create(fixture("servicerequest_mr_knee.json", patient=patient["id"]))
    response = delete(fhir, f"/fhir/Patient/{patient['id']}")
    assert response.status_code == 409 and outcome(response)["code"] == "conflict"
    assert "cannot be deleted: it has 1 order" in outcome(response)["diagnostics"]
    assert fhir.get(f"/fhir/Patient/{patient['id']}").status_code == 200


def test_conditional_delete(fhir):
    person(fhir, "CD-1", "Same", system="urn:a")
    person(fhir, "CD-1", "Same", system="urn:b")
    assert delete(fhir, "/fhir/Patient?identifier=urn:a|NOBODY").status_code == 204
    several = delete(fhir, "/fhir/Patient?identifier=CD-1")
    assert several.status_code == 412 and "matches 2" in outcome(several)["diagnostics"]
    assert delete(fhir, "/fhir/Patient?identifier=urn:a|CD-1").status_code == 204
    assert [p["identifier"][0]["system"] for p in matches(fhir.search("/fhir/Patient?identifier=CD-1"))] == ["urn:b"]


def test_a_service_request_is_not_deleted_but_revoked(fhir, patient, read_factory):
    order = fhir.create(fixture("servicerequest_mr_knee.json", patient=patient["id"]))
    response = delete(fhir, f"/fhir/ServiceRequest/{order['id']}")
    assert response.status_code == 405
    assert "update its status to revoked" in outcome(response)["diagnostics"]
    assert worklist(read_factory, "FHIRACC77")


# $merge -------------------------------------------------------------------------------------------
def merge(fhir, *parameters):
    return fhir.post("/fhir/Patient/$merge", {"resourceType": "Parameters", "parameter": list(parameters)})


def ref(name: str, patient: dict) -> dict:
    return {"name": name, "valueReference": {"reference": f"Patient/{patient['id']}"}}


def test_merge_moves_the_orders_and_links_the_records(fhir, session_factory, read_factory):
    source, target = person(fhir, "MRG-SRC", "Source"), person(fhir, "MRG-TGT", "Target")
    order = fhir.create(fixture("servicerequest_mr_knee.json", patient=source["id"]))
    response = merge(fhir, ref("source-patient", source), ref("target-patient", target))
    assert response.status_code == 200, response.json
    answer = {p["name"]: p["resource"] for p in response.json["parameter"]}
    assert answer["input"]["parameter"][0]["name"] == "source-patient"
    assert answer["outcome"]["issue"][0]["diagnostics"] == f"Patient/{source['id']} merged into Patient/{target['id']}"
    result = answer["result"]
    assert result["id"] == target["id"] and result["link"] == [{"other": {"reference": f"Patient/{source['id']}"},
                                                                "type": "replaces"}]
    assert int(result["meta"]["versionId"]) == 2   # the target changed: it replaces the source now
    merged = fhir.get(f"/fhir/Patient/{source['id']}").json
    assert merged["active"] is False and merged["link"] == [{"other": {"reference": f"Patient/{target['id']}"},
                                                             "type": "replaced-by"}]
    moved = fhir.get(f"/fhir/ServiceRequest/{order['id']}").json
    assert moved["subject"]["reference"] == f"Patient/{target['id']}"
    assert worklist(read_factory, "FHIRACC77")[0].patient_id == "MRG-TGT"
    again = merge(fhir, ref("source-patient", source), ref("target-patient", target))
    assert again.status_code == 200 and "already" in again.json["parameter"][1]["resource"]["issue"][0]["diagnostics"]


def test_merge_guards_are_those_of_adt_a40(fhir, intake):
    source, target = person(fhir, "MRG-A", "Alpha"), person(fhir, "MRG-B", "Beta")
    assert merge(fhir, ref("source-patient", source), ref("target-patient", target)).status_code == 200
    back = merge(fhir, ref("source-patient", target), ref("target-patient", source))
    assert back.status_code == 422 and "was merged into" in outcome(back)["diagnostics"]   # target not active
    itself = merge(fhir, ref("source-patient", target), ref("target-patient", target))
    assert itself.status_code == 422 and "into itself" in outcome(itself)["diagnostics"]
    assert outcome(itself)["expression"] == ["Parameters.parameter[source-patient]"]
    other = person(fhir, "MRG-C", "Gamma")
    reverse = merge(fhir, ref("source-patient", other), ref("target-patient", target))
    assert reverse.status_code == 200
    a40 = ("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ADT^A40|M-9|P|2.5\r"
           "EVN|A40\rPID|||MRG-C^^^urn:oid:1.2.3.77||GAMMA\rMRG|MRG-B^^^urn:oid:1.2.3.77\r").encode()
    # the same guard in HL7: merging B into C, the other way round of the C -> B merge over FHIR, is refused
    assert b"MSA|AE" in intake.handle(a40)


def test_merge_parameters_by_identifier_preview_and_result_patient(fhir, session_factory):
    source, target = person(fhir, "MRG-X", "Ex"), person(fhir, "MRG-Y", "Why")
    ident = {"name": "source-patient-identifier", "valueIdentifier": {"system": "urn:oid:1.2.3.77", "value": "MRG-X"}}
    preview = merge(fhir, ident, ref("target-patient", target), {"name": "preview", "valueBoolean": True})
    assert preview.status_code == 200 and "nothing was changed" in \
        preview.json["parameter"][1]["resource"]["issue"][0]["diagnostics"]
    assert fhir.get(f"/fhir/Patient/{source['id']}").json["active"] is True
    with unit_of_work(session_factory) as session:
        assert session.get(Patient, int(source["id"])).merged_into_fk is None
    wrong = dict(target, identifier=[{"system": "urn:oid:1.2.3.77", "value": "SOMEONE-ELSE"}])
    refused = merge(fhir, ident, ref("target-patient", target), {"name": "result-patient", "resource": wrong})
    assert refused.status_code == 422 and "not the target's" in outcome(refused)["diagnostics"]
    renamed = dict(target, name=[{"family": "Whynot", "given": ["Yvonne"]}])
    done = merge(fhir, ident, ref("target-patient", target), {"name": "result-patient", "resource": renamed})
    assert done.status_code == 200
    assert fhir.get(f"/fhir/Patient/{target['id']}").json["name"][0]["family"] == "Whynot"
    mismatch = merge(fhir, ref("source-patient", source), {"name": "source-patient-identifier", "valueIdentifier": {
        "system": "urn:oid:1.2.3.77", "value": "MRG-Y"}}, ref("target-patient", target))
    assert mismatch.status_code == 422 and "different Patients" in outcome(mismatch)["diagnostics"]
    nobody = merge(fhir, {"name": "source-patient", "valueReference": {"reference": "Patient/999999"}},
                   ref("target-patient", target))
    assert nobody.status_code == 422 and "names no Patient" in outcome(nobody)["diagnostics"]
    assert merge(fhir, ref("target-patient", target)).status_code == 400
    unknown = merge(fhir, ref("source-patient", source), ref("target-patient", target), {"name": "colour",
                                                                                          "valueString": "x"})
    assert unknown.status_code == 400 and "no parameter 'colour'" in outcome(unknown)["diagnostics"]
    assert fhir.post(f"/fhir/Patient/{target['id']}/$merge", {"resourceType": "Parameters"}).status_code == 404
    assert fhir.post("/fhir/ServiceRequest/$merge", {"resourceType": "Parameters"}).status_code == 404


def test_merge_is_advertised_as_the_operation_it_is(fhir):
    [patient] = [r for r in fhir.get("/fhir/metadata").json["rest"][0]["resource"] if r["type"] == "Patient"]
    assert [(o["name"], o["definition"]) for o in patient["operation"]] == [
        ("merge", "http://hl7.org/fhir/OperationDefinition/Patient-merge")]
    assert "delete" in [i["code"] for i in patient["interaction"]] and patient["conditionalDelete"] == "single"

