"""The HL7-text cases of ../shared/corpus/bugs/README.md: BUG-10, 12, 13, 15, 16, 18, 19.

Each case runs on the shared input file and on a synthetic equivalent written here, so the behaviour stays
covered where ../shared is absent.
"""

from __future__ import annotations

import datetime as dt

import pytest

from interfaces.hl7 import build_ack, decode_message, escape, parse, parse_date, parse_dtm, unescape
from tests.hl7.conftest import corpus_dir

pytestmark = pytest.mark.corpus

NOW = dt.datetime(2024, 3, 10, 8, 0, 5)
OURS = {"app": "RISENGINE", "facility": "RAD", "control_id": "ACK-1", "now": NOW}


def bug_text(name: str) -> str:
    return decode_message((corpus_dir("bugs") / name).read_bytes()).text


BUG10 = (
    "MSH|^~\\&|HISCOM-ADT|COMZIS^MS1|RISENGINE|RAD|200702201440||ADT^A08|000000944|P|2.2|||AL|NE\r"
    "EVN|A08|200702201440\rPID|1||P-1010^^^COMZIS^MR||TESTACK^KAPPA||19600101|F\r"
)
BUG12 = (
    "MSH|^~\\&|TESTHIS|WARD1|RISENGINE|RAD|20240310080000||OMI^O23^OMI_O23|B12-1|P|2.5.1\r"
    "PID|||P-1012^^^TESTHIS^MR||TESTSTRUCT^LAMBDA||19890909|M\rORC|NW|PL-5012^TESTHIS|||SC\r"
)
BUG13 = (
    "MSH|^~\\&|TESTHIS|WARD1|RISENGINE|RAD|20240310080000||ORM^O01|B13-1|P|2.3.1\r"
    "NTE|1||Path: \\E\\R\\ and share \\E\\\\E\\srv\\E\\scans\r"
)
BUG15 = (
    "MSH|^~\\&|TESTHIS|WARD1|RISENGINE|RAD|20240310080000||ADT^A04^ADT_A01|B15-1|P|2.3.1\r"
    "EVN|A04|20240310080000\rPID|||P-1015^^^TESTHIS^MR||TESTCRLF^XI||19820202|F\r\n"
)
BUG16 = (
    "MSH|^~\\&|TESTHIS|WARD1|RISENGINE|RAD|20240310080000||ORM^O01|B16-1|P|2.3.1\n"
    "PID|||P-1016^^^TESTHIS^MR||TESTLF^OMICRON||19830303|M\nORC|NW|PL-5016^TESTHIS|||SC\n"
    "OBR|1|PL-5016^TESTHIS||CTSINUS^CT SINUS^LOCAL||||||||||||||ACC-5016|RP-ACC-5016|SPS-ACC-5016||||CT\n"
)
BUG18 = (
    "MSH|^~\\&|TESTHIS|WARD1|RISENGINE|RAD|20240310013000+0100||ORM^O01|B18-1|P|2.5\r"
    "PID|||P-1018^^^TESTHIS^MR||TESTTZ^RHO||19800101|F\rORC|NW|PL-5018^TESTHIS|||SC||^^^20240331023000^^R\r"
)
BUG19 = (
    "MSH|^~\\&|TESTHIS|WARD1|RISENGINE|RAD|20250204141403.403+0100||ADT^A08^ADT_A01|B19-1|P|2.4\r"
    "EVN|A08|20190924143134^S\r"
    "PID|||P-1019^^^TESTHIS^MR||TESTDTM^SIGMA||19661201|M|||||||||||||||||||||20250204141403.4032-0030\r"
)


@pytest.fixture(params=["corpus", "synthetic"])
def source(request):
    """Run a case on the shared file and on the synthetic copy above."""
    return request.param


def load(source: str, name: str, synthetic: str) -> str:
    return bug_text(name) if source == "corpus" else synthetic


