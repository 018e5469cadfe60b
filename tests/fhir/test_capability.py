"""The CapabilityStatement says exactly what is served: every interaction and search parameter it lists
answers, and what it does not list is refused (405 / unknown parameter)."""

from __future__ import annotations

from interfaces.fhir.registry import KINDS

SAMPLE = {"token": "x", "string": "x", "date": "2020", "reference": "Patient/1", "number": "1"}
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
        assert entry["searchInclude"] or entry["searchRevInclude"], entry["type"]
        for name, values in (("_include", entry["searchInclude"]), ("_revinclude", entry["searchRevInclude"])):
            for value in values:
                response = fhir.get(f"/fhir/{entry['type']}?{name}={value}", headers={"Prefer": "handling=strict"})
                assert response.status_code == 200, (entry["type"], value, response.json)
