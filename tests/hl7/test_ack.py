"""Acknowledgments (HL7 v2.5.1 2.9, 2.14.1 ACK, 2.15.8 MSA, 2.15.5 ERR) on synthetic messages."""

from __future__ import annotations

import datetime as dt

import pytest

from interfaces.hl7 import ErrorDetail, build_ack, build_reject_for_unparsable, parse
from tests.hl7.samples import CUSTOM_DELIMITERS, OMI_V251, ORM_V231

NOW = dt.datetime(2024, 3, 10, 8, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
OURS = {"app": "RISENGINE", "facility": "RAD", "control_id": "ACK-1", "now": NOW}


def segments(ack: str) -> list[list[str]]:
    assert ack.endswith("\r") and not ack.endswith("\r\r")
    return [segment.split("|") for segment in ack[:-1].split("\r")]


def header_version(text: str, version: str) -> str:
    return text.replace("|2.3.1|", f"|{version}|", 1).replace("|2.5.1", f"|{version}", 1)


def test_positive_ack_v231():
    ack = build_ack(parse(ORM_V231), "AA", **OURS)
    msh, msa = segments(ack)
    assert msh[:12] == [
        "MSH", "^~\\&", "RISENGINE", "RAD", "TESTHIS", "WARD7^NORTH", "20240310080005+0100", "",
        "ACK^O01", "ACK-1", "P", "2.3.1",
    ]
    assert msh[17] == "8859/1"  # MSH-18 echoed
    assert msa == ["MSA", "AA", "CTRL-1"]
    assert parse(ack).control_id == "ACK-1"


@pytest.mark.parametrize(
    ("version", "msh9"),
    [("2.1", "ACK"), ("2.2", "ACK"), ("2.3", "ACK"), ("2.3.1", "ACK^O01"), ("2.4", "ACK^O01^ACK"),
     ("2.5", "ACK^O01^ACK"), ("2.5.1", "ACK^O01^ACK"), ("2.8", "ACK^O01^ACK")],
)
def test_msh9_depends_on_the_version(version, msh9):
    msg = parse(header_version(ORM_V231, version))
    assert msg.version == version
    assert segments(build_ack(msg, "AA", **OURS))[0][8] == msh9


def test_msh9_never_copies_the_inbound_structure():
    msh = segments(build_ack(parse(OMI_V251), "AA", **OURS))[0]
    assert msh[8] == "ACK^O23^ACK"
    assert len(msh) == 12  # no MSH-18 when the inbound had none


def test_errors_before_v25_use_msa3_and_err1_eld():
    ack = build_ack(
        parse(ORM_V231),
        "AE",
        errors=[ErrorDetail("101", "Patient id missing", "PID-3"), ErrorDetail("103", "Modality X|Y", "OBR-24")],
        **OURS,
    )
    _, msa, err = segments(ack)
    assert msa == ["MSA", "AE", "CTRL-1", "Patient id missing"]
    assert err == ["ERR", "PID^1^3^101&Patient id missing&HL70357~OBR^1^24^103&Modality X\\F\\Y&HL70357"]
    assert parse(ack).values("ERR", 1, comp=4, sub=2) == ["Patient id missing", "Modality X|Y"]


def test_explicit_text_goes_to_msa3_before_v25():
    ack = build_ack(parse(ORM_V231), "AR", text="Unsupported", errors=[ErrorDetail("200", "x", "MSH-9")], **OURS)
    assert segments(ack)[1] == ["MSA", "AR", "CTRL-1", "Unsupported"]


def test_errors_from_v25_use_err2_to_err8():
    ack = build_ack(
        parse(OMI_V251),
        "AE",
        errors=[
            ErrorDetail("101", "IPC-3 Study Instance UID missing", "IPC-3"),
            ErrorDetail("103", "unknown code", "OBR-4.1", severity="W"),
            ErrorDetail("207", "database down"),
        ],
        **OURS,
    )
    _, msa, err1, err2, err3 = segments(ack)
    assert msa == ["MSA", "AE", "CTRL-2"]  # MSA-3 is deprecated from v2.5
    assert err1 == ["ERR", "", "IPC^1^3", "101^Required field missing^HL70357", "E", "", "", "",
                    "IPC-3 Study Instance UID missing"]
    assert err2[2:5] == ["OBR^1^4^1^1", "103^Table value not found^HL70357", "W"]
    assert err3[2:5] == ["", "207^Application internal error^HL70357", "E"]
    assert err3[8] == "database down"


def test_unparseable_location_is_kept_in_the_text():
    ack = build_ack(parse(OMI_V251), "AE", errors=[ErrorDetail("207", "boom", "somewhere")], **OURS)
    err = segments(ack)[2]
    assert err[2] == ""
    assert err[8] == "somewhere: boom"


def test_ack_uses_the_inbound_delimiters_and_escapes_our_values():
    msg = parse(CUSTOM_DELIMITERS)
    ack = build_ack(msg, "AA", app="RIS#1", facility="R!A", control_id="X", now=NOW)
    assert ack.startswith("MSH#!$?%#RIS?F?1#R?S?A#TESTHIS#WARD7#20240310080005+0100##ACK!A08!ACK#X#P#2.4\r")
    assert parse(ack).sending_application == "RIS#1"


def test_empty_inbound_control_id_gives_empty_msa2():
    msg = parse(ORM_V231.replace("|CTRL-1|", "||"))
    assert segments(build_ack(msg, "AA", **OURS))[1] == ["MSA", "AA", ""]


def test_rejects_unknown_codes():
    with pytest.raises(ValueError):
        build_ack(parse(ORM_V231), "OK", **OURS)
    with pytest.raises(ValueError):
        build_ack(parse(ORM_V231), "AE", errors=[ErrorDetail("101", "x", severity="X")], **OURS)


class TestRejectForUnparsable:
    def test_scrapes_the_control_id_and_header(self):
        raw = "MSH|^\ufffd\\&|SENDER|HOSP^X|RIS|RAD|20240310||ADT^A08|C-77|T|2.4\rPID|||1\r"
        ack = build_reject_for_unparsable(
            raw, "AR", ErrorDetail("102", "MSH-2 is mangled", "MSH-2"), **OURS
        )
        msh, msa, err = segments(ack)
        assert msh[:12] == ["MSH", "^~\\&", "RISENGINE", "RAD", "SENDER", "HOSP", "20240310080005+0100", "",
                            "ACK^A08^ACK", "ACK-1", "T", "2.4"]
        assert msa == ["MSA", "AR", "C-77", "MSH-2 is mangled"]
        assert err == ["ERR", "MSH^1^2^102&MSH-2 is mangled&HL70357"]
        assert parse(ack).value("MSA", 2) == "C-77"

    def test_without_any_header(self):
        ack = build_reject_for_unparsable(
            "\x0bhello\r", "AR", ErrorDetail("100", "no MSH segment", "MSH"), **OURS
        )
        msh, msa, err = segments(ack)
        assert msh[8:12] == ["ACK^^ACK", "ACK-1", "P", "2.5"]
        assert msa == ["MSA", "AR", ""]
        assert err[2:5] == ["MSH^1", "100^Segment sequence error^HL70357", "E"]
        assert parse(ack).message_code == "ACK"

    def test_control_id_with_standard_delimiters_is_escaped(self):
        ack = build_reject_for_unparsable(
            "MSH#^~#A#B#C#D###ADT^A01#ID|1^2#P#2.5\r", "AR", ErrorDetail("102", "bad MSH-2", "MSH-2"), **OURS
        )
        assert parse(ack).value("MSA", 2) == "ID|1^2"


def test_locations_name_the_segment_occurrence_and_field_repetition():
    """ERL (2.15.5.2): segment ID ^ segment sequence ^ field position ^ field repetition ^ component ^ sub."""
    errors = [ErrorDetail("101", "modality missing", "OBR[2]-24"), ErrorDetail("102", "too long", "PID-3[2]"),
              ErrorDetail("102", "bad", "OBX[12]-5[3].2.1", severity="W")]
    ack = build_ack(parse(OMI_V251), "AE", errors=errors, **OURS)
    assert [err[2] for err in segments(ack)[2:]] == ["OBR^2^24", "PID^1^3^2", "OBX^12^5^3^2^1"]
    # before v2.5 the ELD (ERR-1) has segment ^ sequence ^ field
    old = build_ack(parse(ORM_V231), "AE", errors=errors[:1], **OURS)
    assert segments(old)[2] == ["ERR", "OBR^2^24^101&modality missing&HL70357"]
