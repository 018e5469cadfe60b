"""Tokenizer unit tests on synthetic messages (HL7 v2.5.1 2.5 message construction rules)."""

from __future__ import annotations

import pytest

from interfaces.hl7 import HL7_NULL, Delimiters, HL7ParseError, parse, split_messages
from tests.hl7.samples import CUSTOM_DELIMITERS, OMI_V251, ORM_V231


def test_delimiters_are_read_from_msh1_and_msh2():
    assert parse(ORM_V231).delimiters == Delimiters("|", "^", "~", "\\", "&")
    assert parse(CUSTOM_DELIMITERS).delimiters == Delimiters("#", "!", "$", "?", "%")


def test_segments_and_lookup_by_name_and_occurrence():
    msg = parse(ORM_V231)
    assert msg.segment_names() == ["MSH", "PID", "PV1", "ORC", "OBR", "NTE", "ZDS"]
    assert msg.segment("OBR").name == "OBR"
    assert msg.segment("OBR", 2) is None
    assert msg.segment("IPC") is None
    assert msg.all("PID") == [msg.segments[1]]
    assert msg.all("XXX") == []


def test_terser_numbering_first_repetition_component_subcomponent():
    msg = parse(ORM_V231)
    assert msg.value("PID", 3) == "PAT-1"
    assert msg.value("PID", 3, rep=2) == "NAT-9"
    assert msg.value("PID", 3, rep=2, comp=4) == "STATE"
    assert msg.value("PID", 3, rep=3) == ""
    assert msg.value("PID", 5, comp=2) == "ALPHA"
    assert msg.value("PID", 5, comp=9) == ""
    assert msg.value("PID", 99) == ""
    assert msg.value("ZZZ", 1) == ""
    assert msg.value("ORC", 7, comp=4) == "20240311093000"


def test_msh_numbering_follows_the_standard():
    msg = parse(ORM_V231)
    assert msg.value("MSH", 1) == "|"
    assert msg.value("MSH", 2) == "^~\\&"  # never split into components, never unescaped
    assert msg.raw("MSH", 2) == "^~\\&"
    assert msg.value("MSH", 3) == "TESTHIS"
    assert msg.value("MSH", 4, comp=2) == "NORTH"
    assert msg.raw("MSH", 4) == "WARD7^NORTH"
    assert msg.segments[0].fields[:3] == ["MSH", "|", "^~\\&"]


def test_values_gives_the_leaf_of_every_repetition():
    msg = parse(OMI_V251)
    assert msg.values("IPC", 9) == ["MR_ROOM1", "MR_ROOM2"]
    assert msg.values("PID", 3, comp=4) == ["TESTHIS"]
    assert msg.values("PID", 4) == []
    assert parse(ORM_V231).values("PID", 3, comp=5) == ["MR", "NI"]


def test_raw_keeps_delimiters_and_escapes():
    msg = parse(ORM_V231)
    assert msg.raw("PID", 3) == "PAT-1^^^TESTHIS^MR~NAT-9^^^STATE^NI"
    assert msg.raw("PID", 3, rep=2) == "NAT-9^^^STATE^NI"
    assert msg.raw("NTE", 3) == "Fast 4h \\T\\ drink water\\.br\\Bring ID \\F\\ card"


def test_value_unescapes_only_the_leaf():
    msg = parse(ORM_V231)
    assert msg.value("NTE", 3) == "Fast 4h & drink water\nBring ID | card"


def test_explicit_null_is_returned_as_two_quotes():
    assert parse(OMI_V251).value("PID", 13) == HL7_NULL == '""'


def test_convenience_properties():
    msg = parse(OMI_V251)
    assert (msg.message_code, msg.trigger_event, msg.structure) == ("OMI", "O23", "OMI_O23")
    assert (msg.control_id, msg.version, msg.processing_id) == ("CTRL-2", "2.5.1", "P")
    assert (msg.sending_application, msg.sending_facility) == ("TESTHIS", "WARD7")
    assert msg.charset_field == ""
    assert parse(ORM_V231).charset_field == "8859/1"


def test_custom_delimiters_everywhere():
    msg = parse(CUSTOM_DELIMITERS)
    assert (msg.message_code, msg.trigger_event) == ("ADT", "A08")
    assert msg.values("PID", 3) == ["ID-1", "ID-2"]
    assert msg.value("PID", 3, comp=4, sub=2) == "1.2"


def test_segment_api():
    pid = parse(ORM_V231).segment("PID")
    assert pid.fields[0] == "PID"
    assert pid.field_count == 11
    assert pid.value(5, comp=3) == "B"
    assert pid.values(3) == ["PAT-1", "NAT-9"]
    assert pid.raw(3, rep=1) == "PAT-1^^^TESTHIS^MR"


def test_positions_are_one_based():
    with pytest.raises(ValueError):
        parse(ORM_V231).value("PID", 3, rep=0)


@pytest.mark.parametrize("terminator", ["\r", "\r\n", "\n"])
def test_segment_terminators(terminator):
    text = ORM_V231.replace("\r", terminator)
    msg = parse(text)
    assert msg.segment_names() == ["MSH", "PID", "PV1", "ORC", "OBR", "NTE", "ZDS"]
    assert msg.version == "2.3.1"
    assert msg.value("ZDS", 1) == "1.2.826.0.1.3680043.10.999.1"


