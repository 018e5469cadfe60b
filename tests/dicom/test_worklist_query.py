"""Unit tests of the MWL adapter without sockets: Identifier -> WorklistQuery, item -> response, handler (against
the real database of the test, through the core's PlaceOrder)."""

from __future__ import annotations

import datetime as dt
from io import BytesIO

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pynetdicom.dsutils import decode, encode

from app.errors import InvalidInput
from app.queries.worklist import CodeKey, Text, WorklistItem
from config.settings import SettingsError, load_settings
from interfaces.dicom import query_retrieve, statuses
from interfaces.dicom.worklist import (MATCHED_KEYS, answer_template, handle_find, identifier_response,
                                       query_from_identifier, worklist_config)

# The tests build malformed query values on purpose; pydicom warns when they are set.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


@pytest.fixture
def config(settings):
    return worklist_config(settings)


def configured(settings, **changes):
    return worklist_config(load_settings(env={}, data_dir=settings.data_dir, database_url=settings.database_url,
                                         **changes))


def identifier(**top) -> Dataset:
    ds = Dataset()
    for keyword, value in top.items():
        if keyword == "sps":
            ds.ScheduledProcedureStepSequence = Sequence([_item(value)] if value is not None else [])
        else:
            ds.update(_item({keyword: value}))
    return ds


def _item(keys: dict) -> Dataset:
    item = Dataset()
    for keyword, value in keys.items():
        if isinstance(value, dict):
            setattr(item, keyword, Sequence([_item(value)]))
        elif isinstance(value, bytes):          # as received: pydicom would refuse to hold it as a value
            tag = Tag(keyword)
            item._dict[tag] = RawDataElement(tag, None, len(value), value, 0, True, True)
        else:
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


def wire(ds: Dataset, implicit: bool = True, little: bool = True) -> Dataset:
    """An answer as the SCU reads it: encoded by pynetdicom (as it sends it), decoded again."""
    raw = encode(ds, implicit, little)
    assert raw, "pynetdicom could not encode the answer"
    return decode(BytesIO(raw), implicit, little)


# Query ------------------------------------------------------------------------------------------------
def test_empty_identifier_is_universal(config, settings):
    q = query_from_identifier(identifier(PatientName="", PatientID="", AccessionNumber=""), config)
    assert q.patient_name is q.patient_id is q.accession_number is q.start is q.study_uids is None
    assert [s.value for s in q.statuses] == list(settings.worklist_statuses)
    assert q.station_aets_any is None and q.unassigned_station_aet == "UNASSIGNED"


def test_text_keys_and_wildcards(config):
    q = query_from_identifier(identifier(PatientName="MÜ*^GR?TA", PatientID="P-1 ", IssuerOfPatientID="HOSP",
                                         AccessionNumber="ACC-1", RequestedProcedureID="RP-1", PatientSex="F",
                                         RequestedProcedureDescription="CT*", ReferringPhysicianName="REF*",
                                         sps={"Modality": "CT", "ScheduledStationAETitle": "CT_ROOM2",
                                              "ScheduledStationName": "CT1", "ScheduledProcedureStepID": "S1",
                                              "ScheduledPerformingPhysicianName": "WHO^DOCTOR",
                                              "ScheduledProcedureStepDescription": "MR*"}),
                              config)
    assert q.patient_name == Text("MÜ*^GR?TA") and q.patient_name.is_wildcard
    assert (q.patient_id, q.issuer, q.accession_number, q.requested_procedure_id, q.patient_sex) == (
        Text("P-1"), Text("HOSP"), Text("ACC-1"), Text("RP-1"), Text("F"))
    assert (q.modality, q.station_aet, q.station_name, q.sps_id) == (Text("CT"), Text("CT_ROOM2"), Text("CT1"),
                                                                     Text("S1"))
    assert (q.procedure_description, q.referring_physician) == (Text("CT*"), Text("REF*"))
    assert (q.performing_physician, q.step_description) == (Text("WHO^DOCTOR"), Text("MR*"))


def test_study_uid_list_matching(config):
    q = query_from_identifier(identifier(StudyInstanceUID=["1.2.3", "1.2.4"]), config)
    assert q.study_uids == ("1.2.3", "1.2.4")
    assert query_from_identifier(identifier(StudyInstanceUID="1.2.3"), config).study_uids == ("1.2.3",)
    with pytest.raises(InvalidInput):
        query_from_identifier(identifier(StudyInstanceUID="1.2.*"), config)


@pytest.mark.parametrize("keyword", ["AccessionNumber", "PatientID"])
def test_multi_valued_text_key_is_refused(config, keyword):
    with pytest.raises(InvalidInput) as err:
        query_from_identifier(identifier(**{keyword: ["A-1", "A-2"]}), config)
    assert err.value.location == keyword


