"""MWL C-FIND over loopback: DCMTK findscu and a pynetdicom SCU against the engine's AE (PS3.4 Annex K)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from app.commands import CancelOrder, Cause, OrderRef
from app.db import unit_of_work
from app.services.dispatch import apply_command
from interfaces.dicom import statuses
from tests.dicom.conftest import accessions, associate, final_status, findscu, run_dcmtk, scu

UID = "1.2.826.0.1.3680043.10.999.{}".format
SPS = "ScheduledProcedureStepSequence[0]."


@pytest.fixture
def worklist(place, session_factory, settings):
    place("ACC-1", patient_id="P-1", name="MÜLLER^GRÉTA", modality="CT", aets=("CT_ROOM1", "CT_ROOM2"),
          start=dt.datetime(2024, 3, 12, 9, 30), rp_id="RP-1", sps_id="SPS-1", study_uid=UID(1))
    place("ACC-2", patient_id="P-2", name="SMITH^JOHN", modality="MR", aets=("MR_ROOM1",),
          start=dt.datetime(2024, 3, 13, 14, 0), rp_id="RP-2", sps_id="SPS-2", study_uid=UID(2))
    place("ACC-3", patient_id="P-3", name="SMYTH^JANE", modality="CT", aets=("CT_ROOM1",),
          start=dt.datetime(2024, 3, 14, 8, 0), rp_id="RP-3", sps_id="SPS-3", study_uid=UID(3))
    place("ACC-4", patient_id="P-4", name="GONE^GARY", modality="CT", aets=("CT_ROOM1",),
          start=dt.datetime(2024, 3, 12, 10, 0), study_uid=UID(4))
    with unit_of_work(session_factory) as session:
        apply_command(session, CancelOrder(OrderRef(accession_number="ACC-4")), Cause("test"),
                      uid_root=settings.uid_root)


RETURN_KEYS = ("AccessionNumber", "PatientName", "PatientID", SPS + "Modality", SPS + "ScheduledStationAETitle",
               SPS + "ScheduledProcedureStepStartDate", SPS + "ScheduledProcedureStepStartTime")


def find(server, out, *matching: str):
    """findscu with the usual return keys plus ``matching`` (which override a return key of the same name)."""
    names = {m.split("=", 1)[0] for m in matching}
    keys = [k for k in RETURN_KEYS if k not in names] + list(matching)
    result, responses = findscu(server.port, out, *keys)
    assert result.returncode == 0, result.stderr
    return result, responses


pytestmark = pytest.mark.dcmtk


@pytest.mark.parametrize("matching, expected", [
    (["PatientID=P-2"], ["ACC-2"]),
    (["PatientName=SM?TH*"], ["ACC-2", "ACC-3"]),
    (["PatientName=SMITH*"], ["ACC-2"]),
    (["PatientName=*"], ["ACC-1", "ACC-2", "ACC-3"]),
    (["AccessionNumber=ACC-3"], ["ACC-3"]),
    ([SPS + "Modality=MR"], ["ACC-2"]),
    ([SPS + "ScheduledStationAETitle=CT_ROOM2"], ["ACC-1"]),          # second of two AETs (BUG-26)
    ([SPS + "ScheduledStationAETitle=CT_ROOM1"], ["ACC-1", "ACC-3"]),
    ([SPS + "ScheduledProcedureStepStartDate=20240312"], ["ACC-1"]),  # ACC-4 is cancelled
    ([SPS + "ScheduledProcedureStepStartDate=20240312-20240313"], ["ACC-1", "ACC-2"]),
    ([SPS + "ScheduledProcedureStepStartDate=20240313-"], ["ACC-2", "ACC-3"]),
    ([SPS + "ScheduledProcedureStepStartTime=0800-1000"], ["ACC-1", "ACC-3"]),
    ([SPS + "ScheduledProcedureStepStartDate=20240313-20240314", SPS + "ScheduledProcedureStepStartTime=1200-0830"],
     ["ACC-2", "ACC-3"]),                                             # one date-time range, PS3.4 C.2.2.2.5
    (["RequestedProcedureID=RP-2"], ["ACC-2"]),
    ([SPS + "ScheduledProcedureStepID=SPS-3"], ["ACC-3"]),
    ([f"StudyInstanceUID={UID(1)}\\{UID(3)}"], ["ACC-1", "ACC-3"]),   # list of UID matching
    (["AccessionNumber=ACC-4"], []),                                  # cancelled: not in the worklist
    (["PatientID=P-1", "PatientBirthDate=19990101", "MedicalAlerts=none"], ["ACC-1"]),  # unsupported: ignored
])
def test_findscu_matching(server, worklist, tmp_out, matching, expected):
    result, responses = find(server, tmp_out, *matching)
    assert final_status(result) == "Success"
    assert accessions(responses) == expected


def test_findscu_responses_carry_charset_and_utf8_name(server, worklist, tmp_out):
    result, responses = find(server, tmp_out, "PatientID=P-1", "PatientBirthDate", "MedicalAlerts")
    (rsp,) = responses
    assert rsp.SpecificCharacterSet == "ISO_IR 192"
    assert rsp.PatientName == "MÜLLER^GRÉTA"
    assert "PatientBirthDate" in rsp and rsp.PatientBirthDate == ""
    assert "MedicalAlerts" in rsp and rsp.MedicalAlerts in ("", None)
    sps = rsp.ScheduledProcedureStepSequence[0]
    assert list(sps.ScheduledStationAETitle) == ["CT_ROOM1", "CT_ROOM2"]
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == ("20240312", "093000")


@pytest.mark.parametrize("date", ["20240312,", "2024-03-12"])
def test_findscu_malformed_date_fails(server, worklist, tmp_out, date):
    result, responses = find(server, tmp_out, SPS + f"ScheduledProcedureStepStartDate={date}")
    assert responses == []
    assert "DataSetDoesNotMatchSOPClass" in final_status(result)


def test_echoscu(server):
    result = run_dcmtk("echoscu", "-aec", "RIS", "-to", "30", "127.0.0.1", str(server.port))
    assert result.returncode == 0, result.stderr


# pynetdicom SCU ----------------------------------------------------------------------------------------
def c_find(server, query: Dataset):
    assoc = associate(scu(ModalityWorklistInformationFind), server.port)
    try:
        return [(status.Status, ds) for status, ds in assoc.send_c_find(query, ModalityWorklistInformationFind)]
    finally:
        assoc.release()


def mwl_query(**top) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = ""
    ds.PatientName = ""
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    return ds


def test_pynetdicom_echo(server):
    assoc = associate(scu(Verification), server.port)
    try:
        assert assoc.send_c_echo().Status == statuses.SUCCESS
    finally:
        assoc.release()


def test_pynetdicom_sps_sequence_matching(server, worklist):
    item = Dataset()
    item.Modality = "CT"
    item.ScheduledStationAETitle = ""
    item.ScheduledProcedureStepStartDate = "20240312-20240314"
    results = c_find(server, mwl_query(ScheduledProcedureStepSequence=Sequence([item])))
    assert [r[0] for r in results] == [statuses.PENDING, statuses.PENDING, statuses.SUCCESS]
    assert [r[1].AccessionNumber for r in results[:2]] == ["ACC-1", "ACC-3"]
    assert all(r[1].SpecificCharacterSet == "ISO_IR 192" for r in results[:2])


def test_pynetdicom_latin1_query_matches_and_answer_is_utf8(server, worklist):
    query = mwl_query(SpecificCharacterSet="ISO_IR 100", PatientName="MÜLLER*")
    results = c_find(server, query)
    assert [r[0] for r in results] == [statuses.PENDING, statuses.SUCCESS]
    assert results[0][1].PatientName == "MÜLLER^GRÉTA"
    assert results[0][1].SpecificCharacterSet == "ISO_IR 192"


def test_pynetdicom_uid_list_and_no_sps_sequence(server, worklist):
    results = c_find(server, mwl_query(StudyInstanceUID=[UID(2), UID(3)]))
    assert [r[1].AccessionNumber for r in results if r[0] == statuses.PENDING] == ["ACC-2", "ACC-3"]
    assert all("ScheduledProcedureStepSequence" not in r[1] for r in results if r[1] is not None)


def _bad_date_query() -> Dataset:
    item = Dataset()
    item.ScheduledProcedureStepStartDate = "20240312,"
    return mwl_query(ScheduledProcedureStepSequence=Sequence([item]))


@pytest.mark.parametrize("build", [
    lambda: mwl_query(AccessionNumber=["ACC-1", "ACC-2"]),     # BUG-22: list matching is for UIDs only
    _bad_date_query,                                          # BUG-23: never "everything"
], ids=["multi-valued-accession", "malformed-date"])
@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_pynetdicom_malformed_keys_fail_consistently(server, worklist, build):
    for _ in range(2):
        results = c_find(server, build())
        assert [r[0] for r in results] == [statuses.IDENTIFIER_DOES_NOT_MATCH]
        assert results[0][1] is None
