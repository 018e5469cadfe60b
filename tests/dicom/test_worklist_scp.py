"""MWL C-FIND over loopback: DCMTK findscu and a pynetdicom SCU against the engine's AE (PS3.4 Annex K)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from app.commands import CancelOrder, Cause, OrderRef
from app.db import unit_of_work
from app.services.dispatch import apply_command
from interfaces.dicom import statuses
from interfaces.dicom.server import DicomServer
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
    (["PatientID=P-1", "MedicalAlerts=none", "AdmissionID=ADM*"], ["ACC-1"]),   # no data held: return keys only
    (["PatientID=P-1", "PatientBirthDate=19990101"], []),            # matched: an unknown birth date never matches
    (["PatientSex=F"], []),
    (["RequestedProcedureDescription=CT*"], ["ACC-1", "ACC-3"]),     # the modality stands in (no code given)
    ([SPS + "ScheduledProcedureStepStartTime=1300-0900"], ["ACC-2", "ACC-3"]),   # across midnight
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


def test_findscu_protocol_codes_and_end_time_of_the_mapped_step(server, place, tmp_out):
    """The Scheduled Protocol Code Sequence holds the step's protocol codes as the profile mapped them (else the
    procedure's code), and a protocol key matches them; the SPS end is the start plus the expected duration
    (PS3.4 Table K.6-1, return keys of Type 3)."""
    place("ACC-P1", patient_id="P-P1", code=("CTH", "LOCAL", "CT head"), start=dt.datetime(2024, 3, 12, 23, 40),
          protocols=(("PROT-A", "99LOCAL", "Head routine"), ("PROT-B", "99LOCAL", "Head thin slices")), duration=45)
    place("ACC-P2", patient_id="P-P2", code=("CTC", "LOCAL", "CT chest"), start=dt.datetime(2024, 3, 12, 9, 0))
    protocol = SPS + "ScheduledProtocolCodeSequence[0]."
    result, responses = find(server, tmp_out, protocol + "CodeValue", protocol + "CodingSchemeDesignator",
                             protocol + "CodeMeaning", SPS + "ScheduledProcedureStepEndDate",
                             SPS + "ScheduledProcedureStepEndTime")
    assert final_status(result) == "Success"
    by_accession = {r.AccessionNumber: r.ScheduledProcedureStepSequence[0] for r in responses}
    mapped, plain = by_accession["ACC-P1"], by_accession["ACC-P2"]
    assert [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in mapped.ScheduledProtocolCodeSequence] == [
        ("PROT-A", "99LOCAL", "Head routine"), ("PROT-B", "99LOCAL", "Head thin slices")]
    assert (mapped.ScheduledProcedureStepEndDate, mapped.ScheduledProcedureStepEndTime) == ("20240313", "002500")
    assert [c.CodeValue for c in plain.ScheduledProtocolCodeSequence] == ["CTC"]          # the procedure's code
    assert (plain.ScheduledProcedureStepEndDate, plain.ScheduledProcedureStepEndTime) == ("", "")
    for value, expected in (("PROT-B", ["ACC-P1"]), ("CTH", []), ("CTC", ["ACC-P2"]), ("PROT*", ["ACC-P1"])):
        result, responses = find(server, tmp_out, protocol + f"CodeValue={value}")
        assert (final_status(result), accessions(responses)) == ("Success", expected), value


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


# Settings that change the AE: a server of their own ----------------------------------------------------------
@pytest.fixture
def server_with(settings, session_factory, read_factory, store):
    """server_with(**settings) -> a started AE with those settings on top of the test's (stopped at the end)."""
    started = []

    def _start(**changes):
        srv = DicomServer(replace(settings, **changes), session_factory, read_factory, store)
        srv.start()
        started.append(srv)
        return srv

    yield _start
    for srv in started:
        srv.stop()


def query_file(path, **keys) -> Path:
    """A query file as a modality would send it (pydicom encodes the names in the declared character set)."""
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    ds.AccessionNumber = ds.get("AccessionNumber", "")
    sps = Dataset()
    sps.Modality = ""
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return path


@pytest.fixture
def names(place):
    place("ACC-J", patient_id="P-J", name="Yamada^Tarou=山田^太郎=やまだ^たろう")
    place("ACC-L", patient_id="P-L", name="MÜLLER^GRÉTA")
    place("ACC-C", patient_id="P-C", name="ИВАНОВ^ИВАН")