def test_multi_valued_key_inside_sps_is_refused(config):
    with pytest.raises(InvalidInput):
        query_from_identifier(identifier(sps={"ScheduledStationAETitle": ["A1", "A2"]}), config)


@pytest.mark.parametrize("value, low, high", [
    ("20201216", dt.date(2020, 12, 16), dt.date(2020, 12, 16)),
    ("-20201216", None, dt.date(2020, 12, 16)),
    ("20201216-", dt.date(2020, 12, 16), None),
    ("20201215-20201216", dt.date(2020, 12, 15), dt.date(2020, 12, 16)),
])
def test_date_values_and_ranges(config, value, low, high):
    q = query_from_identifier(identifier(sps={"ScheduledProcedureStepStartDate": value}), config)
    assert (q.start.date_from, q.start.date_to, q.start.has_date, q.start.has_time) == (low, high, True, False)
    q = query_from_identifier(identifier(PatientBirthDate=value), config)
    assert (q.birth_date.date_from, q.birth_date.date_to) == (low, high)


@pytest.mark.parametrize("value", ["20201216,", "2020-12-16", "2020121", "20201332", "-", "2020121a",
                                   "20201215-20201216-20201217", "20201215--20201216"])
def test_malformed_date_is_refused_never_universal(config, value):
    with pytest.raises(InvalidInput) as err:
        query_from_identifier(identifier(sps={"ScheduledProcedureStepStartDate": value}), config)
    assert err.value.location.endswith("ScheduledProcedureStepStartDate")


@pytest.mark.parametrize("value, low, high", [
    ("0800-1000", dt.time(8), dt.time(10, 0, 59, 999999)),
    ("10", dt.time(10), dt.time(10, 59, 59, 999999)),
    ("103015.5", dt.time(10, 30, 15, 500000), dt.time(10, 30, 15, 500000)),
    ("-0930", None, dt.time(9, 30, 59, 999999)),
    ("2200-0200", dt.time(22), dt.time(2, 0, 59, 999999)),
])
def test_time_values_and_ranges(config, value, low, high):
    q = query_from_identifier(identifier(sps={"ScheduledProcedureStepStartTime": value}), config)
    assert (q.start.time_from, q.start.time_to, q.start.has_time, q.start.has_date) == (low, high, True, False)
    assert q.start.crosses_midnight == (value == "2200-0200")


@pytest.mark.parametrize("value", ["25", "10:30", "1060", "abc", "1030-11x"])
def test_malformed_time_is_refused(config, value):
    with pytest.raises(InvalidInput):
        query_from_identifier(identifier(sps={"ScheduledProcedureStepStartTime": value}), config)


def test_date_and_time_combine(config):
    q = query_from_identifier(identifier(sps={"ScheduledProcedureStepStartDate": "20240101-20240102",
                                              "ScheduledProcedureStepStartTime": "2200-0200"}), config)
    assert q.start.has_date and q.start.has_time
    assert (q.start.date_from, q.start.time_from) == (dt.date(2024, 1, 1), dt.time(22))
    assert (q.start.date_to, q.start.time_to) == (dt.date(2024, 1, 2), dt.time(2, 0, 59, 999999))


def test_sequence_key_with_two_items_is_refused(config):
    ds = identifier()
    ds.ScheduledProcedureStepSequence = Sequence([_item({"Modality": "CT"}), _item({"Modality": "MR"})])
    with pytest.raises(InvalidInput):
        query_from_identifier(ds, config)


def test_empty_sequence_and_empty_item_are_universal(config):
    assert query_from_identifier(identifier(sps=None), config).modality is None
    assert query_from_identifier(identifier(sps={}), config).start is None


def test_code_sequences_status_and_priority_keys(config):
    ds = identifier(RequestedProcedurePriority="STAT",
                    sps={"ScheduledProcedureStepStatus": "SCHEDULED",
                         "ScheduledProtocolCodeSequence": {"CodeValue": "P1", "CodeMeaning": "Abd*"}})
    ds.RequestedProcedureCodeSequence = Sequence([_item({"CodingSchemeDesignator": "LOCAL"})])
    q = query_from_identifier(ds, config)
    assert set(q.codes) == {CodeKey(scheme=Text("LOCAL")),
                            CodeKey(value=Text("P1"), meaning=Text("Abd*"), protocol=True)}   # the SPS's
    assert [s.value for s in q.statuses] == ["SCHEDULED"]            # only visible statuses, and only this one
    assert set(q.priorities) == {"STAT", "S"}                         # stored codes shown as STAT
    assert query_from_identifier(identifier(sps={"ScheduledProcedureStepStatus": "STARTED"}), config).statuses == ()


