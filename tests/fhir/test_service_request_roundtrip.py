"""A FHIR update changes only what the client changed (B1 of the FHIR audit), contained resources are kept
and resolved (BUG-30, B3), and every requested procedure of an order is a ServiceRequest of its own (B6).

The core is the reference: every column of the order, its patient, procedures, steps and stations is
compared before and after, so a value lost by a PUT fails the test whichever column it is in.
"""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest
from sqlalchemy import inspect, select

from app.db import unit_of_work
from app.models import Order, ProcedureStep, RequestedProcedure
from tests.corpus import corpus_path
from tests.fhir.conftest import ACSN, fixture, matches, outcome, worklist
from tests.test_intake import hl7, seg

PLAC = dict(ACSN, code="PLAC")

# Two requested procedures (two ORC/OBR groups), the second with two steps (two IPC), priority T (timing
# critical, HL7 table 0485) that FHIR cannot carry, a referring physician, station AE titles and names.
OMI = hl7(
    "MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||OMI^O23^OMI_O23|RT-1|P|2.5.1",
    "PID|||RTPAT^^^HOSP||ROUND^TRIP^T^^DR||19700101|F",
    seg("PV1", {2: "O", 8: "1234^REFER^ROBERT"}),
    seg("ORC", {1: "NW", 2: "RT-PL^HIS", 12: "5678^ORDER^OLGA"}),
    seg("TQ1", {1: "1", 7: "20261207100000", 9: "T"}),
    seg("OBR", {1: "1", 2: "RT-PL^HIS", 4: "MRB^MR brain^L", 31: "^head trauma"}),
    seg("IPC", {1: "RTACC", 2: "RP-1", 3: "1.2.826.0.1.3680043.10.1356.61.1", 4: "SPS-1", 5: "MR", 7: "MRSTN",
                9: "MR_ROOM1"}),
    seg("ORC", {1: "NW", 2: "RT-PL^HIS"}),
    seg("TQ1", {1: "1", 7: "20261207081500"}),
    seg("OBR", {1: "2", 2: "RT-PL^HIS", 4: "CTH^CT head^L"}),
    seg("IPC", {1: "RTACC", 2: "RP-2", 3: "1.2.826.0.1.3680043.10.1356.61.2", 4: "SPS-2A", 5: "CT", 7: "CTSTN1",
                9: "CT_ROOM1~CT_ROOM2"}),
    seg("IPC", {1: "RTACC", 2: "RP-2", 3: "1.2.826.0.1.3680043.10.1356.61.2", 4: "SPS-2B", 5: "CT", 7: "CTSTN2",
                9: "CT_ROOM3"}),
)


def _columns(obj) -> dict:
    return {a.key: getattr(obj, a.key) for a in inspect(obj).mapper.column_attrs}


def state(session_factory, accession: str) -> dict:
    """Every column of the order, its patient, procedures, steps and stations."""
    with unit_of_work(session_factory) as session:
        order = session.scalars(select(Order).where(Order.accession_number == accession)).one()
        return {"order": _columns(order), "patient": _columns(order.patient),
                "procedures": [{**_columns(p), "steps": [{**_columns(s), "stations": [_columns(a) for a in s.stations]}
                                                         for s in p.steps]} for p in order.procedures]}


def service_requests(fhir, accession: str) -> list[dict]:
    return matches(fhir.search(f"/fhir/ServiceRequest?requisition={accession}"))


def put(fhir, resource: dict, **kw):
    return fhir.put(f"/fhir/ServiceRequest/{resource['id']}", {k: v for k, v in resource.items() if k != "meta"}, **kw)


@pytest.fixture
def hl7_order(intake, session_factory):
    assert b"MSA|AA" in intake.handle(OMI)
    with unit_of_work(session_factory) as session:   # what the default profile does not map, set as a site would
        order = session.scalars(select(Order).where(Order.accession_number == "RTACC")).one()
        order.procedures[1].steps[0].performing_physician = "PERFORM^PETRA"
        order.procedures[0].priority = "R"
    return "RTACC"


def test_every_requested_procedure_is_a_service_request_of_its_own(fhir, hl7_order):
    mr, ct = service_requests(fhir, hl7_order)
    for sr, rp, uid, code in ((mr, "RP-1", "61.1", "MRB"), (ct, "RP-2", "61.2", "CTH")):
        assert sr["requisition"] == {"type": {"coding": [ACSN]}, "value": "RTACC"}
        assert {"type": {"text": "Requested Procedure ID"}, "value": rp} in sr["identifier"]
        assert {"system": "urn:dicom:uid", "value": f"urn:oid:1.2.826.0.1.3680043.10.1356.{uid}"} in sr["identifier"]
        assert sr["code"]["coding"][0]["code"] == code
        assert {"type": {"coding": [PLAC]}, "system": "HIS", "value": "RT-PL"} in sr["identifier"]
    assert [d["coding"][0]["code"] for d in ct["orderDetail"]] == ["CT"]
    assert mr["occurrenceDateTime"] == "2026-12-07T10:00:00+01:00"
    assert ct["occurrenceDateTime"] == "2026-12-07T08:15:00+01:00"
    tasks = matches(fhir.search(f"/fhir/Task?based-on=ServiceRequest/{ct['id']}"))
    assert sorted(t["identifier"][0]["value"] for t in tasks) == ["SPS-2A", "SPS-2B"]
    # The requesting physician: a contained Practitioner with the exact name, referenced from requester.
    assert mr["requester"] == {"reference": "#requester", "display": "OLGA ORDER"}
    assert mr["contained"] == [{"resourceType": "Practitioner", "id": "requester", "name": [
        {"use": "official", "text": "OLGA ORDER", "family": "ORDER", "given": ["OLGA"]}]}]
    assert mr["reasonCode"] == [{"text": "head trauma"}] and "priority" not in mr   # T has no FHIR code


