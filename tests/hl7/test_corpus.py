"""Every file of ../shared/corpus/hl7 decoded and tokenized; concrete values from ../shared/corpus/SOURCES.md."""

from __future__ import annotations

import datetime as dt

import pytest

from interfaces.hl7 import (
    HL7_NULL,
    Delimiters,
    HL7ParseError,
    decode_message,
    parse,
    parse_date,
    parse_dtm,
    split_messages,
)
from tests.hl7.conftest import corpus_dir, corpus_message, corpus_text, hl7_files

pytestmark = pytest.mark.corpus

BROKEN_MSH2 = "adt_a01_v25_hapi_pam_broken_msh2_utf8.hl7"
# Files holding more than one message, and the expected count.
BATCHES = {"siu_batch_s12_s14_s15_v23_mirth_no_bhs.hl7": 3}


@pytest.mark.parametrize("name", hl7_files())
def test_every_file_decodes_and_tokenizes(name):
    raw = (corpus_dir("hl7") / name).read_bytes()
    decoded = decode_message(raw)
    texts = split_messages(decoded.text)
    assert len(texts) == BATCHES.get(name, 1)
    if name == BROKEN_MSH2:
        with pytest.raises(HL7ParseError) as caught:
            parse(texts[0])
        assert caught.value.location == "MSH-2"
        assert "MSH-2" in str(caught.value)
        return
    for text in texts:
        msg = parse(text)
        assert msg.segments[0].name == "MSH"
        assert all(segment.name for segment in msg.segments)
        assert msg.version.startswith("2.")
        # every value of every field can be read without an exception
        for segment in msg.segments:
            for field in range(1, segment.field_count + 1):
                segment.values(field)


def test_a_file_with_comment_lines_before_msh_needs_split_messages():
    text = corpus_text("hl7", "oru_r01_v22_hapi_msa_in_oru_inline_obx.hl7")
    with pytest.raises(HL7ParseError) as caught:
        parse(text)
    assert caught.value.location == "MSH"
    msg = corpus_message("hl7", "oru_r01_v22_hapi_msa_in_oru_inline_obx.hl7")
    assert msg.segment_names() == ["MSH", "MSA", "PID", "PV1", "OBR", "OBR", "OBR"]
    assert msg.value("MSA", 2) == "msgCtrlId"
    # OBX glued into the first OBR line stays field data (no guessing)
    assert msg.value("OBR", 36) == " OBX"
    assert msg.value("OBR", 41) == "This is a test on 05/02/94."


def test_orm_dcm4che_ihe_obr18_zds():
    msg = corpus_message("hl7", "orm_o01_v231_dcm4che_ihe_obr18_zds.hl7")
    assert msg.control_id == "103106"
    assert (msg.value("OBR", 18), msg.value("OBR", 19), msg.value("OBR", 20)) == ("MOF5026", "RP1026", "SPS2032")
    assert msg.value("OBR", 24) == "MR"
    assert msg.value("ZDS", 1) == "1.113654.3.13.1026"
    assert msg.value("PID", 3) == "583295"
    assert [msg.value("OBR", 4, comp=c) for c in range(1, 7)] == [
        "P1", "Procedure 1", "ERL_MESA", "X1_A1", "SP Action Item X1_A1", "DSS_MESA"
    ]
    assert msg.value("ORC", 9) == "200007010900"
    assert msg.value("MSH", 7) == ""
    assert msg.charset_field == " "


def test_msh18_single_space_means_not_given():
    decoded = decode_message((corpus_dir("hl7") / "adt_a08_v251_dcm4che_no_msh7_msh18_space.hl7").read_bytes())
    assert (decoded.declared, decoded.codec, decoded.warnings) == (None, "ascii", ())


def test_omi_ipc_two_station_aets_and_utf8_dash_under_latin1_declaration():
    raw = (corpus_dir("hl7") / "omi_o23_v251_dcm4che_ipc_two_station_aets.hl7").read_bytes()
    decoded = decode_message(raw)
    assert decoded.codec == "utf-8"
    assert decoded.warnings == ("declared 8859/1 but bytes are UTF-8; decoded as utf-8",)
    msg = parse(decoded.text)
    assert msg.values("IPC", 9) == ["ScheduledStationAET1", "ScheduledStationAET2"]
    assert msg.value("IPC", 1) == "AccessionNumber"
    assert msg.value("IPC", 3) == "1.2.392.200036.9125.0.198811291108.7"
    assert msg.value("IPC", 5) == "CT"
    assert msg.value("TQ1", 7) == "200008161510"
    assert "12 \u201335." in msg.value("OBR", 31, comp=2)