def test_keys_without_data_are_return_keys_only(config):
    """Optional keys the engine holds no data for are not matched (PS3.4 K.2.2.1.1.2): the query is the same as
    without them, and they come back empty."""
    ds = identifier(PatientName="DOE*", MedicalAlerts="x", AdmissionID="ADM-1",
                    sps={"ScheduledProcedureStepLocation": "L1"})
    private = ds.private_block(0x8001, "LIAC", create=True)
    private.add_new(0x01, "LO", "ONCO^FRANCO")
    assert query_from_identifier(ds, config) == query_from_identifier(identifier(PatientName="DOE*",
                                                                                 sps={}), config)
    assert not {"MedicalAlerts", "AdmissionID", "ScheduledProcedureStepLocation"} & MATCHED_KEYS
    rsp = wire(identifier_response(worklist_item(), ds, config))
    assert rsp.MedicalAlerts == "" and rsp.AdmissionID == ""
    assert rsp.ScheduledProcedureStepSequence[0].ScheduledProcedureStepLocation == ""


def test_every_answered_key_of_the_template_is_matched(config):
    """What the engine answers it also matches on (B1): every key of the answer template, at top level and in
    the SPS item, is a matching key, except the Type 2 SPS keys the engine holds no data for and the SPS end date
    and time (Table K.6-1: return keys of Type 3, no matching key type)."""
    template = answer_template(config)
    sps_keys = set(template["ScheduledProcedureStepSequence"].template)
    no_data = {"ScheduledProcedureStepLocation", "PreMedication", "RequestedContrastAgent"}
    return_only = {"ScheduledProcedureStepEndDate", "ScheduledProcedureStepEndTime"}
    assert (set(template) | sps_keys) - {"ScheduledProcedureStepSequence"} - no_data - return_only <= MATCHED_KEYS


# Identifier validation (every key, shared with Q/R) ----------------------------------------------------------
@pytest.mark.parametrize("keys, location", [
    (dict(PatientBirthDate="1999-01-01,"), "PatientBirthDate"),          # matched key
    (dict(PatientWeight=b"abc "), "PatientWeight"),                        # DS, a return key only
    (dict(PatientAge=b"12"), "PatientAge"),                               # AS
    (dict(PatientSex="female"), "PatientSex"),                           # CS: upper case, 16 at most
    (dict(OtherPatientIDs="A\x07B"), "OtherPatientIDs"),                 # control character
    (dict(StudyDate="20240230"), "StudyDate"),                           # not a date
    (dict(sps={"ScheduledProcedureStepEndTime": "2561"}), "ScheduledProcedureStepSequence.ScheduledProcedureStepEndTime"),
    (dict(sps={"ScheduledProtocolCodeSequence": {"CodeValue": "P\x01"}}),
     "ScheduledProcedureStepSequence.ScheduledProtocolCodeSequence.CodeValue"),
    (dict(SpecificCharacterSet="ISO_IR 999"), "SpecificCharacterSet"),
])
def test_malformed_value_in_any_key_is_refused(read_factory, config, keys, location):
    """B2: a value that is not of its VR is refused (A900 naming it) whether the engine matches on the key or not."""
    results = list(handle_find(FakeEvent(identifier(AccessionNumber="", **keys)), read_factory, config,
                               answer_template(config)))
    assert len(results) == 1
    status, ds = results[0]
    assert status.Status == statuses.IDENTIFIER_DOES_NOT_MATCH and ds is None
    assert location.rsplit(".", 1)[-1] in status.ErrorComment or location in status.ErrorComment
    keyword = location.rsplit(".", 1)[-1]
    from pydicom.datadict import tag_for_keyword
    assert status.OffendingElement == tag_for_keyword(keyword)


@pytest.mark.parametrize("keys", [
    dict(PatientName="*", PatientWeight="72.5", PatientAge="042Y", PatientSex="F", StudyDate="20240101-20240131"),
    dict(StudyTime="0800-1000", AcquisitionDateTime="20240101120000.5-0500-20240102"),
    dict(OtherPatientIDs="A\\B", sps={"ScheduledStationAETitle": "CT*", "ScheduledProcedureStepEndDate": ""}),
])
def test_well_formed_values_pass(read_factory, config, keys):
    results = list(handle_find(FakeEvent(identifier(AccessionNumber="", **keys)), read_factory, config,
                               answer_template(config)))
    assert [r[0] for r in results] == [statuses.SUCCESS]


def test_query_retrieve_find_shares_the_validation(read_factory, settings):
    event = FakeEvent(identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="", PatientWeight=b"abc "))
    event.request = type("Request", (), {"AffectedSOPClassUID": query_retrieve.STUDY_ROOT[0]})()
    (status, ds), = list(query_retrieve.handle_find(event, read_factory, settings))
    assert status.Status == statuses.IDENTIFIER_DOES_NOT_MATCH and status.OffendingElement == 0x00101030


