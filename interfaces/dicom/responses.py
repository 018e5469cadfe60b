"""C-FIND response Identifiers from templates (DICOM PS3.4 C.4.1.1.3.2, K.4.1.1.3.2), for the worklist and Q/R SCPs.

A template maps a keyword to a function of the matched record (or to :class:`Nested` for a sequence). Both
builders answer exactly the keys of the request: known keys filled, keys the engine has no value for returned
empty (zero length, so every requested Type 1/2 return key is present), a sequence key sent without item keys
answered with whole items (C.2.2.2.6).

- :func:`render` builds a pydicom Dataset (the Q/R SCP; Specific Character Set and group lengths are left
  to the caller).
- :class:`AnswerPlan` is compiled once per C-FIND from its request and writes each answer straight to bytes
  in the association's transfer syntax (PS3.5 7.1: tags in ascending order, even value lengths, items of
  defined length): about 30 times cheaper per answer than building and encoding a pydicom Dataset, which
  matters for a worklist query with thousands of answers (docs/performance.md). Text is encoded in the
  declared character set by interfaces.dicom.values; an answer holding a character that set cannot encode
  is written in UTF-8 instead, with ``ISO_IR 192`` as its Specific Character Set (PS3.5 6.1.2.3), so no
  answer ever carries bytes outside its declared repertoire. :func:`as_dataset` hands the bytes to
  pynetdicom as a Dataset of raw elements, which pydicom writes out without decoding them.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Callable

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from interfaces.dicom.values import UTF8, encoder, parse_character_set


@dataclass(frozen=True)
class Nested:
    """A sequence attribute: the template of its items and the source objects of its items."""

    template: dict
    items: Callable[[object], list]


# pydicom Dataset builder (Q/R) ----------------------------------------------------------------------------
def render(request: Dataset | None, template: dict, source) -> Dataset:
    """The response Identifier for ``source``: the keys of ``request`` filled from ``template``."""
    out = Dataset()
    if request is None or len(request) == 0:       # no item keys: the whole item (C.2.2.2.6)
        for keyword, spec in template.items():
            _put(out, keyword, spec, None, source)
        return out
    for elem in request:
        if elem.keyword == "SpecificCharacterSet" or elem.tag.element == 0:   # set by the caller; group lengths
            continue
        spec = template.get(elem.keyword)
        if spec is None:
            out.add(_unknown(elem))
        else:
            _put(out, elem.keyword, spec, elem, source)
    return out


def declare_character_set(ds: Dataset, charset: str) -> None:
    """Set Specific Character Set on a rendered answer: ``charset``, or ISO_IR 192 when some text of the answer
    is not in ``charset``'s repertoire (so that pydicom never writes replacement characters)."""
    text = encoder(parse_character_set(charset))
    try:
        _encode_texts(ds, text)
    except UnicodeEncodeError:
        charset = UTF8
    ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset


def _encode_texts(ds: Dataset, text: Callable[[str, bool], bytes]) -> None:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _encode_texts(item, text)
        elif elem.VR in _TEXT_VRS and not elem.is_empty:
            _value_bytes([str(v) for v in elem.value] if elem.VM > 1 else str(elem.value), elem.VR, text)


def _put(out: Dataset, keyword: str, spec, elem: DataElement | None, source) -> None:
    if isinstance(spec, Nested):
        items = elem.value if elem is not None and elem.VR == "SQ" else None
        sub_request = items[0] if items else None
        setattr(out, keyword, Sequence([render(sub_request, spec.template, x) for x in spec.items(source)]))
    else:
        setattr(out, keyword, spec(source))


def _unknown(elem: DataElement) -> DataElement:
    """A key the engine has no value for: returned empty (a private creator keeps its value)."""
    if elem.tag.is_private_creator:
        return DataElement(elem.tag, elem.VR, elem.value)
    return DataElement(elem.tag, elem.VR, Sequence() if elem.VR == "SQ" else None)


# Byte writer (worklist) ------------------------------------------------------------------------------------
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_CHARSET_TAG = 0x00080005


@dataclass(frozen=True)
class _Entry:
    tag: int
    vr: str
    get: Callable | None = None          # value of the source (str, list of str or None); None: empty
    plan: "AnswerPlan | None" = None     # a sequence: the plan of its items
    items: Callable | None = None        # a sequence: its source objects
    fixed: str | None = None             # a private creator: its value