def test_omi_2021_ipc_protocol_code():
    msg = corpus_message("hl7", "omi_o23_v251_dcm4che_2021_ipc_protocol_code.hl7")
    assert [msg.value("IPC", 6, comp=c) for c in (1, 2, 3)] == ["ProtocolCode", "ProtocolMeaning", "ProtocolScheme"]
    assert msg.values("IPC", 9) == ["MODALITY"]
    assert msg.value("IPC", 1) == "ACC"
    assert msg.value("IPC", 3) == "1.2.392.200036.9125.0.199402091242.1"
    assert [msg.value("OBX", 5, occurrence=n) for n in (1, 2)] == ["15", "0.4"]
    assert msg.value("PID", 3) == "4711471151"


def test_orm_named_file_is_an_omi_with_zds():
    msg = corpus_message("hl7", "orm_o01_named_but_msh9_omi_o23_dcm4che_zds.hl7")
    assert (msg.message_code, msg.trigger_event, msg.structure) == ("OMI", "O23", "OMI_O23")
    assert msg.segment("IPC") is None
    assert msg.value("OBR", 18) == "AccessionNumber"


def test_omg_eyecare_obr_and_zds():
    msg = corpus_message("hl7", "omg_o19_v251_dcm4che_eyecare_general_order.hl7")
    assert (msg.value("OBR", 18), msg.value("OBR", 19), msg.value("OBR", 20)) == (
        "AccessionNumber", "RequestedProcID", "ScheduledProcStepID"
    )
    assert msg.value("ZDS", 1) == "1.2.392.200036.9125.0.198811291108.7"


def test_latin1_french_pam():
    raw = (corpus_dir("hl7") / "adt_a31_v25_fr_pam_latin1_ins_vid_components.hl7").read_bytes()
    assert b"\xe9" in raw
    decoded = decode_message(raw)
    assert (decoded.codec, decoded.warnings) == ("iso8859-1", ())
    msg = parse(decoded.text)
    assert msg.value("PID", 11, comp=2) == "1er étage"
    assert msg.version == "2.5"
    assert msg.raw("MSH", 12) == "2.5^FRA^2.11"
    assert msg.processing_id == "D"
    assert msg.values("PID", 3) == ["123456789", "170017510112313"]
    assert msg.value("PID", 3, rep=2, comp=4, sub=2) == "1.2.250.1.213.1.4.10"
    assert msg.values("PID", 5, comp=7) == ["D", "L"]
    assert msg.values("PID", 32) == ["PROV", "FICT"]


@pytest.mark.parametrize(
    "name", ["adt_a08_v25_ssmix2_iso2022jp_kanji_kana.hl7", "omg_o19_v25_ssmix2_iso2022jp_xray_4_child_orders.hl7"]
)
def test_iso2022jp_files_decode_to_japanese(name):
    decoded = decode_message((corpus_dir("hl7") / name).read_bytes())
    assert (decoded.codec, decoded.declared, decoded.warnings) == ("iso2022_jp_2", "ISO IR87", ())
    msg = parse(decoded.text)
    assert msg.raw("MSH", 18) == "~ISO IR87"
    assert (msg.value("PID", 5), msg.value("PID", 5, comp=2)) == ("患者", "太郎")
    assert msg.value("PID", 5, rep=2) == "カンジャ"
    assert msg.values("PID", 5, comp=8) == ["I", "P"]


def test_iso2022jp_adt_details():
    msg = corpus_message("hl7", "adt_a08_v25_ssmix2_iso2022jp_kanji_kana.hl7")
    assert msg.value("PID", 3) == "9999013"
    assert msg.value("OBX", 3, comp=2) == "身長"
    assert msg.value("OBX", 5) == "167.8"
    assert parse_dtm(msg.value("MSH", 7)) == dt.datetime(2011, 12, 20, 22, 44, 47, 339900)


def test_iso2022jp_omg_four_child_orders():
    msg = corpus_message("hl7", "omg_o19_v25_ssmix2_iso2022jp_xray_4_child_orders.hl7")
    assert [orc.value(1) for orc in msg.all("ORC")] == ["NW", "PA", "CH", "CH", "CH", "CH"]
    assert msg.value("OBR", 4, comp=2, occurrence=3) == "胸部.Ｘ線単純撮影.立位正面(A→P)"
    assert msg.segments[-1].fields[-1] == "000201101200100"  # the stray 0x1C at the end is framing, not data