JAPANESE = ["", "ISO 2022 IR 87"]


@pytest.mark.parametrize("answer_charset, query_charset, pattern, expected", [
    ("ISO_IR 100", "ISO_IR 100", "MÜLLER*", {"ACC-L": ("ISO_IR 100", "MÜLLER^GRÉTA".encode("latin-1"))}),
    ("ISO_IR 100", JAPANESE, "*山田*", {"ACC-J": ("ISO_IR 192", "山田".encode("utf-8"))}),
    ("ISO_IR 192", "ISO_IR 192", "*ИВАН*", {"ACC-C": ("ISO_IR 192", "ИВАНОВ".encode("utf-8"))}),
    ("ISO_IR 192", "ISO_IR 100", "*É*", {"ACC-L": ("ISO_IR 192", "GRÉTA".encode("utf-8"))}),
    ("\\ISO 2022 IR 87", JAPANESE, "Yamada^Tarou=山田^太郎=やまだ^たろう",
     {"ACC-J": ("\\ISO 2022 IR 87", b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=")}),
    ("\\ISO 2022 IR 87", "ISO_IR 192", "*ИВАН*", {"ACC-C": ("\\ISO 2022 IR 87", b"\x1b$B'*'#'!'/\x1b(B")}),
    ("\\ISO 2022 IR 87", "ISO_IR 100", "M*", {"ACC-L": ("ISO_IR 192", "MÜLLER".encode("utf-8"))}),
])
def test_character_sets_with_findscu(server_with, names, tmp_path, answer_charset, query_charset, pattern, expected):
    """B4: queries in ISO_IR 100, ISO_IR 192 and ISO 2022 IR 87 are read in their character set; answers are in the
    configured set when it holds the name, else in ISO_IR 192, and DCMTK reads the same name back (+U8)."""
    srv = server_with(dicom_specific_character_set=answer_charset)
    query = query_file(tmp_path / "q.dcm", SpecificCharacterSet=query_charset, PatientName=pattern)
    result, responses = findscu(srv.port, tmp_path / "rsp", query_file=query)
    assert final_status(result) == "Success", result.stdout + result.stderr
    assert accessions(responses) == sorted(expected)
    for number, rsp in enumerate(sorted(responses, key=lambda r: r.AccessionNumber)):
        declared, encoded = expected[rsp.AccessionNumber]
        charset = rsp.SpecificCharacterSet
        assert (charset if isinstance(charset, str) else "\\".join(charset)) == declared
        path = next(p for p in (tmp_path / "rsp").glob("rsp*.dcm") if dcmread(p).AccessionNumber == rsp.AccessionNumber)
        assert encoded in path.read_bytes()
        name = {"ACC-J": "Yamada^Tarou=山田^太郎=やまだ^たろう", "ACC-L": "MÜLLER^GRÉTA",
                "ACC-C": "ИВАНОВ^ИВАН"}[rsp.AccessionNumber]
        if "ISO 2022" in declared:     # Debian's DCMTK (iconv) cannot convert ISO 2022 IR 87: Python's codec reads it
            raw = dcmread(path).get_item(0x00100010).value
            assert raw.rstrip(b" ").decode("iso2022_jp") == name
        else:                          # DCMTK reads the same name back
            dump = run_dcmtk("dcmdump", "+U8", str(path))
            assert dump.returncode == 0, dump.stderr
            assert f"[{name}]" in dump.stdout
        assert str(rsp.PatientName) == name


@pytest.mark.parametrize("answer_charset", ["ISO_IR 100", "ISO_IR 192", "\\ISO 2022 IR 87"])
def test_character_sets_with_pynetdicom(server_with, names, answer_charset):
    srv = server_with(dicom_specific_character_set=answer_charset)
    results = c_find(srv, mwl_query(SpecificCharacterSet=JAPANESE, PatientName="*"))
    got = {r[1].AccessionNumber: (r[1].SpecificCharacterSet, str(r[1].PatientName)) for r in results[:-1]}
    declared = "ISO_IR 192" if answer_charset == "ISO_IR 100" else answer_charset
    assert got["ACC-J"] == ((JAPANESE if declared == "\\ISO 2022 IR 87" else declared),
                            "Yamada^Tarou=山田^太郎=やまだ^たろう")
    assert got["ACC-L"][1] == "MÜLLER^GRÉTA" and got["ACC-C"][1] == "ИВАНОВ^ИВАН"
    assert got["ACC-L"][0] == ("ISO_IR 192" if answer_charset == "\\ISO 2022 IR 87" else answer_charset)


def test_answers_in_every_transfer_syntax(server, worklist):
    """Answers are written in the transfer syntax of the presentation context (PS3.5 7.1), sequences included."""
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian):
        ae = scu((ModalityWorklistInformationFind, [syntax]))
        assoc = associate(ae, server.port)
        try:
            item = Dataset()
            item.ScheduledStationAETitle = ""
            item.ScheduledProcedureStepStartDate = ""
            results = [(s.Status, ds) for s, ds in assoc.send_c_find(
                mwl_query(PatientID="P-1", ScheduledProcedureStepSequence=Sequence([item])),
                ModalityWorklistInformationFind)]
        finally:
            assoc.release()
        assert [r[0] for r in results] == [statuses.PENDING, statuses.SUCCESS], syntax
        rsp = results[0][1]
        assert (rsp.AccessionNumber, str(rsp.PatientName)) == ("ACC-1", "MÜLLER^GRÉTA")
        assert list(rsp.ScheduledProcedureStepSequence[0].ScheduledStationAETitle) == ["CT_ROOM1", "CT_ROOM2"]


def test_calling_aet_filter_with_aliases(server_with, worklist, tmp_out):
    srv = server_with(worklist_filter_calling_aet=True, worklist_calling_aet_aliases=("CT_CONSOLE=CT_ROOM2",))
    for calling, expected in (("CT_ROOM1", ["ACC-1", "ACC-3"]), ("CT_CONSOLE", ["ACC-1"]), ("MR_ROOM1", ["ACC-2"]),
                              ("OTHER", [])):
        result, responses = findscu(srv.port, tmp_out, "AccessionNumber", "PatientName", calling=calling)
        assert final_status(result) == "Success"
        assert accessions(responses) == expected, calling


@pytest.fixture
def long_worklist(session_factory, settings):
    """300 scheduled steps, placed in one transaction through the core."""
    from app.commands import OrderData, OrderRef, PatientData, PlaceOrder, ProcedureData, StepData

    with unit_of_work(session_factory) as session:
        for n in range(300):
            apply_command(session, PlaceOrder(
                patient=PatientData(patient_id=f"P-{n}", name=f"LONG^LIST{n}"),
                order=OrderData(ref=OrderRef(placer_order_number=f"PL-{n}"), accession_number=f"L-{n:03d}",
                                procedures=(ProcedureData(requested_procedure_id="", study_instance_uid="", steps=(
                                    StepData(sps_id="", modality="CT", station_aets=("CT_ROOM1",),
                                             scheduled_start=dt.datetime(2024, 3, 12, 8) + dt.timedelta(minutes=n)),
                                ),),))), Cause("test"), uid_root=settings.uid_root)


def test_findscu_cancel_stops_the_answers(server, long_worklist, tmp_out):
    """C-CANCEL (PS3.7 9.1.5): DCMTK findscu --cancel 3 gets a few answers, then Cancel - not all 300."""
    for _ in range(3):                            # not by luck: every time
        result, responses = findscu(server.port, tmp_out, "AccessionNumber", "PatientName",
                                    f"{SPS}Modality=CT", extra=("--cancel", "3"))
        assert result.returncode == 0, result.stderr
        assert "Cancel" in final_status(result), final_status(result)
        assert 3 <= len(responses) < 300 // 2, len(responses)


def test_pynetdicom_cancel_stops_the_answers(server, long_worklist):
    assoc = associate(scu(ModalityWorklistInformationFind, Verification), server.port)
    try:
        context_id = next(c.context_id for c in assoc.accepted_contexts
                          if c.abstract_syntax == ModalityWorklistInformationFind)
        answers, final = 0, None
        for status, ds in assoc.send_c_find(mwl_query(), ModalityWorklistInformationFind, msg_id=41):
            if status.Status == statuses.PENDING:
                answers += 1
                if answers == 2:
                    assoc.send_c_cancel(41, context_id)
            else:
                final = status.Status
        assert final == statuses.CANCEL
        assert 2 <= answers < 300 // 2, answers
        assert assoc.send_c_echo().Status == statuses.SUCCESS          # the association goes on
    finally:
        assoc.release()
