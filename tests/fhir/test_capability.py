"""The CapabilityStatement says exactly what is served: every interaction and search parameter it lists
answers, and what it does not list is refused (405 / unknown parameter)."""

from __future__ import annotations

from interfaces.fhir.registry import KINDS

SAMPLE = {"token": "x", "string": "x", "date": "2020", "reference": "Patient/1", "number": "1", "uri": "http://x"}
ALL = ("read", "vread", "update", "create", "search-type", "history-instance", "delete", "patch")


def test_capability_statement_lists_the_registry(fhir):
    body = fhir.get("/fhir/metadata").json
    assert body["fhirVersion"] == "4.0.1" and body["format"] == ["json"]
    resources = {r["type"]: r for r in body["rest"][0]["resource"]}
    assert list(resources) == list(KINDS)
    for name, kind in KINDS.items():
        assert [i["code"] for i in resources[name]["interaction"]] == list(kind.interactions)
        assert [p["name"] for p in resources[name]["searchParam"]] == list(kind.search_params)


def test_every_listed_search_parameter_is_accepted_strictly(fhir):
    for entry in fhir.get("/fhir/metadata").json["rest"][0]["resource"]:
        for param in entry["searchParam"]:
            url = f"/fhir/{entry['type']}?{param['name']}={SAMPLE[param['type']]}"
            response = fhir.get(url, headers={"Prefer": "handling=strict"})
            assert response.status_code == 200, (url, response.json)


def test_listed_interactions_answer_and_others_are_refused(fhir):
    for entry in fhir.get("/fhir/metadata").json["rest"][0]["resource"]:
        name, listed = entry["type"], {i["code"] for i in entry["interaction"]}
        calls = {"read": ("GET", f"/fhir/{name}/999999"), "vread": ("GET", f"/fhir/{name}/999999/_history/1"),
                 "history-instance": ("GET", f"/fhir/{name}/999999/_history"),
                 "update": ("PUT", f"/fhir/{name}/999999"), "create": ("POST", f"/fhir/{name}"),
                 "search-type": ("GET", f"/fhir/{name}"), "delete": ("DELETE", f"/fhir/{name}/999999"),
                 "patch": ("PATCH", f"/fhir/{name}/999999")}
        for interaction in ALL:
            method, url = calls[interaction]
            body = {"resourceType": name, "id": "999999"} if method in ("PUT", "POST") else None
            response = fhir.call(method, url, body)
            if interaction in listed:
                assert response.status_code != 405, (interaction, name, response.json)
            else:
                assert response.status_code == 405, (interaction, name, response.status_code)


def test_every_listed_include_and_revinclude_is_accepted_strictly(fhir):
    for entry in fhir.get("/fhir/metadata").json["rest"][0]["resource"]:
        linked = entry["type"] != "Subscription"   # every type but Subscription refers to or is referred to
        assert bool(entry.get("searchInclude") or entry.get("searchRevInclude")) == linked, entry["type"]
        for name, values in (("_include", entry.get("searchInclude", [])),
                             ("_revinclude", entry.get("searchRevInclude", []))):
            for value in values:
                response = fhir.get(f"/fhir/{entry['type']}?{name}={value}", headers={"Prefer": "handling=strict"})
                assert response.status_code == 200, (entry["type"], value, response.json)


def test_conditional_interactions_are_served_as_listed(fhir, patient):
    body = fhir.get("/fhir/metadata").json
    resources = {r["type"]: r for r in body["rest"][0]["resource"]}
    for name, entry in resources.items():
        update = fhir.put(f"/fhir/{name}?_id=999999", {"resourceType": name})
        if entry["conditionalUpdate"]:
            assert update.status_code != 405, (name, update.json)
        else:
            assert update.status_code == 405, (name, update.status_code)
        create = fhir.post(f"/fhir/{name}", {"resourceType": name}, headers={"If-None-Exist": "_id=999999"})
        assert (create.status_code == 405) == (not entry["conditionalCreate"]), (name, create.status_code)
        delete = fhir.call("DELETE", f"/fhir/{name}?_id=999999")
        assert (delete.status_code == 405) == (entry["conditionalDelete"] == "not-supported"), (name, delete.json)
    # the conditional update of the Patient works: it selects the one patient and updates it
    found = fhir.put(f"/fhir/Patient?identifier={patient['identifier'][0]['system']}|"
                     f"{patient['identifier'][0]['value']}", dict(patient, gender="other"))
    assert found.status_code == 200 and found.json["id"] == patient["id"] and found.json["gender"] == "other"


def test_system_interactions_are_the_listed_bundle_types(fhir):
    listed = [i["code"] for i in fhir.get("/fhir/metadata").json["rest"][0]["interaction"]]
    assert listed == ["transaction", "batch"]
    for kind in listed:
        response = fhir.post("/fhir", {"resourceType": "Bundle", "type": kind, "entry": []})
        assert response.status_code == 200 and response.json["type"] == f"{kind}-response"
    for kind in ("history-system", "search-system"):
        assert kind not in listed
    assert fhir.get("/fhir?_id=1").status_code == 405
    refused = fhir.post("/fhir", {"resourceType": "Bundle", "type": "collection"})
    assert refused.status_code == 400 and "transaction and batch" in refused.json["issue"][0]["diagnostics"]


def test_history_type_is_not_served_and_says_so(fhir):
    for entry in fhir.get("/fhir/metadata").json["rest"][0]["resource"]:
        assert "history-type" not in [i["code"] for i in entry["interaction"]]
        response = fhir.get(f"/fhir/{entry['type']}/_history")
        assert response.status_code == 405 and "history-type" in response.json["issue"][0]["diagnostics"]


def test_the_documentation_says_what_is_served(fhir):
    text = fhir.get("/fhir/metadata").json["rest"][0]["documentation"]
    assert "Batch and transaction Bundles" in text and "No batch" not in text
    patchable = [k.name for k in KINDS.values() if "patch" in k.interactions]
    deletable = [k.name for k in KINDS.values() if "delete" in k.interactions]
    assert f"JSON Patch (application/json-patch+json): {', '.join(patchable) or 'none'}." in text
    assert f"Delete: {', '.join(deletable) or 'none'}." in text