class AnswerPlan:
    """The answers to one request, compiled: which tags, in tag order, from which template entries."""

    def __init__(self, request: Dataset | None, template: dict):
        entries: list[_Entry] = []
        if request is None or len(request) == 0:          # no item keys: the whole item (C.2.2.2.6)
            for keyword, spec in template.items():
                entries.append(_entry(tag_for_keyword(keyword), None, spec, None))
        else:
            for tag in request.keys():
                tag = BaseTag(tag)
                if tag == _CHARSET_TAG or tag.element == 0:    # written per answer; group lengths
                    continue
                elem = request[tag]
                spec = template.get(elem.keyword) if elem.keyword else None
                entries.append(_entry(tag, elem, spec, request))
        self.entries = tuple(sorted(entries, key=lambda e: e.tag))

    def answer(self, source, charset: tuple[str, ...], implicit: bool = True, little: bool = True) -> Dataset:
        """The answer for ``source``, ready for pynetdicom: in ``charset`` when that can encode every text of it,
        else in ISO_IR 192."""
        w = _writer(implicit, little)
        try:
            values, used = self.values(source, w, encoder(charset)), "\\".join(charset)
        except UnicodeEncodeError:
            values, used = self.values(source, w, encoder((UTF8,))), UTF8
        return as_dataset(used, values, implicit, little, w)

    def values(self, source, w: "_Writer", text: Callable[[str, bool], bytes]) -> list[tuple[int, str, bytes]]:
        """(tag, VR, encoded value) of each element of the answer for ``source``, in tag order."""
        out = []
        for e in self.entries:
            if e.plan is not None:
                value = b"".join(w.item(b"".join(w.element(*v) for v in e.plan.values(x, w, text)))
                                 for x in e.items(source))
            elif e.get is None:
                value = _value_bytes(e.fixed, e.vr, text) if e.fixed else b""
            else:
                value = _value_bytes(e.get(source), e.vr, text)
            out.append((e.tag, e.vr, value))
        return out


def _entry(tag: int, elem: DataElement | None, spec, request: Dataset | None) -> _Entry:
    vr = _vr(tag, elem)
    if isinstance(spec, Nested):
        items = elem.value if elem is not None and elem.VR == "SQ" else None
        return _Entry(tag, "SQ", plan=AnswerPlan(items[0] if items else None, spec.template), items=spec.items)
    if spec is not None:
        return _Entry(tag, vr, get=spec)
    if BaseTag(tag).is_private_creator and elem is not None and not elem.is_empty:
        return _Entry(tag, "LO", fixed=str(elem.value))
    return _Entry(tag, vr)


def _vr(tag: int, elem: DataElement | None) -> str:
    if elem is not None and elem.VR and len(elem.VR) == 2:
        return elem.VR
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr if len(vr) == 2 else vr[:2]                 # "US or SS": the first (empty anyway)


def _value_bytes(value, vr: str, text: Callable[[str, bool], bytes]) -> bytes:
    """The encoded value (padded to even length) of a str, a list of str (several values) or None."""
    if not value:
        return b""
    if not isinstance(value, str):
        value = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    if value.isascii():
        data = value.encode("ascii")
    elif vr in _TEXT_VRS:
        data = text(value, vr == "PN")
    else:                      # a default-repertoire VR holding other characters: only UTF-8 can carry it
        raise UnicodeEncodeError("ascii", value, 0, len(value), f"not in the default repertoire (VR {vr})")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return data


@functools.lru_cache(maxsize=4)
def _writer(implicit: bool, little: bool) -> "_Writer":
    return _Writer(implicit, little)


class _Writer:
    """Element and item headers of one transfer syntax (PS3.5 7.1.2, 7.1.3, 7.5)."""

    def __init__(self, implicit: bool, little: bool):
        self.implicit = implicit
        order = "<" if little else ">"
        self._tag = struct.Struct(order + "HH").pack
        self._ul = struct.Struct(order + "L").pack
        self._us = struct.Struct(order + "H").pack
        self._item_head = self._tag(0xFFFE, 0xE000)

    def element(self, tag: int, vr: str, value: bytes) -> bytes:
        head = self._tag(tag >> 16, tag & 0xFFFF)
        if self.implicit:
            return head + self._ul(len(value)) + value
        if vr in _LONG_VRS:
            return head + vr.encode() + b"\0\0" + self._ul(len(value)) + value
        return head + vr.encode() + self._us(len(value)) + value

    def item(self, content: bytes) -> bytes:
        return self._item_head + self._ul(len(content)) + content


class EncodedAnswer(Dataset):
    """An answer that knows its own encoding: a Dataset of raw elements (what any pydicom code reads), plus the
    bytes of the whole Identifier in the transfer syntax it was written for, which pynetdicom sends as they are
    (interfaces.dicom.sending)."""

    encoded: tuple[bool, bool, bytes] | None = None      # (implicit VR, little endian, bytes)


def as_dataset(charset: str, values: list[tuple[int, str, bytes]], implicit: bool, little: bool,
               writer: "_Writer | None" = None) -> EncodedAnswer:
    """The answer of Specific Character Set + ``values``. pydicom writes the raw elements of a data set whose
    original encoding is the one being written without decoding them, so even without interfaces.dicom.sending
    the bytes go out unchanged."""
    ds = EncodedAnswer()
    charset_value = charset.encode("ascii")
    if len(charset_value) % 2:
        charset_value += b" "
    elements = ((_CHARSET_TAG, "CS", charset_value), *values)
    for tag, vr, value in elements:
        tag = BaseTag(tag)
        ds._dict[tag] = RawDataElement(tag, None if implicit else vr, len(value), value, 0, implicit, little)
    ds.set_original_encoding(implicit, little, convert_encodings(charset.split("\\")))
    w = writer or _writer(implicit, little)
    object.__setattr__(ds, "encoded", (implicit, little, b"".join(w.element(*e) for e in elements)))
    return ds