def test_put_of_what_was_read_changes_nothing_for_an_hl7_order(fhir, hl7_order, session_factory, read_factory):
    before = state(session_factory, hl7_order)
    assert before["order"]["requesting_physician"] == "ORDER^OLGA"
    assert before["order"]["referring_physician"] == "REFER^ROBERT" and before["order"]["priority"] == "T"
    assert [a["ae_title"] for a in before["procedures"][1]["steps"][0]["stations"]] == ["CT_ROOM1", "CT_ROOM2"]
    worklist_before = sorted(worklist(read_factory, hl7_order), key=lambda i: i.sps_id)
    for sr in service_requests(fhir, hl7_order):
        response = put(fhir, sr, headers={"If-Match": f'W/"{sr["meta"]["versionId"]}"'})
        assert response.status_code == 200, response.json
        assert response.json == sr   # the same resource, the same version: nothing changed
    assert state(session_factory, hl7_order) == before
    assert sorted(worklist(read_factory, hl7_order), key=lambda i: i.sps_id) == worklist_before


def test_put_changes_only_what_the_client_changed(fhir, hl7_order, session_factory):
    before = state(session_factory, hl7_order)
    _mr, ct = service_requests(fhir, hl7_order)
    moved = dict(ct, occurrenceDateTime="2026-12-08T08:15:00+01:00")
    moved["contained"] = [{"resourceType": "Practitioner", "id": "requester",
                           "name": [{"family": "Neworder", "given": ["Nina", "N"], "prefix": ["Dr."]}]}]
    assert put(fhir, moved).status_code == 200
    after = state(session_factory, hl7_order)
    assert after["order"]["requesting_physician"] == "Neworder^Nina^N^Dr."
    steps_before, steps_after = before["procedures"][1]["steps"], after["procedures"][1]["steps"]
    # both steps of the procedure moved by one day; nothing else of them changed
    assert [s["scheduled_start"] for s in steps_after] == [dt.datetime(2026, 12, 8, 8, 15),
                                                          dt.datetime(2026, 12, 8, 8, 15)]
    for old, new in zip(steps_before, steps_after):
        assert {k: v for k, v in new.items() if k not in ("scheduled_start", "updated_at")} == \
            {k: v for k, v in old.items() if k not in ("scheduled_start", "updated_at")}
    assert after["procedures"][0] == before["procedures"][0]   # the other procedure is untouched
    changed = {k for k in after["order"] if after["order"][k] != before["order"][k]}
    assert changed == {"requesting_physician", "version", "updated_at"}
    assert after["order"]["version"] == before["order"]["version"] + 1


def test_revoking_one_procedure_of_an_order_with_others_open_is_refused(fhir, hl7_order, session_factory):
    before = state(session_factory, hl7_order)
    first, _ = service_requests(fhir, hl7_order)
    response = put(fhir, dict(first, status="revoked"))
    assert response.status_code == 422 and "other open procedure" in outcome(response)["diagnostics"]
    assert state(session_factory, hl7_order) == before


BUG30 = "bug30_servicerequest_two_contained.json"


def bug30(patient_id: str) -> dict:
    body = json.loads(corpus_path("bugs", BUG30).read_text(encoding="utf-8"))
    body["subject"]["reference"] = f"Patient/{patient_id}"
    body["contained"][1]["subject"]["reference"] = f"Patient/{patient_id}"
    return body


@pytest.fixture
def wrist_mapped(tmp_path, settings, session_factory, read_factory):
    """A site that maps LOINC 37637-6 (XR Wrist Views) to DX in its profile's procedure table."""
    from pathlib import Path
    import dataclasses
    from interfaces.runtime import build_wsgi_app
    from tests.fhir.conftest import FhirClient
    folder = tmp_path / "mappings"
    folder.mkdir()
    default = (Path(settings.mappings_path) / "default.yaml").read_text(encoding="utf-8")
    (folder / "default.yaml").write_text(default + "\ntables:\n  procedures:\n    '37637-6': {modality: DX}\n",
                                         encoding="utf-8")
    app = build_wsgi_app(dataclasses.replace(settings, mappings_dir=str(folder)), session_factory, read_factory)
    app.testing = True
    return FhirClient(app.test_client())


