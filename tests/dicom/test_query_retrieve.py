"""Query/Retrieve SCP over loopback (PS3.4 Annex C; IHE RAD-14/16): DCMTK findscu/movescu/getscu, storescp as the
move destination, and pynetdicom; plus the Identifier -> query translation without sockets."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select

from app.db import unit_of_work
from app.errors import InvalidInput
from app.models import Instance
from app.queries.archive import Level
from interfaces.dicom import statuses
from interfaces.dicom.query_retrieve import query_from_identifier
from interfaces.dicom.server import DicomServer
from tests.dicom.conftest import archive_datasets, associate, received_files, run_dcmtk, scu

ROOT = "1.2.826.0.1.3680043.10.1356.77"
S1, S2, S3 = f"{ROOT}.1", f"{ROOT}.2", f"{ROOT}.3"
FIND_S = StudyRootQueryRetrieveInformationModelFind
FIND_P = PatientRootQueryRetrieveInformationModelFind


def _instance(source: str, study: str, series: str, number: int, **attrs) -> Dataset:
    ds = dcmread(get_testdata_file(source))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = f"{series}.{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _ct(study, series, number, **attrs):
    defaults = dict(PatientID="P-1", PatientName="DOE^JANE", AccessionNumber="A-1", StudyDate="20240312",
                    StudyTime="093000", StudyID="11", PatientBirthDate="19700101", PatientSex="F")
    return _instance("CT_small.dcm", study, series, number, **{**defaults, **attrs})


def _mr(source, study, series, number):
    return _instance(source, study, series, number, PatientID="P-2", PatientName="ROE^RICHARD",
                     AccessionNumber="A-2", StudyDate="20240315", StudyTime="141500", StudyID="22")


@pytest.fixture
def archive():
    """Three studies of three patients: S1 (CT, 2 images), S2 (MR, one plain and one JPEG 2000 series),
    S3 (CT, a Latin-1 name, late in the evening of S1's day)."""
    return {
        "ct1": _ct(S1, f"{S1}.1", 1),
        "ct2": _ct(S1, f"{S1}.1", 2),
        "mr": _mr("MR_small.dcm", S2, f"{S2}.1", 1),
        "j2k": _mr("MR_small_jp2klossless.dcm", S2, f"{S2}.2", 1),
        "ct3": _ct(S3, f"{S3}.1", 1, PatientID="P-3", PatientName="MÜLLER^GRÉTA", SpecificCharacterSet="ISO_IR 100",
                   AccessionNumber="A-3", StudyTime="235900", StudyID="33"),
    }


@pytest.fixture
def qr_server(settings, session_factory, read_factory, store, storescp, archive, request):
    dest_port, _ = storescp
    options = getattr(request, "param", {})
    settings = dataclasses.replace(settings, dicom_known_aes=(f"STORESCP=127.0.0.1:{dest_port}",), **options)
    srv = DicomServer(settings, session_factory, read_factory, store)
    srv.start()
    try:
        archive_datasets(srv.port, *archive.values())
        yield srv
    finally:
        srv.stop()


def find(port, model, **keys) -> tuple[int, list[Dataset]]:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    assoc = associate(scu(model), port)
    answers, final = [], None
    try:
        for status, identifier in assoc.send_c_find(ds, model):
            assert "Status" in status, "no response"
            if status.Status == statuses.PENDING:
                answers.append(identifier)
            else:
                final = status
    finally:
        assoc.release()
    return final, answers


def dcmtk_find(port, model_flag, *keys, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["-v", model_flag, "-aec", "RIS", "-to", "30", "-ta", "30", "-td", "30", "-X", "-od", str(out_dir)]
    for key in keys:
        args += ["-k", key]
    result = run_dcmtk("findscu", *args, "127.0.0.1", str(port))
    assert result.returncode == 0, result.stdout + result.stderr
    return result, [dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


# C-FIND with DCMTK ---------------------------------------------------------------------------------------
@pytest.mark.dcmtk
def test_findscu_study_root_study_level_with_date_range_and_counts(qr_server, tmp_path):
    result, answers = dcmtk_find(
        qr_server.port, "-S", "QueryRetrieveLevel=STUDY", "StudyDate=20240301-20240313", "StudyTime=",
        "PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyID", "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", out_dir=tmp_path / "f")
    assert "Received Final Find Response (Success)" in result.stdout + result.stderr
    by_uid = {a.StudyInstanceUID: a for a in answers}
    assert sorted(by_uid) == [S1, S3]
    s1 = by_uid[S1]
    assert (s1.PatientID, str(s1.PatientName), s1.AccessionNumber, s1.StudyID) == ("P-1", "DOE^JANE", "A-1", "11")
    assert (s1.ModalitiesInStudy, s1.NumberOfStudyRelatedSeries, s1.NumberOfStudyRelatedInstances) == ("CT", 1, 2)
    assert s1.QueryRetrieveLevel == "STUDY" and s1.RetrieveAETitle == "RIS"
    assert s1.SpecificCharacterSet == "ISO_IR 192"
    assert str(by_uid[S3].PatientName) == "MÜLLER^GRÉTA"           # stored Latin-1, answered as declared


@pytest.mark.dcmtk
def test_findscu_patient_root_every_level(qr_server, tmp_path):
    _, patients = dcmtk_find(qr_server.port, "-P", "QueryRetrieveLevel=PATIENT", "PatientName=*O*",
                             "PatientID", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies",
                             "NumberOfPatientRelatedInstances", out_dir=tmp_path / "p")
    assert sorted((p.PatientID, p.NumberOfPatientRelatedStudies, p.NumberOfPatientRelatedInstances)
                  for p in patients) == [("P-1", 1, 2), ("P-2", 1, 2)]
    jane = next(p for p in patients if p.PatientID == "P-1")
    assert (jane.PatientBirthDate, jane.PatientSex) == ("19700101", "F")

    _, studies = dcmtk_find(qr_server.port, "-P", "QueryRetrieveLevel=STUDY", "PatientID=P-2",
                            "StudyInstanceUID", "ModalitiesInStudy", out_dir=tmp_path / "s")
    assert [(s.StudyInstanceUID, s.ModalitiesInStudy) for s in studies] == [(S2, "MR")]

    _, series = dcmtk_find(qr_server.port, "-P", "QueryRetrieveLevel=SERIES", "PatientID=P-2",
                           f"StudyInstanceUID={S2}", "SeriesInstanceUID", "Modality",
                           "NumberOfSeriesRelatedInstances", out_dir=tmp_path / "se")
    assert sorted((s.SeriesInstanceUID, s.Modality, s.NumberOfSeriesRelatedInstances) for s in series) == [
        (f"{S2}.1", "MR", 1), (f"{S2}.2", "MR", 1)]

    _, images = dcmtk_find(qr_server.port, "-P", "QueryRetrieveLevel=IMAGE", "PatientID=P-1",
                           f"StudyInstanceUID={S1}", f"SeriesInstanceUID={S1}.1", "SOPInstanceUID",
                           "SOPClassUID", "InstanceNumber", out_dir=tmp_path / "i")
    assert sorted((i.SOPInstanceUID, i.SOPClassUID, i.InstanceNumber) for i in images) == [
        (f"{S1}.1.1", CTImageStorage, 1), (f"{S1}.1.2", CTImageStorage, 2)]


# C-FIND with pynetdicom: matching types and refusals -----------------------------------------------------
def test_matching_types(qr_server):
    port = qr_server.port
    uids = lambda answers: sorted(a.StudyInstanceUID for a in answers)    # noqa: E731
    base = dict(QueryRetrieveLevel="STUDY", StudyInstanceUID="")
    assert uids(find(port, FIND_S, **base, AccessionNumber="A-2")[1]) == [S2]             # single value
    assert uids(find(port, FIND_S, **base, PatientName="?OE^*")[1]) == [S1, S2]           # wildcards
    assert uids(find(port, FIND_S, **base)[1]) == [S1, S2, S3]                            # universal
    assert uids(find(port, FIND_S, QueryRetrieveLevel="STUDY", StudyInstanceUID=[S1, S3])[1]) == [S1, S3]
    assert uids(find(port, FIND_S, **base, StudyDate="20240313-")[1]) == [S2]             # open range
    assert uids(find(port, FIND_S, **base, StudyTime="-1000")[1]) == [S1]                 # time range
    # a date range and a time range together are one date-time range (C.2.2.2.5)
    assert uids(find(port, FIND_S, **base, StudyDate="20240312-20240315", StudyTime="2300-1500")[1]) == [S2, S3]
    assert uids(find(port, FIND_S, **base, ModalitiesInStudy=["MR", "XA"])[1]) == [S2]
    assert uids(find(port, FIND_S, **base, ModalitiesInStudy="C*")[1]) == [S1, S3]
    final, images = find(port, FIND_S, QueryRetrieveLevel="IMAGE", StudyInstanceUID=S2, SOPInstanceUID="",
                         SOPClassUID=MRImageStorage)
    assert final.Status == statuses.SUCCESS and len(images) == 2


@pytest.mark.parametrize("keys, offending", [
    (dict(QueryRetrieveLevel="STUDY", StudyDate="2024-03-12"), "StudyDate"),
    (dict(QueryRetrieveLevel="STUDY", AccessionNumber=["A-1", "A-2"]), "AccessionNumber"),
    (dict(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.abc"), "StudyInstanceUID"),
    (dict(QueryRetrieveLevel="PATIENT", PatientID=""), "QueryRetrieveLevel"),          # not in Study Root
    (dict(QueryRetrieveLevel="FRAME", PatientID=""), "QueryRetrieveLevel"),
    (dict(PatientID="P-1"), "QueryRetrieveLevel"),
])
def test_non_conformant_identifier_is_a900_never_everything(qr_server, keys, offending):
    final, answers = find(qr_server.port, FIND_S, **keys)
    assert answers == []
    assert final.Status == statuses.IDENTIFIER_DOES_NOT_MATCH
    assert offending in final.ErrorComment


# C-MOVE ---------------------------------------------------------------------------------------------------
@pytest.mark.dcmtk
def test_movescu_study_to_storescp(qr_server, storescp, archive):
    _, folder = storescp
    result = run_dcmtk("movescu", "-v", "-S", "-aec", "RIS", "-aem", "STORESCP", "-to", "30", "-ta", "30",
                       "-td", "60", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={S2}",
                       "127.0.0.1", str(qr_server.port))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Final Move Response (Success)" in result.stdout + result.stderr
    got = {ds.SOPInstanceUID: ds for ds in received_files(folder)}
    assert sorted(got) == sorted([archive["mr"].SOPInstanceUID, archive["j2k"].SOPInstanceUID])
    j2k = got[archive["j2k"].SOPInstanceUID]
    assert j2k.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"    # sent as stored
    assert j2k.PixelData == archive["j2k"].PixelData


def move(port, model, destination, **keys) -> list[Dataset]:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    assoc = associate(scu(model), port)
    try:
        responses = [status for status, _ in assoc.send_c_move(ds, destination, model)]
    finally:
        assoc.release()
    assert responses and all("Status" in r for r in responses)
    return responses


@pytest.mark.dcmtk
def test_unknown_move_destination_is_a801(qr_server, storescp):
    (final,) = move(qr_server.port, StudyRootQueryRetrieveInformationModelMove, "NOWHERE",
                    QueryRetrieveLevel="STUDY", StudyInstanceUID=S1)
    assert final.Status == statuses.MOVE_DESTINATION_UNKNOWN
    assert received_files(storescp[1]) == []


@pytest.mark.dcmtk
def test_move_without_unique_key_is_a900_and_moves_nothing(qr_server, storescp):
    responses = move(qr_server.port, StudyRootQueryRetrieveInformationModelMove, "STORESCP",
                     QueryRetrieveLevel="STUDY", PatientID="P-1")
    assert responses[-1].Status == statuses.IDENTIFIER_DOES_NOT_MATCH
    assert received_files(storescp[1]) == []


@pytest.mark.dcmtk
def test_missing_file_is_a_counted_failed_suboperation(qr_server, storescp, store, session_factory, archive):
    gone = archive["ct2"].SOPInstanceUID
    with unit_of_work(session_factory) as session:
        path = session.scalars(select(Instance.path).where(Instance.sop_instance_uid == gone)).one()
    store.absolute(path).unlink()
    responses = move(qr_server.port, PatientRootQueryRetrieveInformationModelMove, "STORESCP",
                     QueryRetrieveLevel="PATIENT", PatientID="P-1")
    final = responses[-1]
    assert final.Status == statuses.SUBOPERATIONS_WARNING
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
            final.NumberOfWarningSuboperations) == (1, 1, 0)
    assert [ds.SOPInstanceUID for ds in received_files(storescp[1])] == [archive["ct1"].SOPInstanceUID]


# C-GET ----------------------------------------------------------------------------------------------------
@pytest.mark.dcmtk
def test_getscu_series(qr_server, tmp_path, archive):
    out = tmp_path / "get"
    out.mkdir()
    result = run_dcmtk("getscu", "-v", "-S", "-aec", "RIS", "-to", "30", "-ta", "30", "-td", "60",
                       "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={S1}",
                       "-k", f"SeriesInstanceUID={S1}.1", "-od", str(out), "127.0.0.1", str(qr_server.port))
    assert result.returncode == 0, result.stdout + result.stderr
    got = sorted(ds.SOPInstanceUID for ds in received_files(out))
    assert got == sorted([archive["ct1"].SOPInstanceUID, archive["ct2"].SOPInstanceUID])


def test_pynetdicom_get_image_with_uid_list(qr_server, archive):
    wanted = [archive["ct1"].SOPInstanceUID, archive["ct3"].SOPInstanceUID]
    received = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    ae = scu(StudyRootQueryRetrieveInformationModelGet, CTImageStorage)
    assoc = ae.associate("127.0.0.1", qr_server.port, ae_title="RIS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.SOPInstanceUID = wanted
        statuses_seen = [s for s, _ in assoc.send_c_get(ds, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    final = statuses_seen[-1]
    assert final.Status == statuses.SUCCESS and final.NumberOfCompletedSuboperations == 2
    assert sorted(d.SOPInstanceUID for d in received) == sorted(wanted)
    assert str(next(d for d in received if d.PatientID == "P-3").PatientName) == "MÜLLER^GRÉTA"


# Identifier -> query, without sockets -------------------------------------------------------------------
def _identifier(**keys) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_keys_below_the_query_level_are_not_matching_keys():
    q = query_from_identifier(_identifier(QueryRetrieveLevel="STUDY", PatientID="P-1", Modality="CT",
                                          SOPInstanceUID="1.2.3"), FIND_S)
    assert q.level is Level.STUDY and q.patient_id.value == "P-1"
    assert q.modality is None and q.sop_uids is None


def test_study_date_and_time_make_one_range():
    q = query_from_identifier(_identifier(QueryRetrieveLevel="STUDY", StudyDate="20240312-20240315",
                                          StudyTime="2300-0130"), FIND_S)
    rng = q.study_date_time
    assert (rng.date_from, rng.date_to) == (dt.date(2024, 3, 12), dt.date(2024, 3, 15))
    assert (rng.time_from, rng.time_to) == (dt.time(23, 0), dt.time(1, 30, 59, 999999))
    assert rng.has_date and rng.has_time


@pytest.mark.parametrize("keys", [dict(QueryRetrieveLevel="STUDY"),
                                  dict(QueryRetrieveLevel="STUDY", StudyInstanceUID="*"),
                                  dict(QueryRetrieveLevel="PATIENT", PatientID="P*"),
                                  dict(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2")])
def test_retrieve_needs_the_unique_key_of_its_level(keys):
    with pytest.raises(InvalidInput):
        query_from_identifier(_identifier(**keys), FIND_P, retrieve=True)