# Settings ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, variable", [
    (dict(dicom_specific_character_set="ISO 2022 IR 87"), "RIS_DICOM_SPECIFIC_CHARACTER_SET"),   # not value 1
    (dict(dicom_specific_character_set="ISO_IR 999"), "RIS_DICOM_SPECIFIC_CHARACTER_SET"),
    (dict(dicom_specific_character_set="ISO_IR 192\\ISO 2022 IR 87"), "RIS_DICOM_SPECIFIC_CHARACTER_SET"),
    (dict(dicom_specific_character_set=""), "RIS_DICOM_SPECIFIC_CHARACTER_SET"),
    (dict(worklist_statuses=("SCHEDULED", "WAITING")), "RIS_WORKLIST_STATUSES"),
    (dict(worklist_unassigned_station_aet="A" * 17), "RIS_WORKLIST_UNASSIGNED_STATION_AET"),
    (dict(worklist_calling_aet_aliases=("CT_CONSOLE",)), "RIS_WORKLIST_CALLING_AET_ALIASES"),
])
def test_bad_worklist_settings_are_refused_at_start(settings, changes, variable):
    with pytest.raises(SettingsError) as err:
        configured(settings, **changes)
    assert variable in str(err.value)


def test_good_character_set_settings(settings):
    for value, terms in (("ISO_IR 100", ("ISO_IR 100",)), ("\\ISO 2022 IR 87", ("", "ISO 2022 IR 87")),
                         ("ISO 2022 IR 6\\ISO 2022 IR 87", ("ISO 2022 IR 6", "ISO 2022 IR 87"))):
        assert configured(settings, dicom_specific_character_set=value).charset == terms


def test_calling_aet_filter_and_aliases(settings):
    config = configured(settings, worklist_filter_calling_aet=True,
                        worklist_calling_aet_aliases=("CT_CONSOLE=CT_ROOM1|CT_ROOM2", "MR1=MR_ROOM1"))
    assert query_from_identifier(identifier(), config, "CT_CONSOLE").station_aets_any == (
        "CT_CONSOLE", "CT_ROOM1", "CT_ROOM2")
    assert query_from_identifier(identifier(), config, "US9").station_aets_any == ("US9",)
    assert query_from_identifier(identifier(), worklist_config(settings), "US9").station_aets_any is None


# Response ---------------------------------------------------------------------------------------------
def test_response_holds_exactly_the_requested_keys(config):
    request = identifier(PatientName="", PatientID="", AccessionNumber="", PatientBirthDate="",
                         sps={"Modality": "", "ScheduledStationAETitle": "", "ScheduledProcedureStepStartDate": ""})
    rsp = wire(identifier_response(worklist_item(), request, config))
    assert [e.keyword for e in rsp] == ["SpecificCharacterSet", "AccessionNumber", "PatientName", "PatientID",
                                        "PatientBirthDate", "ScheduledProcedureStepSequence"]
    assert rsp.SpecificCharacterSet == "ISO_IR 192"
    assert (rsp.PatientName, rsp.PatientBirthDate) == ("MÜLLER^GRÉTA", "19800102")
    sps = rsp.ScheduledProcedureStepSequence[0]
    assert [e.keyword for e in sps] == ["Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate"]
    assert list(sps.ScheduledStationAETitle) == ["US_ROOM1", "US_ROOM2"]


def test_response_fills_every_known_return_key(config):
    keys = ["PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
            "ReferringPhysicianName", "RequestingPhysician", "RequestedProcedureID", "RequestedProcedureDescription",
            "StudyInstanceUID", "RequestedProcedurePriority", "PlacerOrderNumberImagingServiceRequest",
            "FillerOrderNumberImagingServiceRequest", "ReasonForTheRequestedProcedure"]
    request = identifier(**{k: "" for k in keys})
    request.RequestedProcedureCodeSequence = Sequence()
    request.ScheduledProcedureStepSequence = Sequence()
    rsp = wire(identifier_response(worklist_item(), request, config))
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
    for type_2 in ("ScheduledProcedureStepLocation", "PreMedication", "RequestedContrastAgent"):
        assert type_2 in sps and sps[type_2].is_empty


def test_unknown_and_empty_values_come_back_empty(config):
    request = identifier(PatientName="", AdmissionID="", PatientWeight=None, PatientBirthDate="")
    request.ReferencedStudySequence = Sequence([_item({"ReferencedSOPClassUID": ""})])
    rsp = wire(identifier_response(worklist_item(birth_date=None, station_aets=()), request, config))
    for keyword in ("AdmissionID", "PatientWeight", "PatientBirthDate"):
        assert keyword in rsp and rsp[keyword].is_empty
    assert rsp.ReferencedStudySequence == Sequence()


