"""A real FHIR client (fhirpy) drives the running engine over loopback HTTP, and the order it creates is
answered by the engine's DICOM worklist (C-FIND with pynetdicom, TCP_NODELAY set)."""

from __future__ import annotations

import dataclasses

import fhirpy
import pytest
from fhirpy.base.exceptions import OperationOutcome as ClientOutcome
from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityWorklistInformationFind

from interfaces.runtime import Engine
from tests.dicom.conftest import associate, scu

ACSN = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}


@pytest.fixture
def engine(settings):
    running = Engine(dataclasses.replace(settings, scheduler_enabled=False))
    running.start()
    yield running
    running.stop()


def worklist_find(port: int, accession: str) -> list[Dataset]:
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 192"
    query.AccessionNumber = accession
    query.PatientName = ""
    query.PatientID = ""
    query.StudyInstanceUID = ""
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledStationAETitle = ""
    sps.ScheduledProcedureStepStartDate = ""
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledProcedureStepID = ""
    query.ScheduledProcedureStepSequence = [sps]
    assoc = associate(scu(ModalityWorklistInformationFind), port)
    try:
        answers = [identifier for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind)
                   if status and status.Status in (0xFF00, 0xFF01)]
    finally:
        assoc.release()
    return answers


def test_fhirpy_creates_searches_updates_and_the_worklist_answers(engine):
    client = fhirpy.SyncFHIRClient(f"http://127.0.0.1:{engine.http_port}/fhir")
    patient = client.resource("Patient", identifier=[{"system": "urn:oid:1.2.3.4", "value": "E2E-PAT"}],
                              name=[{"family": "Endtoend", "given": ["Erika"]}], gender="female",
                              birthDate="1977-07-07")
    patient.save()
    assert patient["id"] and patient["meta"]["versionId"] == "1"

    [found] = client.resources("Patient").search(identifier="urn:oid:1.2.3.4|E2E-PAT").fetch()
    assert found["id"] == patient["id"] and found["name"][0]["family"] == "Endtoend"
    found["name"] = [{"family": "Endtoend", "given": ["Erika", "Eva"]}]
    found.save()  # PUT
    assert found["meta"]["versionId"] == "2"
    assert client.reference("Patient", patient["id"]).to_resource()["name"][0]["given"] == ["Erika", "Eva"]

    order = client.resource(
        "ServiceRequest", status="active", intent="order",
        identifier=[{"type": {"coding": [ACSN]}, "value": "E2EACC1"}],
        code={"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}]},
        subject={"reference": f"Patient/{patient['id']}"}, occurrenceDateTime="2026-12-11T08:00:00+01:00")
    order.save()
    for n in range(4):  # more orders than one page holds: paging is followed by the client
        client.resource("ServiceRequest", status="active", intent="order", code={"text": "MR head"},
                        subject={"reference": f"Patient/{patient['id']}"},
                        occurrenceDateTime=f"2026-12-12T0{n}:00:00+01:00").save()
    every = client.resources("ServiceRequest").search(patient=f"Patient/{patient['id']}").limit(2).fetch_all()
    assert len(every) == 5 and len({r["id"] for r in every}) == 5

    with pytest.raises(ClientOutcome) as refused:
        client.resource("ServiceRequest", status="active", intent="order", code={"text": "CT"},
                        subject={"reference": "Patient/987654"}).save()
    assert "does not exist" in str(refused.value)

    [item] = worklist_find(engine.dicom.port, "E2EACC1")
    assert str(item.PatientName) == "Endtoend^Erika^Eva" and item.PatientID == "E2E-PAT"
    sps = item.ScheduledProcedureStepSequence[0]
    assert (sps.Modality, sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime[:4]) == \
        ("CT", "20261211", "0800")

    order["status"] = "revoked"
    order.save()
    assert order["status"] == "revoked"
    assert worklist_find(engine.dicom.port, "E2EACC1") == []


def test_fhirpy_transaction_is_all_or_nothing_and_resolves_references(engine):
    client = fhirpy.SyncFHIRClient(f"http://127.0.0.1:{engine.http_port}/fhir")
    patient_url, order_url = "urn:uuid:5b2c7f9e-0000-4000-8000-000000000001", "urn:uuid:5b2c7f9e-0000-4000-8000-2"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": order_url, "request": {"method": "POST", "url": "ServiceRequest"},
         "resource": {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                      "identifier": [{"type": {"coding": [ACSN]}, "value": "TXACC1"}],
                      "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}]},
                      "subject": {"reference": patient_url}, "occurrenceDateTime": "2026-12-11T09:30:00+01:00"}},
        {"fullUrl": patient_url, "request": {"method": "POST", "url": "Patient",
                                             "ifNoneExist": "identifier=urn:oid:1.2.3.4|TX-PAT"},
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3.4", "value": "TX-PAT"}],
                      "name": [{"family": "Transaction", "given": ["Tom"]}]}},
    ]}
    answer = client.execute("", method="post", data=bundle)   # POST [base]/
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "201 Created"]
    order, patient = (e["resource"] for e in answer["entry"])
    assert order["subject"]["reference"] == f"Patient/{patient['id']}"   # the urn:uuid reference, resolved
    [found] = client.resources("ServiceRequest").search(identifier="TXACC1").fetch()
    assert found["id"] == order["id"]
    [item] = worklist_find(engine.dicom.port, "TXACC1")
    assert str(item.PatientName) == "Transaction^Tom" and item.PatientID == "TX-PAT"

    # a second transaction: its patient matches (If-None-Exist: 200), its order is refused: nothing is applied
    bundle["entry"][0]["resource"]["identifier"][0]["value"] = "TXACC2"
    bundle["entry"][0]["resource"]["code"] = {"text": "lipid panel"}
    with pytest.raises(ClientOutcome) as refused:
        client.execute("", method="post", data=bundle)
    assert "Bundle.entry[0]" in str(refused.value) and "modality" in str(refused.value)
    assert client.resources("ServiceRequest").search(identifier="TXACC2").fetch() == []
    assert len(client.resources("Patient").search(identifier="urn:oid:1.2.3.4|TX-PAT").fetch()) == 1

    # the client's delete of a patient who has an order: refused, saying why
    with pytest.raises(ClientOutcome) as held:
        client.delete("Patient", patient["id"])
    assert "cannot be deleted: it has 1 order" in str(held.value)
