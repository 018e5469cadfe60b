"""Corpus worklist cases end to end: orders scheduled through the core, queries sent by DCMTK findscu or
pynetdicom (corpus dumps made binary with dump2dcm). Files are read from ../shared/corpus in place."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom.sop_class import ModalityWorklistInformationFind

from interfaces.dicom import statuses
from interfaces.dicom.server import DicomServer
from tests.dicom.conftest import (accessions, associate, corpus_file, dump_to_dataset, final_status, findscu,
                                  place_from_item, scu)

pytestmark = [pytest.mark.corpus, pytest.mark.dcmtk]


def find_file(server, tmp_path, dump_name: str, *folder: str):
    """findscu with a corpus query dump; returns (final status text, responses)."""
    query = tmp_path / "query.dcm"
    dump_to_dataset(corpus_file(*folder, dump_name), tmp_path).save_as(query)
    result, responses = findscu(server.port, tmp_path / "rsp", query_file=query)
    assert result.returncode == 0, result.stderr
    return final_status(result), responses


def c_find(server, query):
    assoc = associate(scu(ModalityWorklistInformationFind), server.port)
    try:
        return [(s.Status, ds) for s, ds in assoc.send_c_find(query, ModalityWorklistInformationFind)]
    finally:
        assoc.release()


def test_bug25_keys_inside_sps_sequence(server, place, tmp_path):
    case = json.loads(corpus_file("bugs", "bug25_worklist_items.json").read_text())
    for item in case["items"]:
        sps = item["SPS"]
        place(item["AccessionNumber"], patient_id="P-" + item["AccessionNumber"], name=item["PatientName"],
              modality=sps["Modality"], aets=(sps["ScheduledStationAETitle"],),
              start=dt.datetime.strptime(sps["ScheduledProcedureStepStartDate"] + "1000", "%Y%m%d%H%M"),
              code=tuple(sps.get("ScheduledProtocolCode", ("", "", ""))))
    status, responses = find_file(server, tmp_path, "bug25_mwl_query_with_sps_sequence_keys.dump", "bugs")
    assert status == "Success"
    assert accessions(responses) == case["expect"]
    (rsp,) = responses
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID"):
        assert keyword in rsp                                  # empty keys come back, empty when unknown
    assert rsp.PatientBirthDate == "" and rsp.PatientSex == ""
    sps = rsp.ScheduledProcedureStepSequence[0]
    assert (sps.Modality, sps.ScheduledStationAETitle, sps.ScheduledProcedureStepStartDate) == (
        "US", "US_ROOM2", "20241124")
    assert sps.ScheduledProcedureStepStartTime == "100000" and "ScheduledProcedureStepDescription" in sps
    code = sps.ScheduledProtocolCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("P1", "LOCAL", "Abdomen")


def test_bug26_second_station_aet_matches(server, place, tmp_path):
    place_from_item(place, dump_to_dataset(corpus_file("bugs", "bug26_item_with_two_station_aets.dump"), tmp_path))
    status, responses = find_file(server, tmp_path, "bug26_query_second_aet.dump", "bugs")
    assert status == "Success"
    assert accessions(responses) == ["ACC-5026"]
    assert list(responses[0].ScheduledProcedureStepSequence[0].ScheduledStationAETitle) == ["CR_ROOM1", "CR_ROOM2"]


def test_bug23_bad_and_open_date_ranges(server, place, tmp_path):
    case = json.loads(corpus_file("bugs", "bug23_queries_bad_and_open_date_ranges.json").read_text())
    for n, (accession, date) in enumerate(case["worklist_sps_dates"].items()):
        place(accession, patient_id=f"P-{n}", start=dt.datetime.strptime(date + "0900", "%Y%m%d%H%M"))
    for query in case["queries"]:
        value = query["ScheduledProcedureStepStartDate"]
        result, responses = findscu(server.port, tmp_path / "rsp", "AccessionNumber",
                                    f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={value}")
        if isinstance(query["expect"], list):
            assert final_status(result) == "Success", value
            assert accessions(responses) == query["expect"], value
        else:                                                  # malformed: a failure, never all three
            assert responses == [], value
            assert "DataSetDoesNotMatchSOPClass" in final_status(result), value


def test_bug22_uid_list_and_accession_list(server, place, tmp_path):
    case = json.loads(corpus_file("bugs", "bug22_query_uid_list_and_accession_list.json").read_text())
    for n, item in enumerate(case["worklist"]):
        place(item["AccessionNumber"], patient_id=f"P-{n}", study_uid=item["StudyInstanceUID"])
    uids = case["query_1"]["StudyInstanceUID"]
    result, responses = findscu(server.port, tmp_path / "rsp", "AccessionNumber", f"StudyInstanceUID={uids}")
    assert final_status(result) == "Success" and accessions(responses) == case["expect_1"]
    for _ in range(2):                                           # consistently refused
        result, responses = findscu(server.port, tmp_path / "rsp",
                                    f"AccessionNumber={case['query_2']['AccessionNumber']}")
        assert responses == [] and "DataSetDoesNotMatchSOPClass" in final_status(result)


def test_bug20_latin1_item_answered_with_declared_charset(server, place, tmp_path):
    item = dump_to_dataset(corpus_file("bugs", "bug20_worklist_item_latin1.dump"), tmp_path)
    assert item.PatientName == "MÜLLER^GRÉTA"
    place_from_item(place, item)
    status, responses = find_file(server, tmp_path, "bug20_query_without_charset.dump", "bugs")
    (rsp,) = responses
    assert rsp.SpecificCharacterSet == "ISO_IR 192"
    assert rsp.PatientName == "MÜLLER^GRÉTA"
    assert rsp.AccessionNumber == "ACC-5020" and rsp.PatientID == "P-1020"
    raw = (tmp_path / "rsp" / "rsp0001.dcm").read_bytes()
    assert "MÜLLER^GRÉTA".encode("utf-8") in raw


def test_utf8_wildcard_on_a_multibyte_character(server, place, tmp_path):
    item = dump_to_dataset(corpus_file("mwl", "encodings_worklist_utf8_many_scripts.dump"), tmp_path)
    name = str(item.PatientName)
    place("ACC-ENC", patient_id="P-ENC", name=name)
    place("ACC-OTHER", patient_id="P-OTHER", name="PLAIN^ASCII")
    status, responses = find_file(server, tmp_path, "encodings_query_pn_wildcard_u_umlaut_utf8.dump", "mwl")
    assert status == "Success"
    (rsp,) = responses
    assert str(rsp.PatientName) == name
    assert name.encode("utf-8") in (tmp_path / "rsp" / "rsp0001.dcm").read_bytes()


def test_query_without_charset_gets_charset_back(server, place, tmp_path):
    place("ACC-49", patient_id="P-49", name="DUPONT^ÉLODIE")
    status, responses = find_file(server, tmp_path, "issue49_query_pn_star_no_charset.dump", "mwl")
    (rsp,) = responses
    assert rsp.SpecificCharacterSet == "ISO_IR 192" and rsp.PatientName == "DUPONT^ÉLODIE"


def test_private_keys_do_not_break_matching(server, place, tmp_path):
    place_from_item(place, dump_to_dataset(corpus_file("mwl", "private_creator_worklist.dump"), tmp_path))
    place("ACC-OTHER", patient_id="P-OTHER", name="BACH^JOHANN")
    status, responses = find_file(server, tmp_path, "private_creator_query.dump", "mwl")
    assert status == "Success"
    (rsp,) = responses
    assert rsp.PatientName == "VIVALDI^ANTONIO" and "AccessionNumber" not in rsp   # only what was asked
    assert rsp[0x80010010].value == "LIAC" and rsp[0x80011001].is_empty


@pytest.fixture
def orthanc_station_items(place, tmp_path):
    """The Orthanc STATION_AET items; the item for the other station gets its own accession (the core
    refuses two orders with one accession number)."""
    for name, accession in (("seq_station_aet_7705.dump", None), ("seq_station_aet_7814.dump", None),
                            ("seq_other_station_7814.dump", "AN123457-B")):
        item = dump_to_dataset(corpus_file("mwl", name), tmp_path)
        if accession:
            item.AccessionNumber = accession
            item.PatientID = "01234569"
        place_from_item(place, item)


@pytest.fixture
def orthanc_station_items_with_twin(orthanc_station_items, place, tmp_path):
    """Orthanc's database also holds seq_station_aet_7814_without_sps_sequence (the 7814 item again, without its
    empty Referenced Study/Patient Sequences): a second order here, under its own accession and study."""
    item = dump_to_dataset(corpus_file("mwl", "seq_station_aet_7814_without_sps_sequence.dump"), tmp_path)
    assert "ReferencedStudySequence" not in item and "ReferencedPatientSequence" not in item
    item.AccessionNumber = "AN123457-C"
    item.StudyInstanceUID = item.StudyInstanceUID + ".3"
    place_from_item(place, item)


@pytest.mark.parametrize("query, expected", [
    ("query_7814_with_station_aet.dump", ["AN123457"]),
    ("query_7814_sq_undefined_length.dump", ["AN123457"]),         # 'STATION_AET ' (padding) matches
    ("query_7814_empty_station_aet.dump", ["AN123457", "AN123457-B"]),   # empty AET: universal matching
    ("query_basic_7705.dump", ["AN123456"]),
])
def test_orthanc_modality_queries(server, orthanc_station_items, tmp_path, query, expected):
    status, responses = find_file(server, tmp_path, query, "mwl")
    assert status == "Success"
    assert accessions(responses) == expected
    request = dcmread(tmp_path / "query.dcm")
    for rsp in responses:                       # every requested key is answered, group lengths aside
        wanted = {e.tag for e in request if e.tag.element != 0}
        assert wanted <= {e.tag for e in rsp}, wanted - {e.tag for e in rsp}
        assert rsp.SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.parametrize("query", ["query_7814_with_station_aet.dump", "query_7814_sq_undefined_length.dump",
                                   "query_7814_without_sps_sequence.dump"])
def test_orthanc_7814_queries_return_both_7814_items(server, orthanc_station_items_with_twin, tmp_path, query):
    """SOURCES.md: the 7814 queries, with or without sequence lengths, group lengths or the Referenced
    Study/Patient Sequences, each return the 2 items scheduled at STATION_AET that day (as in Orthanc's tests);
    the item without those sequences is answered with them empty, as asked."""
    status, responses = find_file(server, tmp_path, query, "mwl")
    assert status == "Success"
    assert accessions(responses) == ["AN123457", "AN123457-C"]
    request = dcmread(tmp_path / "query.dcm")
    for rsp in responses:
        assert {e.tag for e in request if e.tag.element != 0} <= {e.tag for e in rsp}
        assert rsp.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "STATION_AET"
        for keyword in ("ReferencedStudySequence", "ReferencedPatientSequence"):
            assert (keyword in rsp) == (keyword in request)


@pytest.mark.parametrize("charset, encoded", [("ISO_IR 100", "TESTÉ^ÉLODIE".encode("latin-1")),
                                              ("ISO_IR 192", "TESTÉ^ÉLODIE".encode("utf-8"))])
def test_issue49_latin1_item_with_a_query_without_charset(server_with_charset, place, tmp_path, charset, encoded):
    """issue49_latin1_synthetic.wl (Orthanc issue 49): a query without (0008,0005) gets the ISO_IR 100 item back
    with its character set declared; in ISO_IR 100 the 0xC9 bytes stay Latin-1, in ISO_IR 192 they are UTF-8."""
    item = dcmread(corpus_file("mwl", "issue49_latin1_synthetic.wl"))
    assert item.SpecificCharacterSet == "ISO_IR 100" and "É" in str(item.PatientName)
    sps = item.ScheduledProcedureStepSequence[0]
    place(item.AccessionNumber, patient_id=item.PatientID, name=str(item.PatientName), sex=item.PatientSex,
          birth_date=dt.date(1952, 11, 3), modality=sps.Modality, aets=(),
          start=dt.datetime.strptime(sps.ScheduledProcedureStepStartDate + sps.ScheduledProcedureStepStartTime,
                                     "%Y%m%d%H%M%S"),
          study_uid=item.StudyInstanceUID, procedure_description=item.RequestedProcedureDescription,
          step_description=sps.ScheduledProcedureStepDescription, requesting=str(item.RequestingPhysician))
    srv = server_with_charset(charset)
    status, responses = find_file(srv, tmp_path, "issue49_query_pn_star_no_charset.dump", "mwl")
    assert status == "Success"
    (rsp,) = responses
    assert rsp.SpecificCharacterSet == charset
    assert str(rsp.PatientName) == "TESTÉ^ÉLODIE^^^Mme"
    raw = (tmp_path / "rsp" / "rsp0001.dcm").read_bytes()
    assert encoded in raw


@pytest.fixture
def server_with_charset(settings, session_factory, read_factory, store):
    started = []

    def _start(charset):
        srv = DicomServer(replace(settings, dicom_specific_character_set=charset), session_factory, read_factory,
                          store)
        srv.start()
        started.append(srv)
        return srv

    yield _start
    for srv in started:
        srv.stop()


def test_orthanc_query_without_sps_sequence(server, orthanc_station_items, tmp_path):
    query = dump_to_dataset(corpus_file("mwl", "query_7814_with_station_aet.dump"), tmp_path)
    del query.ScheduledProcedureStepSequence
    results = c_find(server, query)
    assert [r[0] for r in results] == [statuses.PENDING] * 3 + [statuses.SUCCESS]
    assert sorted(r[1].AccessionNumber for r in results[:3]) == ["AN123456", "AN123457", "AN123457-B"]
    assert all("ScheduledProcedureStepSequence" not in r[1] for r in results[:3])


DCMTK_EXAMPLES = Path("/usr/share/doc/dcmtk/examples")


@pytest.mark.parametrize("n", range(13))
def test_dcmtk_example_queries_against_orthanc_oracle(server, place, tmp_path, n):
    """DCMTK's wlistqry<n> against its ten wklist items; the names answered are Orthanc's (an oracle: compared
    as multisets of patient names, trailing padding ignored)."""
    if not (DCMTK_EXAMPLES / "wlistdb").is_dir():
        pytest.skip(f"DCMTK examples not installed at {DCMTK_EXAMPLES}")
    for item in sorted((DCMTK_EXAMPLES / "wlistdb" / "OFFIS").glob("wklist*.dump")):
        place_from_item(place, dump_to_dataset(item, tmp_path))
    expected = json.loads(corpus_file("mwl", f"dcmtk_expected_all_{n}.json").read_text())
    expected_names = sorted(re.search(r"\[(.*)\]", line).group(1).rstrip()
                            for answer in expected for line in answer if line.startswith("(0010,0010)"))
    query = tmp_path / "query.dcm"
    dump_to_dataset(DCMTK_EXAMPLES / "wlistqry" / f"wlistqry{n}.dump", tmp_path).save_as(query)
    result, responses = findscu(server.port, tmp_path / "rsp", query_file=query)
    assert final_status(result) == "Success"
    assert sorted(str(r.get("PatientName", "")) for r in responses) == expected_names