def test_type_1_keys_always_have_a_value(config):
    """B6: Scheduled Station AE Title (Type 1) of a step on no station is the configured placeholder; the 1C
    descriptions fall back on the code (app.queries.worklist fills those)."""
    request = identifier(sps={"ScheduledStationAETitle": ""})
    rsp = wire(identifier_response(worklist_item(station_aets=()), request, config))
    assert rsp.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "UNASSIGNED"


def test_no_sps_sequence_when_not_requested(config):
    rsp = wire(identifier_response(worklist_item(), identifier(AccessionNumber=""), config))
    assert "ScheduledProcedureStepSequence" not in rsp


def test_single_station_aet_and_charset_setting(settings):
    latin1 = configured(settings, dicom_specific_character_set="ISO_IR 100")
    request = identifier(PatientName="", sps={"ScheduledStationAETitle": ""})
    raw = encode(identifier_response(worklist_item(station_aets=("CT1",)), request, latin1), True, True)
    rsp = decode(BytesIO(raw), True, True)
    assert rsp.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "CT1"
    assert rsp.SpecificCharacterSet == "ISO_IR 100" and rsp.PatientName == "MÜLLER^GRÉTA"
    assert "MÜLLER^GRÉTA".encode("latin-1") in raw


@pytest.mark.parametrize("charset, name, declared, encoded", [
    # A name the configured set holds is written in it...
    ("ISO_IR 100", "MÜLLER^GRÉTA", "ISO_IR 100", "MÜLLER^GRÉTA".encode("latin-1")),
    ("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"],
     b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"),   # PS3.5 H.3.1
    # ...one it cannot hold is written in UTF-8, never as bytes outside the declared repertoire.
    ("ISO_IR 100", "ИВАНОВ^ИВАН", "ISO_IR 192", "ИВАНОВ^ИВАН".encode("utf-8")),
    ("\\ISO 2022 IR 87", "MÜLLER^GRÉTA", "ISO_IR 192", "MÜLLER^GRÉTA".encode("utf-8")),
    ("ISO 2022 IR 6\\ISO 2022 IR 87", "ﾔﾏﾀﾞ^ﾀﾛｳ", "ISO_IR 192", "ﾔﾏﾀﾞ^ﾀﾛｳ".encode("utf-8")),   # half-width kana
])
def test_answer_character_set(settings, charset, name, declared, encoded):
    config = configured(settings, dicom_specific_character_set=charset)
    for implicit, little in ((True, True), (False, True), (False, False)):
        raw = encode(identifier_response(worklist_item(patient_name=name), identifier(PatientName=""), config,
                                         implicit, little), implicit, little)
        assert encoded in raw
        rsp = decode(BytesIO(raw), implicit, little)
        assert rsp.SpecificCharacterSet == declared and str(rsp.PatientName) == name


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


def find(read_factory, config, ds: Dataset) -> list[str]:
    results = list(handle_find(FakeEvent(ds), read_factory, config, answer_template(config)))
    assert results[-1][0] == statuses.SUCCESS, results[-1][0]
    return sorted(str(wire(r[1]).AccessionNumber) for r in results[:-1])


def test_handler_yields_failure_for_malformed_date(read_factory, config):
    results = list(handle_find(FakeEvent(identifier(sps={"ScheduledProcedureStepStartDate": "20201216,"})),
                               read_factory, config, answer_template(config)))
    assert len(results) == 1
    status, ds = results[0]
    assert status.Status == statuses.IDENTIFIER_DOES_NOT_MATCH and ds is None
    assert "20201216," in status.ErrorComment
    assert status.OffendingElement == 0x00400002


def test_handler_pending_then_success_and_cancel(read_factory, config, place):
    place("ACC-1", patient_id="P-1")
    place("ACC-2", patient_id="P-2")
    template = answer_template(config)
    results = list(handle_find(FakeEvent(identifier(AccessionNumber="")), read_factory, config, template))
    assert [r[0] for r in results] == [statuses.PENDING, statuses.PENDING, statuses.SUCCESS]
    assert [wire(r[1]).AccessionNumber for r in results[:2]] == ["ACC-1", "ACC-2"]
    results = list(handle_find(FakeEvent(identifier(AccessionNumber=""), cancel_after=1), read_factory, config,
                               template))
    assert [r[0] for r in results] == [statuses.PENDING, statuses.CANCEL]


