"""Character-set decoding by MSH-18 (HL7 v2.5.1 2.15.9.18, table 0211) on synthetic bytes."""

from __future__ import annotations

import pytest

from interfaces.hl7 import CharsetError, codec_for, decode_message, encode_text, parse


def header(msh18: str, body: str = "PID|||X||NAME") -> str:
    return f"MSH|^~\\&|A|B|C|D|20240101||ADT^A08|1|P|2.5||||||{msh18}\r{body}\r"


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        (None, "ascii"),
        ("", "ascii"),
        (" ", "ascii"),
        ("ASCII", "ascii"),
        ("8859/1", "iso8859-1"),
        ("8859/1 ", "iso8859-1"),
        ("8859/2", "iso8859-2"),
        ("8859/9", "iso8859-9"),
        ("8859/15", "iso8859-15"),
        ("UNICODE UTF-8", "utf-8"),
        ("UNICODE", "utf-8"),
        ("ISO IR6", "ascii"),
        ("ISO IR100", "iso8859-1"),
        ("ISO IR192", "utf-8"),
        ("ISO IR87", "iso2022_jp_2"),
        ("ISO IR159", "iso2022_jp_2"),
        ("ISO 2022-1994", "iso2022_jp_2"),
        ("GB 18030-2000", "gb18030"),
        ("KS X 1001", "euc_kr"),
        ("BIG-5", "big5"),
        ("UTF-8", "utf-8"),  # not a table 0211 name, accepted as an alias
    ],
)
def test_codec_for(name, codec):
    assert codec_for(name) == codec


def test_codec_for_unknown_name():
    with pytest.raises(CharsetError, match="KLINGON"):
        codec_for("KLINGON")


def test_pure_ascii_has_no_warnings():
    decoded = decode_message(header("8859/1").encode("ascii"))
    assert (decoded.codec, decoded.declared, decoded.warnings) == ("iso8859-1", "8859/1", ())
    nothing = decode_message(header("").encode("ascii"))
    assert (nothing.codec, nothing.declared, nothing.warnings) == ("ascii", None, ())


def test_declared_latin1_with_latin1_bytes():
    decoded = decode_message(header("8859/1", "PID|||X||MÜLLER^GRÉTA").encode("latin-1"))
    assert decoded.codec == "iso8859-1"
    assert decoded.warnings == ()
    assert parse(decoded.text).value("PID", 5, comp=2) == "GRÉTA"


@pytest.mark.parametrize("declared", ["8859/1", "8859/15"])
def test_declared_latin1_but_utf8_bytes(declared):
    raw = header(declared, "PID|||X||MÜLLER^GRÉTA").encode("utf-8")
    preferred = decode_message(raw)
    assert preferred.codec == "utf-8"
    assert parse(preferred.text).value("PID", 5) == "MÜLLER"
    assert preferred.warnings == (f"declared {declared} but bytes are UTF-8; decoded as utf-8",)
    literal = decode_message(raw, mismatch="declared")
    assert literal.codec.startswith("iso8859-")
    assert parse(literal.text).value("PID", 5) == "MÃ\x9cLLER"


def test_declared_utf8_but_latin1_bytes():
    raw = header("UNICODE UTF-8", "PID|||X||MÜLLER").encode("latin-1")
    decoded = decode_message(raw)
    assert decoded.codec == "iso8859-1"
    assert parse(decoded.text).value("PID", 5) == "MÜLLER"
    assert "not valid utf-8" in decoded.warnings[0]
    with pytest.raises(CharsetError):
        decode_message(raw, mismatch="strict")


def test_nothing_declared_utf8_then_latin1():
    utf8 = decode_message(header("", "PID|||X||Lüneburg").encode("utf-8"))
    assert (utf8.codec, utf8.warnings) == ("utf-8", ())
    latin1 = decode_message(header("", "PID|||X||Lüneburg").encode("latin-1"))
    assert latin1.codec == "iso8859-1"
    assert "Lüneburg" in latin1.text
    assert len(latin1.warnings) == 1


def test_unknown_name_falls_back_to_default_with_warning():
    decoded = decode_message(header("KLINGON", "PID|||X||Qo'noS é").encode("utf-8"))
    assert decoded.codec == "utf-8"
    assert decoded.declared == "KLINGON"
    assert "KLINGON" in decoded.warnings[0]


def test_declared_ascii_with_8bit_bytes():
    decoded = decode_message(header("ASCII", "PID|||X||é").encode("utf-8"))
    assert decoded.codec == "utf-8"
    assert decoded.warnings


def test_repeated_msh18_uses_the_non_ascii_repetition():
    raw = header("~ISO IR87", "PID|||X||山田^太郎").encode("iso2022_jp")
    decoded = decode_message(raw)
    assert (decoded.codec, decoded.declared, decoded.warnings) == ("iso2022_jp_2", "ISO IR87", ())
    assert parse(decoded.text).value("PID", 5) == "山田"


def test_msh18_is_read_from_the_first_msh_of_a_batch():
    raw = ("FHS|^~\\&|A\rBHS|^~\\&|A\r" + header("8859/1", "PID|||X||é")).encode("latin-1")
    decoded = decode_message(raw)
    assert (decoded.codec, decoded.declared) == ("iso8859-1", "8859/1")


def test_no_msh_at_all():
    decoded = decode_message("garbage é".encode())
    assert (decoded.codec, decoded.declared) == ("utf-8", None)


def test_bad_policy_name():
    with pytest.raises(ValueError):
        decode_message(b"MSH|^~\\&|", mismatch="guess")


def test_encode_text_in_the_senders_set_with_utf8_fallback():
    assert encode_text("GRÉTA", "iso8859-1") == b"GR\xc9TA"
    assert encode_text("山田", "iso2022_jp_2").startswith(b"\x1b$B")
    assert encode_text("a–b", "iso8859-1") == b"a\xe2\x80\x93b"  # en dash not in Latin-1: its UTF-8 bytes
    assert encode_text("é", "ascii") == b"\xc3\xa9"