def test_lf_inside_a_field_stays_when_cr_terminates_segments():
    msg = parse("MSH|^~\\&|A|B|C|D|||ADT^A08|1|P|2.5\rNTE|1||line one\nline two\r")
    assert msg.segment_names() == ["MSH", "NTE"]
    assert msg.value("NTE", 3) == "line one\nline two"


def test_blank_segments_and_framing_produce_nothing():
    text = "\x0b\n  MSH|^~\\&|A|B|C|D|||ADT^A08|1|P|2.5\r\rEVN|A08\r\n\r\n  \rPID|||X\r\x1c\r"
    msg = parse(text)
    assert msg.segment_names() == ["MSH", "EVN", "PID"]
    assert msg.value("PID", 3) == "X"


def test_trailing_empty_fields_are_counted_as_sent():
    assert parse("MSH|^~\\&|A|B|C|D|||ADT^A08|1|P|2.5\rORC|CA|1|||CA|\r").segment("ORC").field_count == 6


def test_empty_segment_has_only_its_name():
    pd1 = parse("MSH|^~\\&|A|B|C|D|||ADT^A08|1|P|2.5\rPD1\rPV1||N").segment("PD1")
    assert pd1.fields == ["PD1"]
    assert pd1.field_count == 0
    assert pd1.value(1) == ""


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ("", "MSH"),
        ("PID|||X\rMSH|^~\\&|A", "MSH"),
        ("MSH", "MSH-1"),
        ("MSH\rPID|", "MSH-1"),
        ("MSHA^~\\&A", "MSH-1"),
        ("MSH|^~|A|B", "MSH-2"),
        ("MSH|^^\\&|A", "MSH-2"),
        ("MSH|^~|&|A", "MSH-2"),
        ("MSH|^\ufffd\\&|A", "MSH-2"),
        ("MSH|^~\\&#!$|A", "MSH-2"),
        ("MSH|^ \\&|A", "MSH-2"),
    ],
)
def test_unusable_headers_raise_with_location(text, location):
    with pytest.raises(HL7ParseError) as caught:
        parse(text)
    assert caught.value.location == location
    assert location in str(caught.value)


def test_three_encoding_characters_are_enough():
    msg = parse("MSH|^~\\|A|B|C|D|||ADT^A08|1|P|2.1\rPID|||X&Y")
    assert msg.delimiters.subcomponent == ""
    assert msg.value("PID", 3) == "X&Y"


def test_truncation_character_of_v27():
    msg = parse("MSH|^~\\&#|A|B|C|D|||ADT^A08|1|P|2.7\rNTE|||cut\\P\\here")
    assert msg.delimiters.truncation == "#"
    assert msg.value("NTE", 3) == "cut#here"


def test_hex_escape_uses_the_msh18_character_set():
    latin1 = parse("MSH|^~\\&|A|B|C|D|||ADT^A08|1|P|2.5||||||8859/1\rNTE|||OPERA\\XC7\\\\XC3\\O")
    assert latin1.value("NTE", 3) == "OPERAÇÃO"
    utf8 = parse("MSH|^~\\&|A|B|C|D|||ADT^A08|1|P|2.5||||||UNICODE UTF-8\rNTE|||OPERA\\XC387\\O")
    assert utf8.value("NTE", 3) == "OPERAÇO"
    explicit = parse("MSH|^~\\&|A|B|C|D|||ADT^A08|1|P|2.5\rNTE|||\\XE9\\", codec="iso8859-1")
    assert explicit.value("NTE", 3) == "é"


class TestSplitMessages:
    def test_single_message_passes_through(self):
        assert [parse(t).control_id for t in split_messages(ORM_V231)] == ["CTRL-1"]

    def test_concatenation_is_split_on_each_msh(self):
        texts = split_messages(ORM_V231 + OMI_V251 + "\r" + ORM_V231.replace("CTRL-1", "CTRL-3"))
        assert [parse(t).control_id for t in texts] == ["CTRL-1", "CTRL-2", "CTRL-3"]
        assert all(t.endswith("\r") for t in texts)

    def test_batch_envelope_is_removed(self):
        batch = "FHS|^~\\&|A\rBHS|^~\\&|A\r" + ORM_V231 + OMI_V251 + "\rBTS|2\rFTS|1\r"
        texts = split_messages(batch)
        assert [parse(t).segment_names()[-1] for t in texts] == ["ZDS", "IPC"]

    def test_missing_trailers_are_tolerated_and_logged(self, caplog):
        texts = split_messages("FHS|^~\\&|A\nBHS|^~\\&|A\n" + ORM_V231.replace("\r", "\n"))
        assert len(texts) == 1
        assert "without" in caplog.text

    def test_text_before_the_first_msh_is_dropped_and_logged(self, caplog):
        texts = split_messages("/* a comment */\n" + OMI_V251.replace("\r", "\n"))
        assert [parse(t).control_id for t in texts] == ["CTRL-2"]
        assert "dropped 1 line" in caplog.text

    def test_nothing_in_nothing_out(self):
        assert split_messages("") == []
