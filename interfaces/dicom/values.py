"""Attribute values of received and sent data sets: reading (PS3.5 6.2 value representations) and character
sets (PS3.3 C.12.1.1.2, PS3.5 6.1 and Annex H).

Reading: :func:`text` gives the first value of an attribute as trimmed text.

Character sets: :func:`parse_character_set` checks a Specific Character Set (0008,0005) value (the setting
``dicom_specific_character_set`` at start-up, or a query's) and :func:`encoder` gives the strict encoder of a
declared set. Strict means the repertoire the standard declares, not what Python's codecs happen to accept:
without a value 1 (``\\ISO 2022 IR 87``) or with ``ISO 2022 IR 6`` the single-byte part is ASCII, not
Latin-1 (pydicom falls back to Latin-1 there, and so would write bytes the receiver cannot read); JIS X 0201
(``ISO_IR 13`` / ``ISO 2022 IR 13``) holds only its single-byte katakana and roman letters. A value an
encoder cannot encode raises ``UnicodeEncodeError``: the caller then answers in UTF-8 (``ISO_IR 192``),
which holds every character, rather than writing wrong bytes.

Code extensions (PS3.5 6.1.2.5, Annex H for Japanese): the set in value 1 is the initial one, and each
multi-byte set is designated by its escape sequence and switched back at the end of each value and before
each delimiter (``\\``; for Person Names also ``^`` and ``=``), so that the delimiters are always in the
initial set. A multi-byte set (ISO 2022 IR 87, 159, 149, 58) can therefore not be value 1: ``ISO 2022 IR
87`` alone would put ``^`` and ``=`` inside a JIS X 0208 run.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

UTF8 = "ISO_IR 192"

# Defined Terms of PS3.3 Tables C.12-2 (single-byte, no extensions), C.12-3 (with code extensions), C.12-4
# (multi-byte with code extensions) and C.12-5 (multi-byte without extensions) -> Python codec.
_WITHOUT_EXTENSIONS = {
    "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 101": "iso8859_2", "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4", "ISO_IR 144": "iso8859_5", "ISO_IR 127": "iso8859_6", "ISO_IR 126": "iso8859_7",
    "ISO_IR 138": "iso8859_8", "ISO_IR 148": "iso8859_9", "ISO_IR 203": "iso8859_15", "ISO_IR 13": "shift_jis",
    "ISO_IR 166": "tis_620", UTF8: "utf_8", "GB18030": "gb18030", "GBK": "gbk",
}
_SINGLE_BYTE_EXTENSIONS = {
    "ISO 2022 IR 6": "ascii", "ISO 2022 IR 100": "latin_1", "ISO 2022 IR 101": "iso8859_2",
    "ISO 2022 IR 109": "iso8859_3", "ISO 2022 IR 110": "iso8859_4", "ISO 2022 IR 144": "iso8859_5",
    "ISO 2022 IR 127": "iso8859_6", "ISO 2022 IR 126": "iso8859_7", "ISO 2022 IR 138": "iso8859_8",
    "ISO 2022 IR 148": "iso8859_9", "ISO 2022 IR 203": "iso8859_15", "ISO 2022 IR 13": "shift_jis",
    "ISO 2022 IR 166": "tis_620",
}
_MULTI_BYTE_EXTENSIONS = {
    "ISO 2022 IR 87": "iso2022_jp", "ISO 2022 IR 159": "iso2022_jp_2", "ISO 2022 IR 149": "euc_kr",
    "ISO 2022 IR 58": "gb2312",
}
KNOWN_TERMS = frozenset(_WITHOUT_EXTENSIONS) | frozenset(_SINGLE_BYTE_EXTENSIONS) | frozenset(
    _MULTI_BYTE_EXTENSIONS)


def text(ds: Dataset, keyword: str, limit: int = 0) -> str:
    """The first value of ``keyword`` as trimmed text ("" when absent or empty); cut to ``limit`` if given."""
    if keyword not in ds or ds[keyword].is_empty:
        return ""
    value = ds[keyword].value
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else ""
    result = str(value).strip().rstrip("\0")
    return result[:limit] if limit else result


def parse_character_set(value: str | list | tuple | None) -> tuple[str, ...]:
    """A Specific Character Set value as its terms (value 1 "" = default repertoire); ValueError naming what is
    not a Defined Term or not a valid combination (PS3.3 C.12.1.1.2)."""
    if value is None:
        return ("",)
    terms = [t.strip() for t in (value.split("\\") if isinstance(value, str) else [str(v) for v in value])]
    if not terms or terms == [""]:
        return ("",)
    unknown = [t for t in terms if t and t not in KNOWN_TERMS]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a Specific Character Set Defined Term (PS3.3 C.12.1.1.2)")
    if len(terms) == 1:
        if terms[0] in _MULTI_BYTE_EXTENSIONS:
            raise ValueError(f"{terms[0]!r} cannot be value 1: the delimiters must stay in the initial set; "
                             f"use '\\{terms[0]}' (or 'ISO 2022 IR 6\\{terms[0]}')")
        return tuple(terms)
    if terms[0] in _MULTI_BYTE_EXTENSIONS:
        raise ValueError(f"{terms[0]!r} cannot be value 1 (a multi-byte set with code extensions)")
    alone = [t for t in terms if t in _WITHOUT_EXTENSIONS and t != "ISO_IR 6"]
    if alone:
        raise ValueError(f"{alone[0]!r} cannot be used with code extensions (several values)")
    if "" in terms[1:]:
        raise ValueError("only value 1 may be empty")
    return tuple(terms)


@functools.lru_cache(maxsize=64)
def encoder(terms: tuple[str, ...]) -> Callable[[str, bool], bytes]:
    """The strict encoder of a whole text value (``\\`` between values; ``^`` and ``=`` in a Person Name, when
    ``person_name``) in the declared set ``terms``. The delimiters are ASCII in every set without code
    extensions, so such a value is encoded in one piece; with code extensions each part between delimiters
    is encoded on its own (PS3.5 6.1.2.5.3: the initial sets are active again before each delimiter)."""
    if terms == ("",) or len(terms) == 1 and terms[0] in _WITHOUT_EXTENSIONS:
        codec = "ascii" if terms == ("",) else _WITHOUT_EXTENSIONS[terms[0]]
        if codec == "shift_jis":                            # ISO_IR 13: JIS X 0201, one byte per character
            accept = _in_repertoire(terms[0])

            def encode_jis_x_0201(value: str, person_name: bool = False) -> bytes:
                for i, ch in enumerate(value):
                    if not accept(ch):
                        raise UnicodeEncodeError("dicom", value, i, i + 1, "not in ISO_IR 13")
                return value.encode(codec)

            return encode_jis_x_0201
        return lambda value, person_name=False: value.encode(codec)
    part = _Iso2022Encoder(terms).encode

    def encode_with_extensions(value: str, person_name: bool = False) -> bytes:
        if value.isascii():
            return value.encode("ascii")
        pieces = _DELIMITED_PN.split(value) if person_name else value.split("\\")
        if not person_name:
            return b"\\".join(part(p) for p in pieces)
        return b"".join(p.encode("ascii") if p in ("^", "=", "\\") else part(p) for p in pieces)

    return encode_with_extensions


_DELIMITED_PN = re.compile(r"([\\^=])")


class _Iso2022Encoder:
    """ISO 2022 code extensions (PS3.5 6.1.2.5): per character, the first declared set that holds it, designated
    by its escape sequence when it is not the one in use; the initial sets again at the end of the value
    (6.1.2.5.3). Bytes < 0x80 go to G0, bytes >= 0x80 to G1 (8-bit, PS3.5 6.1.2.5.2)."""

    def __init__(self, terms: tuple[str, ...]):
        first = terms[0] or "ISO 2022 IR 6"
        self.terms = terms
        self.initial_g0 = _G0_ESCAPES["ISO 2022 IR 13" if first in ("ISO 2022 IR 13", "ISO_IR 13") else
                                      "ISO 2022 IR 6"]
        self.initial_g1 = _G1_ESCAPES.get(first.replace("ISO_IR", "ISO 2022 IR"))
        self.sets = [(t, _in_repertoire(t)) for t in (first, *terms[1:]) if t not in ("ISO 2022 IR 6",)]

    def encode(self, value: str) -> bytes:
        if value.isascii():
            return value.encode("ascii")
        out = bytearray()
        g0, g1 = self.initial_g0, self.initial_g1
        for i, ch in enumerate(value):
            if ch < "\x80":
                if g0 != self.initial_g0:
                    out += self.initial_g0
                    g0 = self.initial_g0
                out += ch.encode("ascii")
                continue
            term = next((t for t, accept in self.sets if accept(ch)), None)
            if term is None:
                raise UnicodeEncodeError("dicom", value, i, i + 1, "not in " + "\\".join(self.terms))
            code = _bytes_in_set(ch, term)
            if term in _G0_ESCAPES:
                if g0 != _G0_ESCAPES[term]:
                    g0 = _G0_ESCAPES[term]
                    out += g0
            elif g1 != _G1_ESCAPES[term]:
                g1 = _G1_ESCAPES[term]
                out += g1
            out += code
        if g0 != self.initial_g0:
            out += self.initial_g0
        if self.initial_g1 is not None and g1 != self.initial_g1:
            out += self.initial_g1
        return bytes(out)


# Escape sequences of PS3.3 Tables C.12-3 and C.12-4 (ISO 2022 IR 13 designates both G0 and G1).
_G0_ESCAPES = {"ISO 2022 IR 6": b"\x1b(B", "ISO 2022 IR 13": b"\x1b(J", "ISO 2022 IR 87": b"\x1b$B",
               "ISO 2022 IR 159": b"\x1b$(D"}
_G1_ESCAPES = {"ISO 2022 IR 100": b"\x1b-A", "ISO 2022 IR 101": b"\x1b-B", "ISO 2022 IR 109": b"\x1b-C",
               "ISO 2022 IR 110": b"\x1b-D", "ISO 2022 IR 144": b"\x1b-L", "ISO 2022 IR 127": b"\x1b-G",
               "ISO 2022 IR 126": b"\x1b-F", "ISO 2022 IR 138": b"\x1b-H", "ISO 2022 IR 148": b"\x1b-M",
               "ISO 2022 IR 203": b"\x1b-b", "ISO 2022 IR 166": b"\x1b-T", "ISO 2022 IR 13": b"\x1b)I",
               "ISO 2022 IR 149": b"\x1b$)C", "ISO 2022 IR 58": b"\x1b$)A"}


def _bytes_in_set(ch: str, term: str) -> bytes:
    """The code of a non-ASCII character in one ISO 2022 set (the escape sequence is the caller's)."""
    if term == "ISO 2022 IR 87":
        return ch.encode("iso2022_jp")[3:5]                # ESC $ B xx xx ESC ( B
    if term == "ISO 2022 IR 159":
        encoded = ch.encode("iso2022_jp_2")
        return encoded[encoded.index(b"\x1b$(D") + 4:][:2]
    return ch.encode(_CODECS[term])


_CODECS = {**_WITHOUT_EXTENSIONS, **_SINGLE_BYTE_EXTENSIONS, **_MULTI_BYTE_EXTENSIONS}


def _in_repertoire(term: str) -> Callable[[str], bool]:
    """Whether one character is in the repertoire of ``term`` (PS3.3 C.12.1.1.2)."""
    if term in ("", "ISO_IR 6", "ISO 2022 IR 6"):
        return lambda ch: ch < "\x80"
    codec = _CODECS[term]
    if term in ("ISO_IR 13", "ISO 2022 IR 13"):            # JIS X 0201: one byte per character
        return lambda ch: _encodes(ch, codec) and len(ch.encode(codec)) == 1
    if term == "ISO 2022 IR 159":                           # JIS X 0212 only, not what JIS X 0208 holds
        return lambda ch: _encodes(ch, codec) and b"\x1b$(D" in ch.encode(codec)
    return lambda ch: _encodes(ch, codec)


def _encodes(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
        return True
    except UnicodeEncodeError:
        return False