def test_bug30_without_a_modality_mapping_is_a_422_naming_what_is_missing(fhir, patient, session_factory):
    response = fhir.post("/fhir/ServiceRequest", bug30(patient["id"]))
    assert response.status_code == 422
    item = outcome(response)
    assert item["expression"] == ["ServiceRequest.code"]
    for words in ("http://loinc.org|37637-6 'XR Wrist Views'", "orderDetail", "table 'procedures'", "'default'"):
        assert words in item["diagnostics"]
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(Order)).all() == []


def test_bug30_both_contained_resources_are_kept_and_resolved(wrist_mapped, read_factory, session_factory):
    fhir = wrist_mapped
    patient = fhir.create(fixture("patient_doe.json"))
    body = bug30(patient["id"])
    created = fhir.create(body)
    assert created["contained"] == body["contained"]
    assert created["requester"] == {"reference": "#req"} and created["reasonReference"] == [{"reference": "#why"}]
    assert "reasonCode" not in created and created["category"] == body["category"]
    accession = created["requisition"]["value"]
    [item] = worklist(read_factory, accession)
    assert (item.requesting_physician, item.reason, item.modality) == ("Testdoc^Omega", "Suspected scaphoid fracture",
                                                                       "DX")
    read = fhir.get(f"/fhir/ServiceRequest/{created['id']}").json
    assert read == created
    # read -> PUT is a no-op for a FHIR order too
    before = state(session_factory, accession)
    assert put(fhir, read).json == read and state(session_factory, accession) == before


def test_kept_forms_yield_to_a_later_change_of_the_order(wrist_mapped, intake, session_factory):
    fhir = wrist_mapped
    patient = fhir.create(fixture("patient_doe.json"))
    created = fhir.create(bug30(patient["id"]))
    with unit_of_work(session_factory) as session:   # e.g. an ORC XO from the HIS naming another physician
        order = session.get(RequestedProcedure, int(created["id"])).order
        order.requesting_physician = "Other^Otto"
    read = fhir.get(f"/fhir/ServiceRequest/{created['id']}").json
    assert read["requester"] == {"reference": "#requester", "display": "Otto Other"}
    # only what is referenced is shown (R4 dom-3): the Practitioner #req no longer is; #why still is
    assert [c["id"] for c in read["contained"]] == ["why", "requester"]
    assert read["reasonReference"] == [{"reference": "#why"}]


def test_other_elements_are_kept_as_sent(wrist_mapped, session_factory):
    fhir = wrist_mapped
    patient = fhir.create(fixture("patient_doe.json"))
    body = bug30(patient["id"])
    body.update(note=[{"text": "patient in wheelchair"}], bodySite=[{"text": "left wrist"}],
                occurrencePeriod={"start": "2024-03-12T10:00:00+01:00", "end": "2024-03-12T10:30:00+01:00"},
                extension=[{"url": "http://example.org/fhir/StructureDefinition/x", "valueString": "y"}])
    body.pop("occurrenceDateTime")
    body["identifier"].append({"system": "urn:oid:1.2.3.999", "value": "OTHER-ID-1"})
    body["code"]["coding"].append({"system": "urn:oid:1.2.3.998", "code": "WRIST-LOCAL"})
    created = fhir.create(body)
    for key in ("note", "bodySite", "occurrencePeriod", "extension", "code"):
        assert created[key] == body[key], key
    assert {"system": "urn:oid:1.2.3.999", "value": "OTHER-ID-1"} in created["identifier"]
    assert "occurrenceDateTime" not in created
    with unit_of_work(session_factory) as session:
        proc = session.get(RequestedProcedure, int(created["id"]))
        assert proc.steps[0].scheduled_start == dt.datetime(2024, 3, 12, 10, 0)


def test_nested_containment_is_refused(fhir, patient, session_factory):
    body = bug30(patient["id"])
    body["contained"][0]["contained"] = [{"resourceType": "Organization", "id": "o1", "name": "X"}]
    response = fhir.post("/fhir/ServiceRequest", body)
    assert response.status_code == 400
    item = outcome(response)
    assert item["code"] == "invariant" and "dom-2" in item["diagnostics"]
    assert item["expression"] == ["ServiceRequest.contained[0].contained"]
    unreferenced = bug30(patient["id"])
    unreferenced.pop("reasonReference")
    response = fhir.post("/fhir/ServiceRequest", unreferenced)
    assert response.status_code == 400 and "dom-3" in outcome(response)["diagnostics"]
    assert outcome(response)["expression"] == ["ServiceRequest.contained[1]"]
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(Order)).all() == []


def test_a_local_reference_to_nothing_is_422(wrist_mapped):
    fhir = wrist_mapped
    patient = fhir.create(fixture("patient_doe.json"))
    body = bug30(patient["id"])
    body["requester"] = {"reference": "#nobody"}
    body["contained"][0]["id"] = "nobody-else"
    body["reasonReference"].append({"reference": "#nobody-else"})
    response = fhir.post("/fhir/ServiceRequest", body)
    assert response.status_code == 422
    assert outcome(response)["expression"] == ["ServiceRequest.requester"]
    assert "'#nobody' names no contained resource" in outcome(response)["diagnostics"]