@pytest.fixture
def two_orders(place):
    """Two orders that differ in every field a worklist item shows."""
    place("ACC-A", patient_id="P-A", issuer="HOSP-A", name="ALPHA^ANNA", birth_date=dt.date(1970, 1, 1), sex="F",
          modality="CT", aets=("CT_ROOM1",), start=dt.datetime(2024, 3, 12, 9, 30), rp_id="RP-A", sps_id="SPS-A",
          study_uid="1.2.826.0.1.3680043.10.999.1", code=("CTH", "LOCAL", "CT head"), station_name="CT1",
          step_description="CT head plain", procedure_description="CT head", placer="PL-A", priority="S",
          referring="REF^ALPHA", requesting="REQ^ALPHA", reason="headache", performing="HOUSE^GREGORY")
    place("ACC-B", patient_id="P-B", issuer="HOSP-B", name="BRAVO^BEN", birth_date=dt.date(1990, 6, 6), sex="M",
          modality="MR", aets=("MR_ROOM1",), start=dt.datetime(2024, 3, 13, 14, 0), rp_id="RP-B", sps_id="SPS-B",
          study_uid="1.2.826.0.1.3680043.10.999.2", code=("MRK", "OTHER", "MR knee"), station_name="MR1",
          step_description="MR knee plain", procedure_description="MR knee", placer="PL-B", priority="R",
          referring="REF^BRAVO", requesting="REQ^BRAVO", reason="knee pain", performing="WHO^DOCTOR")


def _key(keyword: str, value):
    """An identifier with one key set: top level, in the SPS item, or in a code sequence item ("a.b")."""
    top, _, inner = keyword.partition(".")
    ds = identifier(AccessionNumber="", sps={"Modality": ""})
    sps = ds.ScheduledProcedureStepSequence[0]
    if top in ("RequestedProcedureCodeSequence",):
        ds.RequestedProcedureCodeSequence = Sequence([_item({inner: value})])
    elif top == "ScheduledProtocolCodeSequence":
        sps.ScheduledProtocolCodeSequence = Sequence([_item({inner: value})])
    elif top in answer_template_sps_keys():
        setattr(sps, top, value)
    else:
        setattr(ds, top, value)
    return ds


def answer_template_sps_keys() -> set:
    from interfaces.dicom.worklist import WorklistConfig

    return set(answer_template(WorklistConfig())["ScheduledProcedureStepSequence"].template)


@pytest.mark.parametrize("keyword, value_a, wildcard_a", [
    ("PatientName", "ALPHA^ANNA", "AL*"),
    ("PatientID", "P-A", "?-A"),
    ("IssuerOfPatientID", "HOSP-A", "*-A"),
    ("PatientBirthDate", "19700101", "19600101-19800101"),
    ("PatientSex", "F", "F*"),
    ("AccessionNumber", "ACC-A", "*A"),
    ("ReferringPhysicianName", "REF^ALPHA", "REF^AL*"),
    ("RequestingPhysician", "REQ^ALPHA", "*ALPHA"),
    ("PlacerOrderNumberImagingServiceRequest", "PL-A", "PL-A*"),
    ("ReasonForTheRequestedProcedure", "headache", "head*"),
    ("RequestedProcedureID", "RP-A", "RP-A"),
    ("RequestedProcedureDescription", "CT head", "CT*"),
    ("StudyInstanceUID", "1.2.826.0.1.3680043.10.999.1", "1.2.826.0.1.3680043.10.999.1\\1.2.3"),
    ("RequestedProcedurePriority", "STAT", "ST*"),
    ("RequestedProcedureCodeSequence.CodeValue", "CTH", "CT?"),
    ("RequestedProcedureCodeSequence.CodingSchemeDesignator", "LOCAL", "LOC*"),
    ("RequestedProcedureCodeSequence.CodeMeaning", "CT head", "CT*"),
    ("Modality", "CT", "C?"),
    ("ScheduledStationAETitle", "CT_ROOM1", "CT*"),
    ("ScheduledStationName", "CT1", "C*"),
    ("ScheduledProcedureStepStartDate", "20240312", "-20240312"),
    ("ScheduledProcedureStepStartTime", "0930", "0900-1000"),
    ("ScheduledPerformingPhysicianName", "HOUSE^GREGORY", "HOUSE*"),
    ("ScheduledProcedureStepDescription", "CT head plain", "CT*"),
    ("ScheduledProcedureStepID", "SPS-A", "*-A"),
    ("ScheduledProtocolCodeSequence.CodeValue", "CTH", "CTH"),
    ("ScheduledProtocolCodeSequence.CodeMeaning", "CT head", "*head"),
])
def test_every_key_the_engine_holds_is_matched(read_factory, config, two_orders, keyword, value_a, wildcard_a):
    """B1/B3: each key selects exactly the items whose value matches, never "everything"."""
    assert find(read_factory, config, _key(keyword, value_a)) == ["ACC-A"]
    assert find(read_factory, config, _key(keyword, wildcard_a)) == ["ACC-A"]
    if keyword != "StudyInstanceUID":
        assert find(read_factory, config, _key(keyword, "*")) == ["ACC-A", "ACC-B"]     # universal
    nobody = {"PatientBirthDate": "20000101", "ScheduledProcedureStepStartDate": "20240314",
              "ScheduledProcedureStepStartTime": "1200", "StudyInstanceUID": "1.2.3", "PatientSex": "O",
              "RequestedProcedurePriority": "LOW", "Modality": "US"}.get(keyword, "NOBODY")
    assert find(read_factory, config, _key(keyword, nobody)) == []