def test_custom_delimiters_crlf():
    msg = corpus_message("hl7", "adt_a24_v24_hapi_custom_delimiters_crlf.hl7")
    assert msg.delimiters == Delimiters("^", "~", "|", "\\", "&")
    assert (msg.message_code, msg.trigger_event) == ("ADT", "A24")
    assert [msg.value("PID", 3, occurrence=n) for n in (1, 2)] == ["11111", "22222"]
    assert msg.value("PID", 3, comp=4) == "FOO"
    assert msg.value("PID", 3, comp=6, sub=1) == "FACILITY ID"
    assert parse_dtm(msg.value("MSH", 7)).utcoffset() == dt.timedelta(hours=-5)


def test_utf8_slovenian_repeated_ids_and_subcomponents():
    msg = corpus_message("hl7", "orm_o01_v231_hapi_utf8_slovenian_af.hl7")
    assert msg.charset_field == "UNICODE UTF-8"
    assert msg.values("PID", 3) == ["123", "1234", "12345"]
    assert msg.values("PID", 3, comp=6) == ["BIS", "HIS", "KZZZ"]
    assert (msg.value("OBR", 15, comp=5), msg.value("OBR", 15, comp=5, sub=2)) == ("L", "Left")
    assert msg.processing_id == "1"
    assert msg.value("ORC", 1) == "AF"


def test_undeclared_utf8_german():
    raw = (corpus_dir("hl7") / "adt_a08_v23_nhapi_de_umlauts_in1_repeats_zbe.hl7").read_bytes()
    decoded = decode_message(raw)
    assert (decoded.codec, decoded.declared, decoded.warnings) == ("utf-8", None, ())
    msg = parse(decoded.text)
    assert msg.value("IN1", 5) == "Hans-Böckler-Allee 30"
    assert msg.value("ZBE", 1) == "13033374"
    assert msg.value("NK1", 16, comp=2) == "YYYYMMDDHHMMSS"
    with pytest.raises(ValueError):
        parse_date(msg.value("NK1", 16, comp=2))


def test_quoted_nulls_and_pid3_repetitions():
    msg = corpus_message("hl7", "adt_a08_v23_nhapi_pid3_repeats_quoted_nulls.hl7")
    # SOURCES.md says PID-27..29; counted from PID-1 they are PID-26..28 (hl7apy agrees: PID_26..PID_28)
    assert [msg.value("PID", n) for n in (26, 27, 28)] == [HL7_NULL] * 3
    assert msg.values("PID", 3, comp=4) == ["TEC MRN", "CLH MRN", "EUH MRN", "EMPI"]
    assert msg.control_id == "Q2043855220T2330403781X928163"


def test_batch_file_python_hl7():
    (text,) = split_messages(corpus_text("hl7", "batch_file_fhs_bhs_adt_a04_v25_pythonhl7.hl7"))
    msg = parse(text)
    assert msg.segment_names() == ["MSH", "EVN", "PID", "PD1", "NK1", "PV1"]
    assert msg.value("PID", 3) == "0000112234"
    assert msg.charset_field == "ASCII"
    with pytest.raises(ValueError):
        parse_date(msg.value("PID", 7))  # '10131113'


def test_batch_without_trailers_mirth():
    (text,) = split_messages(corpus_text("hl7", "batch_fhs_bhs_no_trailers_orm_v24_mirth_crlf.hl7"))
    msg = parse(text)
    assert msg.segment_names()[:5] == ["MSH", "PID", "PV1", "ORC", "OBR"]
    assert len(msg.all("OBX")) == 17
    assert msg.raw("OBR", 18) == "MR^20061213-0007"
    # an unescaped '&' in OBR-4 is a subcomponent separator, as the standard says
    assert (msg.value("OBR", 4, comp=3), msg.value("OBR", 4, comp=3, sub=2)) == ("Jane MRI W/", "W/O CONTRAST")
    with pytest.raises(ValueError):
        parse_date(msg.value("PID", 7))  # 'Aug 15, 1942'


def test_siu_batch_three_messages_in_order():
    texts = split_messages(corpus_text("hl7", "siu_batch_s12_s14_s15_v23_mirth_no_bhs.hl7"))
    msgs = [parse(text) for text in texts]
    assert [m.trigger_event for m in msgs] == ["S12", "S14", "S15"]
    assert [m.value("SCH", 25) for m in msgs] == ["Scheduled", "Scheduled", "Cancelled"]
    assert [m.value("AIL", 9) for m in msgs] == ["45", "60", "60"]
    assert [m.value("SCH", 1) for m in msgs] == ["10345"] * 3


