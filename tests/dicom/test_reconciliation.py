"""Reconciliation through the JSON API (interfaces.http.reconciliation_api) with real peers: the corpus order over the
HL7 intake, DCMTK storescu for the image, findscu for the worklist, getscu / movescu + storescp for what leaves the
archive, checked with dcmdump and dciodvfy (IHE RAD TF-1 Scheduled Workflow; BUG-05, BUG-27)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from app.db import unit_of_work
from app.models import (AuditEvent, LinkStatus, Order, OrderStatus, OutboxMessage, ProcedureState, ProcedureStep,
                        StepStatus, Study)
from app.services.outbox import ORDER_STATUS, STEP_STATUS, route
from interfaces.dicom.server import DicomServer
from interfaces.hl7.intake import HL7Intake
from interfaces.runtime import build_wsgi_app
from mappings.profile import ProfileSet
from tests.corpus import corpus_path
from tests.dicom.conftest import archive_datasets, dcmtk, dump_to_dataset, findscu, received_files, run_dcmtk

BUG05_STUDY = "1.2.826.0.1.3680043.10.999.5.1"


@pytest.fixture
def hl7(settings, session_factory):
    return HL7Intake(settings, session_factory, ProfileSet(settings.mappings_path).get("default"))


@pytest.fixture
def client(settings, session_factory, read_factory):
    app = build_wsgi_app(settings, session_factory, read_factory)
    app.testing = True
    return app.test_client()


@pytest.fixture
def routed(session_factory):
    """Outbox rows for a destination "his" that takes order and step status changes."""
    route(session_factory, {ORDER_STATUS: ["his"], STEP_STATUS: ["his"]})


@pytest.fixture
def rserver(settings, session_factory, read_factory, store, storescp, routed):
    port, _ = storescp
    srv = DicomServer(dataclasses.replace(settings, dicom_known_aes=(f"STORESCP=127.0.0.1:{port}",)),
                      session_factory, read_factory, store)
    srv.start()
    yield srv
    srv.stop()


def place_bug05(hl7) -> None:
    ack = hl7.handle(corpus_path("bugs", "bug05_step1_orm_nw.hl7").read_bytes())
    assert b"MSA|AA|B05-1" in ack


def bug05_image(tmp_path):
    """The corpus image (no accession number) as a storable object: its dump plus series/instance UIDs."""
    ds = dump_to_dataset(corpus_path("bugs", "bug05_step2_image_without_accession.dump"), tmp_path)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    path = tmp_path / "bug05.dcm"
    ds.save_as(path)
    return path, ds


def storescu(port: int, path) -> str:
    result = run_dcmtk("storescu", "-v", "-aec", "RIS", "-aet", "DX_ROOM1", "-to", "30", "127.0.0.1", str(port),
                       str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def worklist_accessions(port: int, out_dir, accession: str) -> list[str]:
    result, responses = findscu(port, out_dir, f"AccessionNumber={accession}", "PatientID",
                                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus")
    assert result.returncode == 0, result.stdout + result.stderr
    return [str(r.AccessionNumber) for r in responses]


def dcmdump(path) -> str:
    result = run_dcmtk("dcmdump", "+P", "0008,0050", "+P", "0040,1001", "+P", "0040,0009", "+P", "0400,0565",
                       "+P", "0400,0563", "+P", "0010,0010", "+P", "0010,0020", str(path))
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.dcmtk
def test_bug05_manual_link_completes_the_order_and_the_worklist_item_goes(rserver, hl7, client, session_factory,
                                                                          tmp_path, storescp):
    place_bug05(hl7)
    assert worklist_accessions(rserver.port, tmp_path / "wl1", "ACC-5005") == ["ACC-5005"]
    path, sent = bug05_image(tmp_path)
    assert "Received Store Response (Success)" in storescu(rserver.port, path)

    # Unmatched, with the order as the first candidate and the evidence spelled out - but not linked.
    [waiting] = client.get("/api/reconciliation/studies").json["studies"]
    assert (waiting["study_instance_uid"], waiting["link_status"]) == (BUG05_STUDY, "UNMATCHED")
    best = waiting["candidates"][0]
    assert (best["accession_number"], best["sps_id"], best["linkable"]) == ("ACC-5005", "SPS-ACC-5005", True)
    assert best["reasons"][:2] == ["same patient P-1005", "modality DX matches step SPS-ACC-5005"]
    assert any(r.startswith("step SPS-ACC-5005 scheduled 2024-03-11 09:00") for r in best["reasons"])
    orders = client.get("/api/reconciliation/orders").json
    [scheduled] = orders["scheduled_with_candidates"]
    assert scheduled["accession_number"] == "ACC-5005"
    assert [c["study_instance_uid"] for c in scheduled["candidates"]] == [BUG05_STUDY]

    response = client.post(f"/api/reconciliation/studies/{BUG05_STUDY}/link",
                           json={"accession_number": "ACC-5005", "reason": "walk-in, worklist bypassed"})
    assert response.status_code == 200, response.json
    linked = response.json
    assert (linked["link_status"], linked["accession_number"], linked["requested_procedure_id"], linked["sps_id"],
            linked["link_manual"]) == ("LINKED", "ACC-5005", "RP-ACC-5005", "SPS-ACC-5005", True)

    with unit_of_work(session_factory) as session:
        order = session.scalars(select(Order).where(Order.accession_number == "ACC-5005")).one()
        [proc] = order.procedures
        assert (order.status, proc.state, proc.steps[0].status) == (
            OrderStatus.COMPLETED, ProcedureState.COMPLETED, StepStatus.COMPLETED)
        kinds = [(m.kind, m.payload.get("procedure_state", ""), m.payload.get("step_status", ""))
                 for m in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]
        assert kinds == [(ORDER_STATUS, "SCHEDULED", ""),                 # placed
                         (ORDER_STATUS, "IN_PROGRESS", ""),               # the link: performed, as an MPPS would say
                         (STEP_STATUS, "", "COMPLETED"), (ORDER_STATUS, "COMPLETED", "")]
        [event] = session.scalars(select(AuditEvent).where(AuditEvent.entity == "study")).all()
        detail = json.loads(event.detail)
        assert (event.action, event.entity_id, event.patient_key) == ("change", BUG05_STUDY, "P-1005")
        assert (detail["reconciliation"], detail["reason"], detail["before"]["accession_number"],
                detail["after"]["accession_number"]) == ("link", "walk-in, worklist bypassed", "", "ACC-5005")

    assert worklist_accessions(rserver.port, tmp_path / "wl2", "ACC-5005") == []   # no longer offered
    assert client.get("/api/reconciliation/studies").json["count"] == 0
    assert client.get("/api/orders?accession=ACC-5005").json["orders"][0]["study_instance_uids"] == [BUG05_STUDY]

    # What leaves the archive carries the order's accession and request attributes; the file stays as received.
    port, folder = storescp
    result = run_dcmtk("movescu", "-S", "-aec", "RIS", "-aem", "STORESCP", "-to", "30", "-ta", "30", "-td", "60",
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={BUG05_STUDY}", "127.0.0.1",
                       str(rserver.port))
    assert result.returncode == 0, result.stdout + result.stderr
    [moved] = sorted(p for p in folder.iterdir() if p.is_file())
    dump = dcmdump(moved)
    assert "(0008,0050) SH [ACC-5005]" in dump
    assert "(0040,1001) SH [RP-ACC-5005]" in dump and "(0040,0009) SH [SPS-ACC-5005]" in dump
    assert "(0400,0565) CS [CORRECT]" in dump and "(0400,0563) LO [RIS]" in dump
    got = dcmread(moved)
    [history] = got.OriginalAttributesSequence
    [originals] = history.ModifiedAttributesSequence
    assert originals.AccessionNumber == "" and "RequestAttributesSequence" in originals
    with unit_of_work(session_factory) as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == BUG05_STUDY)).one()
        archived = rserver.store.absolute(study.series[0].instances[0].path)
    assert dcmread(archived).AccessionNumber == ""                                 # immutable file


@pytest.mark.dcmtk
def test_unlink_restores_what_the_study_was_received_with(rserver, hl7, client, session_factory, tmp_path):
    place_bug05(hl7)
    path, _ = bug05_image(tmp_path)
    storescu(rserver.port, path)
    assert client.post(f"/api/reconciliation/studies/{BUG05_STUDY}/link",
                       json={"accession_number": "ACC-5005"}).status_code == 200
    response = client.post(f"/api/reconciliation/studies/{BUG05_STUDY}/unlink", json={"reason": "wrong order"})
    assert response.status_code == 200, response.json
    body = response.json
    assert (body["link_status"], body["accession_number"], body["sps_id"], body["order_id"], body["link_manual"]) == (
        "UNMATCHED", "", "", None, True)
    assert body["link_reason"] == "unlinked by a person: wrong order"
    with unit_of_work(session_factory) as session:
        actions = [json.loads(e.detail)["reconciliation"]
                   for e in session.scalars(select(AuditEvent).where(AuditEvent.entity == "study")
                                            .order_by(AuditEvent.id))]
    assert actions == ["link", "unlink"]
    # A person decided: a new instance of the study does not bring an automatic link back.
    more = dcmread(path)
    more.SOPInstanceUID = more.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    more.AccessionNumber = "ACC-5005"
    archive_datasets(rserver.port, more)
    assert client.get(f"/api/reconciliation/studies/{BUG05_STUDY}").json["link_status"] == "UNMATCHED"


def test_link_to_another_patients_order_is_refused(server, place, client, session_factory):
    place("ACC-OTHER", patient_id="P-OTHER")
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.PatientID, ds.AccessionNumber = generate_uid(), "P-MINE", "ACC-OTHER"
    archive_datasets(server.port, ds)
    [waiting] = client.get("/api/reconciliation/studies").json["studies"]
    [candidate] = waiting["candidates"]          # shown, because it has the study's accession number ...
    assert (candidate["accession_number"], candidate["linkable"]) == ("ACC-OTHER", False)
    assert candidate["reasons"][0].startswith("order of patient P-OTHER, the images are of P-MINE: never linked")
    response = client.post(f"/api/reconciliation/studies/{ds.StudyInstanceUID}/link",
                           json={"accession_number": "ACC-OTHER"})
    assert response.status_code == 409           # ... but never linked
    assert response.mimetype == "application/problem+json"
    assert "never linked to another patient's order" in response.json["detail"]
    with unit_of_work(session_factory) as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == ds.StudyInstanceUID)).one()
        assert (study.link_status, study.order_fk) == (LinkStatus.UNMATCHED, None)
        assert session.scalars(select(AuditEvent).where(AuditEvent.entity == "study")).all() == []


def test_link_requests_name_what_is_wrong(server, place, client):
    place("ACC-X", patient_id="P-X")
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.PatientID, ds.AccessionNumber = generate_uid(), "P-X", ""
    archive_datasets(server.port, ds)
    uid = ds.StudyInstanceUID
    cases = [({}, 400, "order_id"), ({"order_id": "7"}, 400, "order_id"), ({"accession_number": "NOPE"}, 404,
                                                                            "accession_number"),
             ({"order_id": 999}, 404, "order_id"),
             ({"accession_number": "ACC-X", "requested_procedure_id": "RP-NONE"}, 404, "requested_procedure_id")]
    for body, status, location in cases:
        response = client.post(f"/api/reconciliation/studies/{uid}/link", json=body)
        assert (response.status_code, response.json["location"]) == (status, location), (body, response.json)
    assert client.post("/api/reconciliation/studies/1.2.3.4/link", json={"order_id": 1}).status_code == 404
    assert client.post(f"/api/reconciliation/studies/{uid}/unlink").status_code == 409      # not linked
    assert client.get("/api/reconciliation/studies?status=LINKED").status_code == 400


def test_orders_performed_without_images_are_listed(server, place, client, session_factory):
    place("ACC-MPPS", patient_id="P-M", sps_id="SPS-M")
    with unit_of_work(session_factory) as session:
        step = session.scalars(select(ProcedureStep).where(ProcedureStep.sps_id == "SPS-M")).one()
        step.status = StepStatus.COMPLETED
    body = client.get("/api/reconciliation/orders").json
    assert [o["accession_number"] for o in body["performed_without_images"]] == ["ACC-MPPS"]
    assert body["several_studies"] == [] and body["scheduled_with_candidates"] == []


def test_several_studies_are_listed_for_reconciliation(server, place, client):
    place("ACC-5027", patient_id="P-1027", study_uid="1.2.826.0.1.3680043.10.999.27")
    for uid, modality in (("1.2.826.0.1.3680043.10.999.27", "CT"), ("1.2.826.0.1.3680043.10.999.27.9", "SR")):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid(), generate_uid()
        ds.PatientID, ds.AccessionNumber, ds.Modality = "P-1027", "ACC-5027", modality
        archive_datasets(server.port, ds)
    [order] = client.get("/api/reconciliation/orders").json["several_studies"]
    assert order["accession_number"] == "ACC-5027"
    assert sorted(s["study_instance_uid"] for s in order["studies"]) == [
        "1.2.826.0.1.3680043.10.999.27", "1.2.826.0.1.3680043.10.999.27.9"]