def test_unknown_value_fails_to_match(read_factory, config, place):
    """PS3.4 K.2.2.1.1.1: an item with an empty value matches no non-universal key (it matches "*")."""
    place("ACC-E", patient_id="P-E")                    # no sex, no birth date, no performing physician, no code
    for keyword, value in (("PatientSex", "F"), ("PatientBirthDate", "-20990101"),
                           ("ScheduledPerformingPhysicianName", "?*"), ("RequestedProcedureCodeSequence.CodeValue",
                                                                        "*X*")):
        assert find(read_factory, config, _key(keyword, value)) == [], keyword
    assert find(read_factory, config, _key("PatientSex", "*")) == ["ACC-E"]


def test_descriptions_and_station_fall_back(read_factory, config, place):
    """What is answered for the Type 1/1C keys of an order without them is what is matched."""
    place("ACC-C", patient_id="P-C", aets=(), code=("XR1", "LOCAL", "Chest two views"))
    place("ACC-D", patient_id="P-D", modality="US", aets=())
    assert find(read_factory, config, _key("RequestedProcedureDescription", "Chest two views")) == ["ACC-C"]
    assert find(read_factory, config, _key("ScheduledProcedureStepDescription", "Chest*")) == ["ACC-C"]
    assert find(read_factory, config, _key("RequestedProcedureDescription", "US")) == ["ACC-D"]
    assert find(read_factory, config, _key("ScheduledStationAETitle", "UNASSIGNED")) == ["ACC-C", "ACC-D"]
    assert find(read_factory, config, _key("ScheduledStationAETitle", "CT*")) == []


@pytest.mark.parametrize("date, time, expected", [
    (None, "2200-0200", ["ACC-LATE", "ACC-NIGHT"]),           # time of day on any date, across midnight (B5)
    (None, "2200-", ["ACC-LATE"]),
    (None, "-0200", ["ACC-NIGHT"]),
    ("20240312", "2200-0200", ["ACC-LATE", "ACC-NIGHT"]),     # the night that begins on the 12th
    ("20240312-20240313", "2200-0200", ["ACC-LATE", "ACC-NIGHT"]),   # one date-time range: 12th 22:00 to 13th 02:00
    ("20240313", "2200-0200", []),
    ("20240313", "0000-0200", ["ACC-NIGHT"]),
])
def test_time_ranges_across_midnight(read_factory, config, place, date, time, expected):
    place("ACC-DAY", patient_id="P-1", start=dt.datetime(2024, 3, 12, 12, 0))
    place("ACC-LATE", patient_id="P-2", start=dt.datetime(2024, 3, 12, 23, 30))
    place("ACC-NIGHT", patient_id="P-3", start=dt.datetime(2024, 3, 13, 1, 0))
    sps = {"ScheduledProcedureStepStartTime": time}
    if date:
        sps["ScheduledProcedureStepStartDate"] = date
    assert find(read_factory, config, identifier(AccessionNumber="", sps=sps)) == expected


def test_names_case_insensitive_setting(read_factory, settings, place):
    place("ACC-1", patient_id="P-1", name="MÜLLER^GRÉTA", performing="HOUSE^GREGORY")
    query = identifier(AccessionNumber="", PatientName="müller^g*")
    assert find(read_factory, worklist_config(settings), query) == []                 # default: case sensitive
    ci = configured(settings, worklist_names_case_insensitive=True)
    assert find(read_factory, ci, query) == ["ACC-1"]
    assert find(read_factory, ci, _key("ScheduledPerformingPhysicianName", "house^gregory")) == ["ACC-1"]
    assert find(read_factory, ci, _key("PatientID", "p-1")) == []                    # only person names


def test_hidden_step_statuses(read_factory, settings, session_factory, place):
    from app.db import unit_of_work
    from app.models import ProcedureStep, StepStatus

    place("ACC-1", patient_id="P-1")
    place("ACC-2", patient_id="P-2")
    with unit_of_work(session_factory) as session:         # as MPPS IN PROGRESS leaves it
        step = session.query(ProcedureStep).filter_by(sps_id="ACC-2").one()
        step.status = StepStatus.IN_PROGRESS
    assert find(read_factory, worklist_config(settings), identifier(AccessionNumber="")) == ["ACC-1"]
    shown = configured(settings, worklist_statuses=("SCHEDULED", "IN_PROGRESS"))
    assert find(read_factory, shown, identifier(AccessionNumber="")) == ["ACC-1", "ACC-2"]
    assert find(read_factory, shown, _key("ScheduledProcedureStepStatus", "STARTED")) == ["ACC-2"]
    only_scheduled = configured(settings, worklist_statuses=("SCHEDULED",))
    assert find(read_factory, only_scheduled, _key("ScheduledProcedureStepStatus", "STARTED")) == []