def test_hex_escape_decoded_with_the_msh18_charset():
    msg = corpus_message("hl7", "siu_s12_v251_dcm4che_hex_escape_ais.hl7")
    assert msg.raw("AIS", 3) == "34000023^SEPTOPLASTIA (OPERA\\XC7\\\\XC3\\O ISOLADA)^THCD"
    assert msg.value("AIS", 3, comp=2) == "SEPTOPLASTIA (OPERAÇÃO ISOLADA)"
    assert msg.value("AIS", 4) == "20201023083000"
    assert msg.value("AIS", 11) == "-38521669"
    assert msg.segment("SCH") is None


def test_siu_latin_text_without_msh18():
    decoded = decode_message((corpus_dir("hl7") / "siu_s12_v24_dcm4che_latin_text_no_msh18.hl7").read_bytes())
    assert decoded.codec == "utf-8"
    msg = parse(decoded.text)
    assert msg.value("PV1", 3) == "Clínica Médica"
    assert parse_date(msg.value("PID", 7)) == dt.date(1950, 1, 31)
    with pytest.raises(ValueError):
        parse_dtm(msg.value("PID", 7))


def test_tz_offsets_and_empty_pd1():
    msg = corpus_message("hl7", "adt_a31_v23_hapi_tz_offset_crlf_empty_pd1.hl7")
    assert msg.segment_names() == ["MSH", "EVN", "PID", "PD1", "PV1"]
    assert msg.segment("PD1").field_count == 0
    assert parse_date(msg.value("PID", 7)) == dt.date(1970, 10, 4)
    sent = parse_dtm(msg.value("MSH", 7))
    assert (sent.microsecond, sent.utcoffset()) == (292000, dt.timedelta(hours=1))
    assert msg.value("PID", 3) == "M07869D"
    assert msg.sending_application == ""


def test_whitespace_padded_values_are_returned_as_sent():
    msg = corpus_message("hl7", "orm_o01_v24_mirth_whitespace_padded_crlf.hl7")
    assert msg.segment_names() == ["MSH", "PID"]
    assert msg.value("PID", 2) == "  4223161584"
    assert msg.value("PID", 1) == "1 "


def test_trailing_spaces_and_trailing_bars():
    dc = corpus_message("hl7", "orm_o01_v24_screenit_dc_trailing_space_lf.hl7")
    assert dc.charset_field == "8859/1 "
    assert (dc.value("ORC", 1), dc.value("ORC", 5).strip()) == ("DC", "IP")
    od = corpus_message("hl7", "orm_o01_v24_screenit_od_ca_trailing_pipes_lf.hl7")
    assert od.segment("ORC").fields == ["ORC", "OD", "1", "", "", "CA", ""]


def test_dutch_prefix_name_subcomponents():
    msg = corpus_message("hl7", "orm_o01_v24_screenit_xo_sc_mammo_lf.hl7")
    assert [msg.value("PID", 5, sub=n) for n in (1, 2, 3)] == ["van Doe", "van", "Doe"]
    assert msg.value("PID", 5, comp=2) == "J."
    assert msg.value("PID", 3, comp=4) == "NLMINBIZA"


def test_msh_only_without_message_code():
    msg = corpus_message("hl7", "msh_only_v231_openmrs_msh9_missing_message_code.hl7")
    assert msg.segment_names() == ["MSH"]
    assert (msg.message_code, msg.trigger_event, msg.control_id) == ("", "O01", "")


def test_merges():
    a34 = corpus_message("hl7", "adt_a34_v23_lfh_evn_says_a40_no_msh7.hl7")
    assert (a34.trigger_event, a34.value("EVN", 1), a34.control_id) == ("A34", "A40", "")
    assert (a34.value("PID", 3), a34.value("MRG", 1)) == ("123", "456")
    pairs = corpus_message("hl7", "adt_a40_v25_lfh_two_pid_mrg_pairs.hl7")
    assert [m.value(1) for m in pairs.all("MRG")] == ["MR2", "MR4"]
    assert [p.value(3) for p in pairs.all("PID")] == ["MR1", "MR3"]
    assert pairs.value("MSH", 8) == "SEC"
    mirth = corpus_message("hl7", "adt_a40_v23_mirth_17digit_ts_plain_mrg.hl7")
    assert parse_dtm(mirth.value("MSH", 7)) == dt.datetime(2011, 6, 13, 12, 24, 6, 637000)
    assert (mirth.value("PID", 3), mirth.value("MRG", 1)) == ("1765431", "1765475")
    dcm = corpus_message("hl7", "adt_a40_v251_dcm4che_merge_mrg.hl7")
    assert (dcm.value("PID", 3), dcm.value("MRG", 1), dcm.value("MRG", 7)) == ("NEW_PID_1", "OLD_PID_1", "Old_Smith")


