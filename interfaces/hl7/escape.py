"""HL7 v2 escape sequences (HL7 v2.5.1 chapter 2, section 2.7 "Use of escape sequences in text fields").

Inside a field, the escape character (normally '\\') brackets a sequence:

- ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` the field, component, subcomponent, repetition and escape characters;
  ``\\P\\`` the truncation character where MSH-2 declares one (v2.7+);
- ``\\H\\`` start / ``\\N\\`` end of highlighting: dropped (plain text has no highlighting);
- hexadecimal data: ``\\Xhhhh..\\`` bytes, decoded with the message's character set; consecutive hex
  sequences are decoded together so a multi-byte character split over several sequences survives;
- ``\\Cxxyy\\`` / ``\\Mxxyy[zz]\\`` ISO 2022 character-set switches: dropped (the bytes were already
  decoded as a whole by :mod:`interfaces.hl7.charsets`);
- formatting commands of FT fields: ``\\.br\\`` -> newline, ``\\.sp n\\`` -> n newlines (1 without n),
  ``\\.ce\\`` -> newline, ``\\.sk n\\`` -> n spaces; ``\\.fi\\ \\.nf\\ \\.in n\\ \\.ti n\\`` -> dropped;
- ``\\Zxxx\\`` locally defined: kept verbatim (its meaning is the sender's secret).

An escape character that does not start a complete, well-formed sequence is kept literally and the text after
it is read normally (HL7 does not define a meaning for it; dropping it loses data, see python-hl7 issue 84).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from interfaces.hl7.tokenizer import Delimiters

__all__ = ["escape", "unescape"]

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_DROPPED_FORMATTING = ("fi", "nf", "in", "ti")
_HIGHLIGHTING = ("H", "N")
_DELIMITER_CODES = {
    "F": "field",
    "S": "component",
    "T": "subcomponent",
    "R": "repetition",
    "E": "escape",
    "P": "truncation",
}


def _is_hex(digits: str) -> bool:
    return bool(digits) and len(digits) % 2 == 0 and all(c in _HEX_DIGITS for c in digits)


def _formatting(command: str) -> str | None:
    """Text for an FT formatting command (2.7) without its leading '.', or None when it is not one."""
    name, argument = command[:2], command[2:].strip()
    if argument and not argument.lstrip("+-").isdigit():
        return None
    count = int(argument) if argument else 1
    if name == "br" and not argument:
        return "\n"
    if name == "sp":
        return "\n" * max(count, 1)
    if name == "ce" and not argument:
        return "\n"
    if name == "sk":
        return " " * max(count, 0)
    if name in _DROPPED_FORMATTING:
        return ""
    return None


def _sequence(content: str, delims: Delimiters) -> str | None:
    """Replacement text for the escape sequence whose inside is ``content``; None when it is not one."""
    if len(content) == 1:
        if content in _HIGHLIGHTING:
            return ""
        attribute = _DELIMITER_CODES.get(content)
        return (getattr(delims, attribute) or None) if attribute else None
    lead = content[0] if content else ""
    if lead == ".":
        return _formatting(content[1:])
    if lead == "C" and len(content) == 5 and _is_hex(content[1:]):
        return ""
    if lead == "M" and len(content) in (5, 7) and _is_hex(content[1:]):
        return ""
    if lead == "Z" and len(content) > 1:
        return delims.escape + content + delims.escape
    return None


def _decode_hex(data: bytes, codec: str) -> str:
    for candidate in (codec, "utf-8", "iso8859-1"):
        try:
            return data.decode(candidate)
        except (UnicodeDecodeError, LookupError):
            continue
    raise AssertionError("iso8859-1 decodes any byte string")  # pragma: no cover


def unescape(text: str, delims: Delimiters, codec: str = "iso8859-1") -> str:
    """Replace the escape sequences of ``text`` (HL7 v2.5.1 section 2.7) by the characters they stand for.

    ``codec`` decodes ``\\Xhh..\\`` bytes (the message's MSH-18 set); bytes it cannot decode are tried as
    UTF-8, then Latin-1. Text without the escape character is returned unchanged (the common, fast case).
    """
    esc = delims.escape
    if not esc or esc not in text:
        return text
    parts: list[str] = []
    hex_bytes = bytearray()
    position = 0
    while True:
        start = text.find(esc, position)
        if start < 0:
            break
        end = text.find(esc, start + 1)
        if end < 0:
            break  # a lone escape character at the end: literal
        content = text[start + 1 : end]
        if content[:1] == "X" and _is_hex(content[1:]):
            if start > position:
                if hex_bytes:
                    parts.append(_decode_hex(bytes(hex_bytes), codec))
                    hex_bytes.clear()
                parts.append(text[position:start])
            hex_bytes += bytes.fromhex(content[1:])
            position = end + 1
            continue
        if hex_bytes:
            parts.append(_decode_hex(bytes(hex_bytes), codec))
            hex_bytes.clear()
        replacement = _sequence(content, delims)
        if replacement is None:
            # Not an escape sequence: keep this escape character as text and read on right after it.
            parts.append(text[position : start + 1])
            position = start + 1
            continue
        parts.append(text[position:start])
        parts.append(replacement)
        position = end + 1
    if hex_bytes:
        parts.append(_decode_hex(bytes(hex_bytes), codec))
    parts.append(text[position:])
    return "".join(parts)


@functools.lru_cache(maxsize=32)
def _escape_table(delims: Delimiters) -> dict[int, str]:
    esc = delims.escape
    table = {
        ord(delims.field): f"{esc}F{esc}",
        ord(delims.component): f"{esc}S{esc}",
        ord(delims.repetition): f"{esc}R{esc}",
        ord(esc): f"{esc}E{esc}",
        ord("\r"): f"{esc}X0D{esc}",
        ord("\n"): f"{esc}X0A{esc}",
    }
    if delims.subcomponent:
        table[ord(delims.subcomponent)] = f"{esc}T{esc}"
    if delims.truncation:
        table[ord(delims.truncation)] = f"{esc}P{esc}"
    return table


def escape(text: str, delims: Delimiters) -> str:
    """Escape every delimiter character of ``text`` (HL7 v2.5.1 section 2.7), so it can be written as one leaf value.

    Canonical form: every escape character becomes ``\\E\\`` (also one that a reader would have kept
    literally), CR and LF become ``\\X0D\\`` / ``\\X0A\\`` (a raw CR would end the segment).
    ``unescape(escape(s)) == s`` for every string ``s``.
    """
    return text.translate(_escape_table(delims))