# Query plans (SQLite) ---------------------------------------------------------------------------------------
def _bulk_steps(engine, first: int, last: int) -> None:
    """Steps first..last straight into the tables (the plan, not the services, is tested): one patient, order,
    procedure, step and station each; patient names ALPHA0001..., half CT, half MR."""
    now = dt.datetime(2026, 12, 3, 8)
    ids = range(first, last + 1)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO patients (id, patient_id, issuer, name, sex, version, created_at, updated_at)"
                             " VALUES (?, ?, '', ?, 'F', 1, ?, ?)", [(i, f"P{i}", f"N{i:05d}^X", now, now) for i in ids])
        conn.exec_driver_sql("INSERT INTO orders (id, patient_fk, placer_order_number, placer_issuer, "
                             "filler_order_number, accession_number, status, priority, referring_physician, "
                             "requesting_physician, reason, sender, version, created_at, updated_at) VALUES "
                             "(?, ?, ?, '', '', ?, 'SCHEDULED', '', '', '', '', '', 1, ?, ?)",
                             [(i, i, f"PL{i}", f"A{i}", now, now) for i in ids])
        conn.exec_driver_sql("INSERT INTO requested_procedures (id, order_fk, requested_procedure_id, "
                             "study_instance_uid, code_value, code_scheme, code_meaning, description, priority, state) "
                             "VALUES (?, ?, ?, ?, '', '', '', '', '', 'SCHEDULED')",
                             [(i, i, f"RP{i}", f"1.2.{i}") for i in ids])
        conn.exec_driver_sql("INSERT INTO procedure_steps (id, procedure_fk, sps_id, modality, station_name, "
                             "scheduled_start, description, performing_physician, status, updated_at) VALUES "
                             "(?, ?, ?, ?, '', ?, '', '', 'SCHEDULED', ?)",
                             [(i, i, f"S{i}", "CT" if i % 2 else "MR", now + dt.timedelta(minutes=i), now)
                              for i in ids])
        conn.exec_driver_sql("INSERT INTO step_stations (id, step_fk, ae_title) VALUES (?, ?, ?)",
                             [(i, i, f"ROOM{i % 40}") for i in ids])


@pytest.mark.parametrize("keys, first_step", [
    (dict(PatientID="P77"), "SEARCH patients USING"),
    (dict(AccessionNumber="A77"), "SEARCH orders USING INDEX ix_orders_accession"),
    (dict(PatientName="N0007*"), "ix_patients_name"),
    (dict(sps={"Modality": "CT", "ScheduledProcedureStepStartDate": "20261203"}),
     "SEARCH procedure_steps USING INDEX ix_steps_modality_start"),
    (dict(sps={"ScheduledStationAETitle": "ROOM7"}), "ix_step_stations_ae_title"),
    (dict(sps={"ScheduledProcedureStepID": "S77"}), "SEARCH procedure_steps USING INDEX ix_procedure_steps_sps_id"),
])
def test_selective_queries_use_their_index_without_statistics(engine, read_factory, config, keys, first_step):
    """A fresh or just loaded SQLite database has no planner statistics: the selective key must drive the plan
    anyway, never the status index over every step (docs/performance.md)."""
    from app.queries.worklist import build_query

    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's planner without statistics")
    _bulk_steps(engine, 1, 3000)
    with read_factory() as session:
        assert session.connection().exec_driver_sql(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").scalar() == 0
        sql = build_query(session, query_from_identifier(identifier(**keys), config)).compile(
            engine, compile_kwargs={"literal_binds": True})
        plan = [r[-1] for r in session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    assert any(first_step in step for step in plan[:3]), plan
    assert not any("ix_steps_status_start" in step or step.startswith("SCAN procedure_steps") for step in plan), plan


def test_statistics_are_refreshed_after_growth(engine):
    """app.db.refresh_statistics (run every minute by the scheduler) analyzes a database without statistics,
    then again only once the steps have grown by a fifth."""
    from app.db import refresh_statistics

    if engine.dialect.name != "sqlite":
        assert refresh_statistics(engine) is False              # autovacuum's job on PostgreSQL
        return
    assert refresh_statistics(engine) is True                   # no statistics at all yet
    _bulk_steps(engine, 1, 1000)
    assert refresh_statistics(engine) is True                   # rows, but none counted
    assert refresh_statistics(engine) is False
    _bulk_steps(engine, 1001, 1150)                             # +15 %
    assert refresh_statistics(engine) is False
    _bulk_steps(engine, 1151, 1300)                             # +30 % since the last ANALYZE
    assert refresh_statistics(engine) is True
    assert refresh_statistics(engine) is False
