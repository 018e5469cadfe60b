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