def test_bug10_ack_keeps_msh_positions_and_copies_msh4_as_structure(source):
    msg = parse(load(source, "bug10_adt_a08_hd_with_component_in_msh4.hl7", BUG10))
    msh, msa = (segment.split("|") for segment in build_ack(msg, "AA", **OURS).rstrip("\r").split("\r"))
    assert msh[2:4] == ["RISENGINE", "RAD"]  # MSH-3/4: ours
    assert msh[4:6] == ["HISCOM-ADT", "COMZIS^MS1"]  # MSH-5/6: the sender's, structure kept, no \S\
    assert msh[6] == "20240310080005"  # MSH-7: our time
    assert msh[8] == "ACK"  # v2.2: no trigger/structure
    assert msh[9] == "ACK-1"
    assert msh[10:12] == ["P", "2.2"]
    assert msa == ["MSA", "AA", "000000944"]


def test_bug12_ack_msh9_for_v251_is_ack_trigger_ack(source):
    msg = parse(load(source, "bug12_omi_o23_with_structure_id.hl7", BUG12))
    assert msg.structure == "OMI_O23"
    msh, msa = (segment.split("|") for segment in build_ack(msg, "AA", **OURS).rstrip("\r").split("\r"))
    assert msh[8] == "ACK^O23^ACK"
    assert msh[11] == "2.5.1"
    assert msa == ["MSA", "AA", "B12-1"]


def test_bug13_escaped_backslash_followed_by_r(source):
    msg = parse(load(source, "bug13_escape_e_then_r.hl7", BUG13))
    raw = msg.raw("NTE", 3)
    decoded = msg.value("NTE", 3)
    assert decoded == "Path: \\R\\ and share \\\\srv\\scans"
    # Re-encoding gives the field back in canonical form; it decodes to the same text. The input itself is not
    # canonical (its second backslash was sent unescaped), so no encoder can reproduce it byte for byte.
    reencoded = escape(decoded, msg.delimiters)
    assert reencoded == "Path: \\E\\R\\E\\ and share \\E\\\\E\\srv\\E\\scans"
    assert unescape(reencoded, msg.delimiters) == decoded == unescape(raw, msg.delimiters)
    assert raw.replace("\\E\\R\\ ", "\\E\\R\\E\\ ") == reencoded


def test_bug15_final_crlf_gives_no_phantom_segment(source):
    msg = parse(load(source, "bug15_adt_a04_cr_segments_crlf_at_end.hl7", BUG15))
    assert msg.segment_names() == ["MSH", "EVN", "PID"]
    assert msg.value("PID", 3) == "P-1015"


def test_bug16_lf_terminated_message_without_trailing_bar(source):
    msg = parse(load(source, "bug16_orm_lf_only_msh_without_trailing_bar.hl7", BUG16))
    assert msg.version == "2.3.1"
    assert msg.segment_names() == ["MSH", "PID", "ORC", "OBR"]
    assert msg.value("OBR", 18) == "ACC-5016"


def test_bug18_time_without_offset_takes_the_msh7_offset(source):
    msg = parse(load(source, "bug18_orm_msh7_offset_field_without_offset.hl7", BUG18))
    sent = parse_dtm(msg.value("MSH", 7))
    assert sent.utcoffset() == dt.timedelta(hours=1)
    start = parse_dtm(msg.value("ORC", 7, comp=4), default_tz=sent.tzinfo)
    assert start == dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.timezone.utc)  # 02:30+01:00, no DST crash
    assert parse_dtm(msg.value("ORC", 7, comp=4)).tzinfo is None  # without a default: naive, never guessed
    assert parse_date(msg.value("PID", 7)) == dt.date(1980, 1, 1)


def test_bug19_fractional_seconds_offsets_and_ts_precision(source):
    msg = parse(load(source, "bug19_adt_a08_dtm_offset_and_precision.hl7", BUG19))
    plus1 = dt.timezone(dt.timedelta(hours=1))
    assert parse_dtm(msg.value("MSH", 7)) == dt.datetime(2025, 2, 4, 14, 14, 3, 403000, tzinfo=plus1)
    assert parse_dtm(msg.raw("EVN", 2)) == dt.datetime(2019, 9, 24, 14, 31, 34)  # whole raw TS: '^S' ignored
    assert parse_dtm(msg.value("EVN", 2)) == dt.datetime(2019, 9, 24, 14, 31, 34)
    death = parse_dtm(msg.value("PID", 29))
    assert death.microsecond == 403200
    assert death.utcoffset() == -dt.timedelta(minutes=30)
