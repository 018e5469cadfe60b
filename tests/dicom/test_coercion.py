"""Attribute coercion (interfaces.dicom.coercion; DICOM PS3.3 C.12.1.1.9 Original Attributes Sequence, PS3.4 B.4.1.3):
on store from the order, on retrieve from the index after a patient merge; checked with DCMTK dcmdump and
dicom3tools dciodvfy."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import subprocess

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from app.commands import MergePatient, PatientData, PatientRef
from app.db import unit_of_work
from app.models import Instance, RequestedProcedure, Study
from app.services.patients import merge_patient
from interfaces.dicom.server import DicomServer
from tests.dicom.conftest import TIMEOUT, received_files, run_dcmtk


def ct(tmp_path, name="ct.dcm", **changes):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path)
    return path, ds


def storescu(port, path) -> str:
    result = run_dcmtk("storescu", "-v", "-aec", "RIS", "-aet", "CT_ROOM1", "-to", "30", "127.0.0.1", str(port),
                       str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def archived_path(session_factory, store, sop_uid):
    with unit_of_work(session_factory) as session:
        return store.absolute(session.scalars(select(Instance.path).where(Instance.sop_instance_uid == sop_uid)).one())


def dciodvfy_errors(path) -> list[str]:
    """The Error lines of dicom3tools dciodvfy (the IOD check); skipped when dicom3tools is not installed."""
    tool = shutil.which("dciodvfy", path="/usr/bin")
    if tool is None:
        pytest.skip("dicom3tools dciodvfy not installed (apt-get install dicom3tools)")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=TIMEOUT)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture
def coercing_server(settings, session_factory, read_factory, store):
    srv = DicomServer(dataclasses.replace(settings, dicom_coerce_on_store=True), session_factory, read_factory, store)
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.dcmtk
def test_coerce_on_store_from_the_order_keeps_the_originals(coercing_server, place, session_factory, store,
                                                            tmp_path):
    place("ACC-C1", patient_id="P-C1", name="ORDERED^NAME", birth_date=dt.date(1970, 1, 2), sex="F",
          rp_id="RP-C1", sps_id="SPS-C1", procedure_description="CT head", referring="REFER^RITA")
    path, sent = ct(tmp_path, AccessionNumber="ACC-C1", PatientID="P-C1", PatientName="TYPO^NAME",
                    PatientBirthDate="19700101", PatientSex="M")
    assert dciodvfy_errors(path) == []
    out = storescu(coercing_server.port, path)
    assert "Received Store Response (Warning: CoercionOfDataElements)" in out

    stored_path = archived_path(session_factory, store, sent.SOPInstanceUID)
    stored = dcmread(stored_path)
    assert (str(stored.PatientName), stored.PatientBirthDate, stored.PatientSex) == ("ORDERED^NAME", "19700102", "F")
    assert str(stored.ReferringPhysicianName) == "REFER^RITA"
    [request] = stored.RequestAttributesSequence
    with unit_of_work(session_factory) as session:
        ordered_uid = session.scalars(select(RequestedProcedure.study_instance_uid)).one()
    assert (request.AccessionNumber, request.RequestedProcedureID, request.ScheduledProcedureStepID,
            request.RequestedProcedureDescription, request.StudyInstanceUID) == (
        "ACC-C1", "RP-C1", "SPS-C1", "CT head", ordered_uid)
    [history] = stored.OriginalAttributesSequence
    assert (history.ReasonForTheAttributeModification, history.ModifyingSystem) == ("COERCE", "RIS")
    assert history.SourceOfPreviousValues == "" and len(history.AttributeModificationDateTime) >= 14
    [originals] = history.ModifiedAttributesSequence
    assert (str(originals.PatientName), originals.PatientBirthDate, originals.PatientSex) == ("TYPO^NAME", "19700101",
                                                                                            "M")
    assert "RequestAttributesSequence" in originals and not originals.RequestAttributesSequence
    assert stored.PixelData == sent.PixelData and stored.SOPInstanceUID == sent.SOPInstanceUID

    dump = run_dcmtk("dcmdump", str(stored_path)).stdout
    assert "(0400,0561) SQ" in dump and "(0400,0550) SQ" in dump and "(0010,0010) PN [TYPO^NAME]" in dump
    assert "(0400,0565) CS [COERCE]" in dump
    assert dciodvfy_errors(stored_path) == []        # coercion added no IOD error
    with unit_of_work(session_factory) as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == sent.StudyInstanceUID)).one()
        assert (study.patient_name, study.requested_procedure_id, study.sps_id) == ("ORDERED^NAME", "RP-C1", "SPS-C1")


@pytest.mark.dcmtk
def test_coerce_on_store_to_a_name_outside_the_character_set(coercing_server, place, session_factory, store,
                                                             tmp_path):
    place("ACC-C2", patient_id="P-C2", name="MÜLLER^GRÉTA")
    path, sent = ct(tmp_path, AccessionNumber="ACC-C2", PatientID="P-C2", PatientName="MULLER^GRETA")
    del sent.SpecificCharacterSet
    sent.save_as(path)
    storescu(coercing_server.port, path)
    stored_path = archived_path(session_factory, store, sent.SOPInstanceUID)
    stored = dcmread(stored_path)
    assert stored.SpecificCharacterSet == "ISO_IR 192" and str(stored.PatientName) == "MÜLLER^GRÉTA"
    [originals] = stored.OriginalAttributesSequence[0].ModifiedAttributesSequence
    assert "SpecificCharacterSet" in originals and not originals.SpecificCharacterSet    # it had none
    assert str(originals.PatientName) == "MULLER^GRETA"
    dump = run_dcmtk("dcmdump", "+U8", str(stored_path)).stdout
    assert "MÜLLER^GRÉTA" in dump


@pytest.mark.dcmtk
def test_nothing_to_coerce_is_stored_as_received(coercing_server, place, session_factory, store, tmp_path):
    path, sent = ct(tmp_path, AccessionNumber="ACC-NO-ORDER", PatientID="P-C3")
    out = storescu(coercing_server.port, path)
    assert "Received Store Response (Success)" in out
    stored = dcmread(archived_path(session_factory, store, sent.SOPInstanceUID))
    padding = {0xFFFCFFFC}                                         # Data Set Trailing Padding: storescu drops it
    assert ({e.tag for e in stored} == {e.tag for e in sent} - padding       # nothing added, nothing removed
            and stored.PixelData == sent.PixelData and str(stored.PatientName) == str(sent.PatientName))
    assert "OriginalAttributesSequence" not in stored


@pytest.fixture
def qr_settings(settings, storescp):
    port, _ = storescp
    return dataclasses.replace(settings, dicom_known_aes=(f"STORESCP=127.0.0.1:{port}",))


@pytest.mark.dcmtk
@pytest.mark.parametrize("coerce_on_retrieve", [True, False])
def test_merged_patient_leaves_the_archive_with_the_survivors_identity(qr_settings, session_factory, read_factory,
                                                                       store, place, tmp_path, coerce_on_retrieve):
    place("ACC-OLD", patient_id="P-OLD", name="OLD^NAME")
    place("ACC-NEW", patient_id="P-NEW", name="NEW^NAME")
    srv = DicomServer(dataclasses.replace(qr_settings, dicom_coerce_on_retrieve=coerce_on_retrieve), session_factory,
                      read_factory, store)
    srv.start()
    try:
        path, sent = ct(tmp_path, AccessionNumber="ACC-OLD", PatientID="P-OLD", PatientName="OLD^NAME")
        storescu(srv.port, path)
        with unit_of_work(session_factory) as session:      # ADT A40: P-OLD merged into P-NEW
            merge_patient(session, MergePatient(survivor=PatientData(patient_id="P-NEW"),
                                                merged=PatientRef(patient_id="P-OLD")))
        out = tmp_path / "get"
        out.mkdir()
        result = run_dcmtk("getscu", "-S", "-aec", "RIS", "-to", "30", "-ta", "30", "-td", "60",
                           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={sent.StudyInstanceUID}",
                           "-od", str(out), "127.0.0.1", str(srv.port))
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        srv.stop()
    [got] = received_files(out)
    archived = dcmread(archived_path(session_factory, store, sent.SOPInstanceUID))
    assert (archived.PatientID, str(archived.PatientName)) == ("P-OLD", "OLD^NAME")       # the file is immutable
    if not coerce_on_retrieve:
        assert (got.PatientID, "OriginalAttributesSequence" in got) == ("P-OLD", False)
        return
    assert (got.PatientID, str(got.PatientName)) == ("P-NEW", "NEW^NAME")
    [history] = got.OriginalAttributesSequence
    assert history.ReasonForTheAttributeModification == "CORRECT"
    [originals] = history.ModifiedAttributesSequence
    assert (originals.PatientID, str(originals.PatientName)) == ("P-OLD", "OLD^NAME")
    [path_received] = sorted(p for p in out.iterdir() if p.is_file())
    assert dciodvfy_errors(path_received) == []
