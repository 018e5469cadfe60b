"""Escape sequences (HL7 v2.5.1 2.7)."""

from __future__ import annotations

import pytest

from interfaces.hl7 import Delimiters, escape, unescape

STD = Delimiters()


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("a\\T\\b", "a&b"),
        ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"),
        ("\\E\\\\E\\", "\\\\"),
        ("line\\.br\\next", "line\nnext"),
        ("a\\.sp\\b", "a\nb"),
        ("a\\.sp2\\b", "a\n\nb"),
        ("a\\.sk3\\b", "a   b"),
        ("a\\.ce\\b", "a\nb"),
        ("\\.fi\\a\\.nf\\\\.in4\\\\.ti-2\\b", "ab"),
        ("\\H\\bold\\N\\ normal", "bold normal"),
        ("\\C2842\\x\\M2442\\", "x"),
        ("caf\\XE9\\", "café"),  # default codec: Latin-1
        ("\\X0D0A\\", "\r\n"),
        ("keep \\Zlocal\\ verbatim", "keep \\Zlocal\\ verbatim"),
    ],
)
def test_unescape(raw, text):
    assert unescape(raw, STD) == text


@pytest.mark.parametrize(
    "raw",
    [
        "C:\\temp",  # no closing escape character
        "trailing\\",
        "\\unknown\\",  # not a sequence: both backslashes are text
        "\\X1\\",  # odd number of hex digits
        "\\XZZ\\",
        "\\.xx\\",
        "\\\\",
        "\\P\\",  # no truncation character declared (before v2.7)
    ],
)
def test_incomplete_or_unknown_sequences_are_kept_literally(raw):
    assert unescape(raw, STD) == raw


def test_escape_character_without_sequence_after_a_complete_one():
    # \E\ is a backslash, then 'R', then a lone backslash (python-hl7 issue 84, BUG-13).
    assert unescape("\\E\\R\\", STD) == "\\R\\"
    assert unescape("x \\E\\R\\ y \\E\\", STD) == "x \\R\\ y \\"


def test_hex_bytes_use_the_given_codec_and_consecutive_sequences_join():
    assert unescape("OPERA\\XC7\\\\XC3\\O", STD, "iso8859-1") == "OPERAÇÃO"
    assert unescape("\\XE2\\\\X80\\\\X93\\", STD, "utf-8") == "\u2013"  # one character over three sequences
    assert unescape("\\XE9\\", STD, "utf-8") == "é"  # invalid UTF-8 falls back to Latin-1
    assert unescape("\\X1B2442\\", STD, "iso2022_jp_2") == ""  # a lone ISO 2022 switch decodes to nothing


def test_custom_escape_character():
    delims = Delimiters("#", "!", "$", "?", "%")
    assert unescape("a?F?b?S?c?E?", delims) == "a#b!c?"
    assert escape("a#b!c?d$e%f", delims) == "a?F?b?S?c?E?d?R?e?T?f"


def test_fast_path_returns_the_same_object():
    text = "no escapes here"
    assert unescape(text, STD) is text


def test_escape_every_delimiter_and_line_breaks():
    assert escape("a|b^c~d\\e&f", STD) == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
    assert escape("one\rtwo\nthree", STD) == "one\\X0D\\two\\X0A\\three"
    assert escape("#", STD) == "#"
    assert escape("#", Delimiters(truncation="#")) == "\\P\\"


@pytest.mark.parametrize("text", ["", "plain", "a|b", "\\R\\", "C:\\x\\", "x\\", "\\E\\", "é|\r\n~&^"])
def test_unescape_inverts_escape(text):
    assert unescape(escape(text, STD), STD) == text