def test_veterinary_and_alternate_ids():
    msg = corpus_message("hl7", "adt_a31_v251_dcm4che_veterinary_pid2_pid4.hl7")
    assert (msg.value("PID", 2), msg.value("PID", 3), msg.value("PID", 4)) == ("CHIP_ID_1", "PID_1", "TATTOO_ID_1")
    assert msg.value("PID", 8) == "F"
    assert msg.value("PID", 36, comp=2) == "Toy poodle dog breed"


def test_v22_hapi_orders():
    xr = corpus_message("hl7", "orm_o01_v22_hapi_xr_changed_as_requested_lf.hl7")
    assert (xr.raw("MSH", 3), xr.sending_application, xr.processing_id) == ("DMCOE ", "DMCOE", "D")
    assert xr.value("ORC", 1) == "XR"
    assert xr.value("PV1", 7, comp=2, sub=2) == "ANNA"
    cr = corpus_message("hl7", "orm_o01_v22_hapi_cr_canceled_as_requested_lf.hl7")
    assert (cr.value("ORC", 2), cr.value("ORC", 3)) == ("003631.0018.001", "0000000511")
    nw = corpus_message("hl7", "orm_o01_v22_hapi_nw_no_filler_lf.hl7")
    assert (nw.value("ORC", 3), nw.value("MSH", 13)) == ("", "1806")


def test_openmrs_orders_without_control_id():
    nw = corpus_message("hl7", "orm_o01_v231_openmrs_nw_zds_routine.hl7")
    assert nw.control_id == ""
    assert (nw.value("OBR", 18), nw.value("OBR", 19), nw.value("OBR", 20)) == ("", "2", "2")
    assert nw.value("OBR", 4, comp=5) == "CT ABDOMEN PANCREAS WITH IV CONTRAST"
    assert nw.value("ZDS", 1, comp=2) == "1"
    ca = corpus_message("hl7", "orm_o01_v231_openmrs_ca_cancel.hl7")
    assert (ca.value("ORC", 1), ca.value("ORC", 7, comp=6)) == ("CA", "T")


def test_minimal_pid2_only():
    a28 = corpus_message("hl7", "adt_a28_v25_nhapi_minimal_pid2_only.hl7")
    assert (a28.structure, a28.value("PID", 2), a28.value("PID", 3)) == ("ADT_A05", "12345", "")
    a04 = corpus_message("hl7", "adt_a04_v251_nhapi_minimal_pid2_only.hl7")
    assert (a04.structure, a04.control_id) == ("", "1")


def test_italian_cancel_and_lab_order():
    it = corpus_message("hl7", "orm_o01_v23_nhapi_ca_italian_xray.hl7")
    assert (it.value("ORC", 2), it.value("ORC", 3), it.value("OBR", 4, comp=2)) == ("1410", "3121", "ADDOME SUPINO")
    assert it.values("PID", 3, comp=4) == ["XXX", "YYY"]
    lab = corpus_message("hl7", "orm_o01_v231_nhapi_lab_order_not_imaging.hl7")
    assert (lab.value("OBR", 4, comp=2), lab.value("OBR", 24)) == ("Urinalysis", "")


def test_reports():
    sr = corpus_message("hl7", "oru_r01_v251_dcm4che_sr_report.hl7")
    assert sr.value("OBR", 18) == "AccessionNumber"
    assert sr.value("OBX", 5) == "1.2.392.200036.9125.0.198811291108.7"
    assert sr.value("OBX", 3, comp=2) == "DICOM Study"
    cda = corpus_message("hl7", "oru_r01_v251_dcm4che_embedded_cda_crlf_17kb.hl7")
    last = cda.all("OBX")[-1]
    assert last.value(2) == "ED"
    assert last.raw(5).endswith("</ClinicalDocument>")
    assert len(last.raw(5)) > 15000


def test_mirth_lf_adt():
    msg = corpus_message("hl7", "adt_a01_v23_mirth_lf_fictional.hl7")
    assert msg.segment_names() == ["MSH", "EVN", "PID", "PV1"]
    assert (msg.value("PID", 3), msg.value("PID", 5), msg.value("PID", 13, comp=4)) == (
        "135769", "MOUSE", "theMainMouse@disney.com"
    )
