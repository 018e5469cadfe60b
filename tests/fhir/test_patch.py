"""JSON Patch (RFC 6902) on Patient and ServiceRequest (FHIR R4 http.html 3.1.0.6), with If-Match."""

from __future__ import annotations

import base64
import json

import pytest

from interfaces.fhir.errors import FhirError
from interfaces.fhir.patch import apply_patch
from tests.fhir.conftest import fixture, outcome, worklist
from tests.fhir.test_service_request_roundtrip import service_requests, state

PATCH = "application/json-patch+json"


# RFC 6902 appendix A, and the corners of RFC 6901 pointers ------------------------------------------
@pytest.mark.parametrize("doc, ops, result", [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"foo": "bar", "baz": "qux"}),
    ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc"]}], {"foo": ["bar", ["abc"]]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo", "foo": "bar"}),
    ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ({"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/c"}], {"a": {"b": 1}, "c": {"b": 1}}),
    ({"baz": "qux", "foo": ["a", 2, "c"]}, [{"op": "test", "path": "/baz", "value": "qux"},
                                           {"op": "test", "path": "/foo/1", "value": 2}],
     {"baz": "qux", "foo": ["a", 2, "c"]}),
    ({"a/b": 1, "m~n": 2}, [{"op": "replace", "path": "/a~1b", "value": 3}, {"op": "remove", "path": "/m~0n"}],
     {"a/b": 3}),
])
def test_rfc6902_examples(doc, ops, result):
    assert apply_patch(doc, ops) == result


@pytest.mark.parametrize("ops, status, words", [
    ({"op": "add"}, 400, "array of operations"),
    ([{"op": "frobnicate", "path": "/a"}], 400, "not a JSON Patch operation"),
    ([{"op": "add", "path": "/a"}], 400, "needs 'value'"),
    ([{"op": "add", "path": "a", "value": 1}], 400, "not a JSON Pointer"),
    ([{"op": "add", "path": "/missing/child", "value": 1}], 409, "does not exist"),
    ([{"op": "remove", "path": "/nope"}], 409, "does not exist"),
    ([{"op": "add", "path": "/list/5", "value": 1}], 409, "past the end"),
    ([{"op": "test", "path": "/flag", "value": 1}], 409, "test failed"),   # true is not 1 (RFC 6902 4.6)
    ([{"op": "move", "from": "/obj", "path": "/obj/inner"}], 409, "into itself"),
])
def test_bad_patches_name_the_operation(ops, status, words):
    doc = {"list": [1], "flag": True, "obj": {}}
    with pytest.raises(FhirError) as refused:
        apply_patch(doc, ops)
    assert refused.value.status == status and words in refused.value.diagnostics
    assert doc == {"list": [1], "flag": True, "obj": {}}   # all or nothing, and the input is untouched


# Over HTTP ------------------------------------------------------------------------------------------
def patch(fhir, url: str, ops, **headers):
    return fhir.call("PATCH", url, raw=json.dumps(ops), content_type=PATCH, headers=headers)


def test_patch_a_patient_with_if_match(fhir, patient):
    url = f"/fhir/Patient/{patient['id']}"
    changed = patch(fhir, url, [{"op": "test", "path": "/gender", "value": "female"},
                                {"op": "replace", "path": "/gender", "value": "other"},
                                {"op": "replace", "path": "/birthDate", "value": "1981-04-13"}], **{"If-Match": 'W/"1"'})
    assert changed.status_code == 200 and changed.headers["ETag"] == 'W/"2"'
    assert (changed.json["gender"], changed.json["birthDate"]) == ("other", "1981-04-13")
    assert changed.json["name"] == patient["name"] and changed.json["identifier"] == patient["identifier"]
    stale = patch(fhir, url, [{"op": "replace", "path": "/gender", "value": "male"}], **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412 and outcome(stale)["expression"] == ["If-Match"]
    failed = patch(fhir, url, [{"op": "replace", "path": "/gender", "value": "male"},
                               {"op": "test", "path": "/birthDate", "value": "2000-01-01"}])
    assert failed.status_code == 409 and outcome(failed)["expression"] == ["Patch[1]"]
    assert fhir.get(url).json["gender"] == "other"   # nothing of the failed patch was applied
    wrong_type = fhir.call("PATCH", url, raw=json.dumps([]), content_type="application/fhir+json")
    assert wrong_type.status_code == 415 and PATCH in outcome(wrong_type)["diagnostics"]
    invalid = patch(fhir, url, [{"op": "replace", "path": "/gender", "value": "robot"}])
    assert invalid.status_code in (400, 422) and outcome(invalid)["expression"] == ["Patient.gender"]
    other_id = patch(fhir, url, [{"op": "replace", "path": "/id", "value": "77"}])
    assert other_id.status_code == 400 and "does not match" in outcome(other_id)["diagnostics"]
    assert patch(fhir, "/fhir/Patient/999999", []).status_code == 404
    assert patch(fhir, "/fhir/Patient?identifier=x", []).status_code == 405


def test_patch_a_service_request_changes_only_the_patched_value(fhir, intake, session_factory, read_factory):
    from tests.fhir.test_service_request_roundtrip import OMI
    assert b"MSA|AA" in intake.handle(OMI)
    before = state(session_factory, "RTACC")
    mr, _ct = service_requests(fhir, "RTACC")
    response = patch(fhir, f"/fhir/ServiceRequest/{mr['id']}", [{"op": "add", "path": "/priority", "value": "stat"}],
                     **{"If-Match": f'W/"{mr["meta"]["versionId"]}"'})
    assert response.status_code == 200 and response.json["priority"] == "stat"
    after = state(session_factory, "RTACC")
    assert {k for k in after["order"] if after["order"][k] != before["order"][k]} == {"priority", "version", "updated_at"}
    assert after["order"]["priority"] == "S"
    assert after["procedures"][0]["priority"] == "S" and after["procedures"][1] == before["procedures"][1]
    assert [s["stations"] for s in after["procedures"][0]["steps"]] == \
        [s["stations"] for s in before["procedures"][0]["steps"]]
    revoke = patch(fhir, f"/fhir/ServiceRequest/{mr['id']}", [{"op": "replace", "path": "/status", "value": "revoked"}])
    assert revoke.status_code == 422 and "other open procedure" in outcome(revoke)["diagnostics"]


def test_patch_in_a_transaction(fhir, patient, read_factory):
    order = fhir.create(fixture("servicerequest_mr_knee.json", patient=patient["id"]))
    ops = [{"op": "replace", "path": "/status", "value": "revoked"}]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Binary", "contentType": PATCH,
                     "data": base64.b64encode(json.dumps(ops).encode()).decode()},
        "request": {"method": "PATCH", "url": f"ServiceRequest/{order['id']}", "ifMatch": 'W/"1"'}}]}
    answer = fhir.post("/fhir", bundle)
    assert answer.status_code == 200, answer.json
    assert answer.json["entry"][0]["response"]["status"] == "200 OK"
    assert answer.json["entry"][0]["resource"]["status"] == "revoked" and worklist(read_factory, "FHIRACC77") == []
    bundle["entry"][0]["resource"]["contentType"] = "application/fhir+json"
    refused = fhir.post("/fhir", bundle)
    assert refused.status_code == 415 and refused.json["issue"][0]["expression"] == ["Bundle.entry[0]"]
