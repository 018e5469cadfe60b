"""Unit tests of the MWL adapter without sockets: Identifier -> WorklistQuery, item -> response, handler."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from app.errors import InvalidInput
from app.queries.worklist import Text, WorklistItem
from interfaces.dicom import statuses
from interfaces.dicom.worklist import handle_find, identifier_response, query_from_identifier

# The tests build malformed query values on purpose; pydicom warns when they are set.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


def identifier(**top) -> Dataset:
    ds = Dataset()
    for keyword, value in top.items():
        if keyword == "sps":
            ds.ScheduledProcedureStepSequence = Sequence([_item(value)] if value is not None else [])
        else:
            setattr(ds, keyword, value)
    return ds


def _item(keys: dict) -> Dataset:
    item = Dataset()
    for keyword, value in keys.items():
        setattr(item, keyword, value)
    return item


def worklist_item(**changes) -> WorklistItem:
    values = dict(
        patient_id="P-1", issuer="HOSP", patient_name="MÜLLER^GRÉTA", birth_date=dt.date(1980, 1, 2), sex="F",
        accession_number="ACC-1", placer_order_number="PL-1", placer_issuer="HIS", filler_order_number="F-1",
        referring_physician="REF^ERIC", requesting_physician="REQ^RITA", reason="pain", order_priority="S",
        requested_procedure_id="RP-1", study_instance_uid="1.2.3.4", code_value="P1", code_scheme="LOCAL",
        code_meaning="Abdomen", procedure_description="US abdomen", procedure_priority="", sps_id="SPS-1",
        modality="US", station_aets=("US_ROOM1", "US_ROOM2"), station_name="US1",
        scheduled_start=dt.datetime(2024, 11, 24, 8, 5, 9), step_description="Abdomen step",
        performing_physician="PERF^PAUL", step_status="SCHEDULED",
    )
    values.update(changes)
    return WorklistItem(**values)


# Query ------------------------------------------------------------------------------------------------
def test_empty_identifier_is_universal(settings):
    q = query_from_identifier(identifier(PatientName="", PatientID="", AccessionNumber=""), settings)
    assert q.patient_name is q.patient_id is q.accession_number is q.start is q.study_uids is None
    assert [s.value for s in q.statuses] == list(settings.worklist_statuses)


def test_text_keys_and_wildcards(settings):
    q = query_from_identifier(identifier(PatientName="MÜ*^GR?TA", PatientID="P-1 ", IssuerOfPatientID="HOSP",
                                         AccessionNumber="ACC-1", RequestedProcedureID="RP-1",
                                         sps={"Modality": "CT", "ScheduledStationAETitle": "CT_ROOM2",
                                              "ScheduledStationName": "CT1", "ScheduledProcedureStepID": "S1"}),
                              settings)
    assert q.patient_name == Text("MÜ*^GR?TA") and q.patient_name.is_wildcard
    assert (q.patient_id, q.issuer, q.accession_number, q.requested_procedure_id) == (
        Text("P-1"), Text("HOSP"), Text("ACC-1"), Text("RP-1"))
    assert (q.modality, q.station_aet, q.station_name, q.sps_id) == (Text("CT"), Text("CT_ROOM2"), Text("CT1"),
                                                                     Text("S1"))


def test_study_uid_list_matching(settings):
    q = query_from_identifier(identifier(StudyInstanceUID=["1.2.3", "1.2.4"]), settings)
    assert q.study_uids == ("1.2.3", "1.2.4")
    assert query_from_identifier(identifier(StudyInstanceUID="1.2.3"), settings).study_uids == ("1.2.3",)
    with pytest.raises(InvalidInput):
        query_from_identifier(identifier(StudyInstanceUID="1.2.*"), settings)


@pytest.mark.parametrize("keyword", ["AccessionNumber", "PatientID"])
def test_multi_valued_text_key_is_refused(settings, keyword):
    with pytest.raises(InvalidInput) as err:
        query_from_identifier(identifier(**{keyword: ["A-1", "A-2"]}), settings)
    assert err.value.location == keyword


def test_multi_valued_key_inside_sps_is_refused(settings):
    with pytest.raises(InvalidInput):
        query_from_identifier(identifier(sps={"ScheduledStationAETitle": ["A1", "A2"]}), settings)


@pytest.mark.parametrize("value, low, high", [
    ("20201216", dt.date(2020, 12, 16), dt.date(2020, 12, 16)),
    ("-20201216", None, dt.date(2020, 12, 16)),
    ("20201216-", dt.date(2020, 12, 16), None),
    ("20201215-20201216", dt.date(2020, 12, 15), dt.date(2020, 12, 16)),
])
def test_date_values_and_ranges(settings, value, low, high):
    q = query_from_identifier(identifier(sps={"ScheduledProcedureStepStartDate": value}), settings)
    assert (q.start.date_from, q.start.date_to, q.start.has_date, q.start.has_time) == (low, high, True, False)


@pytest.mark.parametrize("value", ["20201216,", "2020-12-16", "2020121", "20201332", "-", "2020121a",
                                   "20201215-20201216-20201217", "20201215--20201216"])
def test_malformed_date_is_refused_never_universal(settings, value):
    with pytest.raises(InvalidInput) as err:
        query_from_identifier(identifier(sps={"ScheduledProcedureStepStartDate": value}), settings)
    assert err.value.location.endswith("ScheduledProcedureStepStartDate")


@pytest.mark.parametrize("value, low, high", [
    ("0800-1000", dt.time(8), dt.time(10, 0, 59, 999999)),
    ("10", dt.time(10), dt.time(10, 59, 59, 999999)),
    ("103015.5", dt.time(10, 30, 15, 500000), dt.time(10, 30, 15, 500000)),
    ("-0930", None, dt.time(9, 30, 59, 999999)),
])
def test_time_values_and_ranges(settings, value, low, high):
    q = query_from_identifier(identifier(sps={"ScheduledProcedureStepStartTime": value}), settings)
    assert (q.start.time_from, q.start.time_to, q.start.has_time, q.start.has_date) == (low, high, True, False)


@pytest.mark.parametrize("value", ["25", "10:30", "1060", "abc", "1030-11x"])
def test_malformed_time_is_refused(settings, value):
    with pytest.raises(InvalidInput):
        query_from_identifier(identifier(sps={"ScheduledProcedureStepStartTime": value}), settings)


def test_date_and_time_combine(settings):
    q = query_from_identifier(identifier(sps={"ScheduledProcedureStepStartDate": "20240101-20240102",
                                              "ScheduledProcedureStepStartTime": "2200-0200"}), settings)
    assert q.start.has_date and q.start.has_time
    assert (q.start.date_from, q.start.time_from) == (dt.date(2024, 1, 1), dt.time(22))
    assert (q.start.date_to, q.start.time_to) == (dt.date(2024, 1, 2), dt.time(2, 0, 59, 999999))


def test_sequence_key_with_two_items_is_refused(settings):
    ds = identifier()
    ds.ScheduledProcedureStepSequence = Sequence([_item({"Modality": "CT"}), _item({"Modality": "MR"})])
    with pytest.raises(InvalidInput):
        query_from_identifier(ds, settings)


def test_empty_sequence_and_empty_item_are_universal(settings):
    assert query_from_identifier(identifier(sps=None), settings).modality is None
    assert query_from_identifier(identifier(sps={}), settings).start is None


def test_unsupported_keys_are_ignored(settings):
    ds = identifier(PatientName="DOE*", PatientBirthDate="19800101", PatientSex="F", MedicalAlerts="x",
                    sps={"ScheduledPerformingPhysicianName": "DR^WHO", "ScheduledProcedureStepLocation": "L1"})
    private = ds.private_block(0x8001, "LIAC", create=True)
    private.add_new(0x01, "LO", "ONCO^FRANCO")
    q = query_from_identifier(ds, settings)
    assert q.patient_name == Text("DOE*") and q.modality is None


# Response ---------------------------------------------------------------------------------------------
def test_response_holds_exactly_the_requested_keys(settings):
    request = identifier(PatientName="", PatientID="", AccessionNumber="", PatientBirthDate="",
                         sps={"Modality": "", "ScheduledStationAETitle": "", "ScheduledProcedureStepStartDate": ""})
    rsp = identifier_response(worklist_item(), request, settings)
    assert [e.keyword for e in rsp] == ["SpecificCharacterSet", "AccessionNumber", "PatientName", "PatientID",
                                        "PatientBirthDate", "ScheduledProcedureStepSequence"]
    assert rsp.SpecificCharacterSet == "ISO_IR 192"
    assert (rsp.PatientName, rsp.PatientBirthDate) == ("MÜLLER^GRÉTA", "19800102")
    sps = rsp.ScheduledProcedureStepSequence[0]
    assert [e.keyword for e in sps] == ["Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate"]
    assert list(sps.ScheduledStationAETitle) == ["US_ROOM1", "US_ROOM2"]


def test_response_fills_every_known_return_key(settings):
    keys = ["PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
            "ReferringPhysicianName", "RequestingPhysician", "RequestedProcedureID", "RequestedProcedureDescription",
            "StudyInstanceUID", "RequestedProcedurePriority", "PlacerOrderNumberImagingServiceRequest",
            "FillerOrderNumberImagingServiceRequest", "ReasonForTheRequestedProcedure"]
    request = identifier(**{k: "" for k in keys})
    request.RequestedProcedureCodeSequence = Sequence()
    request.ScheduledProcedureStepSequence = Sequence()
    rsp = identifier_response(worklist_item(), request, settings)
    assert [str(rsp[k].value) for k in keys] == [
        "MÜLLER^GRÉTA", "P-1", "HOSP", "19800102", "F", "ACC-1", "REF^ERIC", "REQ^RITA", "RP-1", "US abdomen",
        "1.2.3.4", "STAT", "PL-1", "F-1", "pain"]
    code = rsp.RequestedProcedureCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("P1", "LOCAL", "Abdomen")
    sps = rsp.ScheduledProcedureStepSequence[0]       # empty sequence key: the whole item (PS3.4 C.2.2.2.6)
    assert (sps.Modality, sps.ScheduledStationName, sps.ScheduledProcedureStepID) == ("US", "US1", "SPS-1")
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == ("20241124", "080509")
    assert (sps.ScheduledProcedureStepDescription, sps.ScheduledProcedureStepStatus) == ("Abdomen step",
                                                                                         "SCHEDULED")
    assert sps.ScheduledPerformingPhysicianName == "PERF^PAUL"
    assert sps.ScheduledProtocolCodeSequence[0].CodeValue == "P1"


def test_unknown_and_empty_values_come_back_empty(settings):
    request = identifier(PatientName="", AdmissionID="", PatientWeight=None, PatientBirthDate="")
    request.ReferencedStudySequence = Sequence([_item({"ReferencedSOPClassUID": ""})])
    rsp = identifier_response(worklist_item(birth_date=None, station_aets=()), request, settings)
    for keyword in ("AdmissionID", "PatientWeight", "PatientBirthDate"):
        assert keyword in rsp and rsp[keyword].is_empty
    assert rsp.ReferencedStudySequence == Sequence()


def test_no_sps_sequence_when_not_requested(settings):
    rsp = identifier_response(worklist_item(), identifier(AccessionNumber=""), settings)
    assert "ScheduledProcedureStepSequence" not in rsp


def test_single_station_aet_and_charset_setting(settings):
    from config.settings import load_settings

    latin1 = load_settings(env={}, dicom_specific_character_set="ISO_IR 100")
    request = identifier(sps={"ScheduledStationAETitle": ""})
    rsp = identifier_response(worklist_item(station_aets=("CT1",)), request, latin1)
    assert rsp.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "CT1"
    assert rsp.SpecificCharacterSet == "ISO_IR 100"


# Handler ----------------------------------------------------------------------------------------------
class FakeEvent:
    def __init__(self, ds: Dataset, cancel_after: int | None = None):
        self.identifier = ds
        self.cancel_after = cancel_after
        self.checks = 0

    @property
    def is_cancelled(self) -> bool:
        self.checks += 1
        return self.cancel_after is not None and self.checks > self.cancel_after


def test_handler_yields_failure_for_malformed_date(read_factory, settings):
    results = list(handle_find(FakeEvent(identifier(sps={"ScheduledProcedureStepStartDate": "20201216,"})),
                               read_factory, settings))
    assert len(results) == 1
    status, ds = results[0]
    assert status.Status == statuses.IDENTIFIER_DOES_NOT_MATCH and ds is None
    assert "20201216," in status.ErrorComment
    assert status.OffendingElement == 0x00400002


def test_handler_pending_then_success_and_cancel(read_factory, settings, place):
    place("ACC-1", patient_id="P-1")
    place("ACC-2", patient_id="P-2")
    results = list(handle_find(FakeEvent(identifier(AccessionNumber="")), read_factory, settings))
    assert [r[0] for r in results] == [statuses.PENDING, statuses.PENDING, statuses.SUCCESS]
    assert [r[1].AccessionNumber for r in results[:2]] == ["ACC-1", "ACC-2"]
    results = list(handle_find(FakeEvent(identifier(AccessionNumber=""), cancel_after=1), read_factory, settings))
    assert [r[0] for r in results] == [statuses.PENDING, statuses.CANCEL]
