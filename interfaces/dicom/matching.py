"""Reading C-FIND / C-MOVE / C-GET Identifiers (DICOM PS3.4 C.2.2.2), shared by the worklist and Q/R SCPs.

:func:`check_identifier` comes first, for every Identifier: each non-empty key must hold values of its VR
(PS3.5 6.2) in the syntax of its matching type (PS3.4 C.2.2.2: ``*``/``?`` wildcards in string VRs, ``-``
ranges in DA/TM/DT, backslash lists), at any depth of sequence items, whether or not the engine matches on
that key; Specific Character Set must name Defined Terms. Anything else is an :class:`InvalidInput` naming the
key (answered A900 by interfaces.dicom.statuses): a malformed key never makes a query mean "everything", and
never silently means something else (BUG-23).

Then each reader takes one key and returns what the core's queries take, or raises :class:`InvalidInput`:

- :func:`single` / :func:`text_key`: single value or wildcard (C.2.2.2.1, C.2.2.2.4); absent, empty or all ``*``
  is universal matching (C.2.2.2.3) and gives None. Several values are refused: without Extended Negotiation
  of Multiple Value Matching their meaning is undefined (C.2.2.2.8 note 4; BUG-22);
- :func:`uid_list`: list of UID matching (C.2.2.2.2), each value checked against PS3.5 9.1;
- :func:`value_range` with :func:`parse_date` / :func:`parse_time` / :func:`parse_datetime`: range matching
  (C.2.2.2.5): "A", "A-B", "-B", "A-"; a TM or DT value stands for the interval its precision covers;
- :func:`date_time_range`: a date key with its time key as one :class:`DateTimeRange`;
- :func:`sequence_item`: the single item of a sequence matching key (C.2.2.2.6).

``where`` names the key for the Offending Element, ``Parent.Keyword`` inside a sequence.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Callable

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from app.errors import InvalidInput
from app.queries.worklist import DateTimeRange, Text
from interfaces.dicom.values import parse_character_set

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT = re.compile(r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
                 r"([+-]\d{4})?$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_CS = re.compile(r"^[A-Z0-9 _*?]*$")
_AS = re.compile(r"^\d{3}[DWMY]$")
_DS = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_IS = re.compile(r"^[+-]?\d+$")
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")          # control characters other than ESC
_CONTROL_TEXT = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")   # ST/LT/UT also allow TAB, LF, FF, CR

_BINARY_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8, "UV": 8, "SV": 8,
                 "OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8, "OB": 1, "UN": 1}
_ASCII_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}


def where(parent: str, keyword: str) -> str:
    return f"{parent}.{keyword}" if parent else keyword


# Validation of a whole Identifier -----------------------------------------------------------------------
def check_identifier(ds: Dataset) -> None:
    """Raise InvalidInput for the first key of ``ds`` (at any depth) whose value is not of its VR."""
    if "SpecificCharacterSet" in ds:
        try:
            parse_character_set(ds.SpecificCharacterSet)
        except ValueError as exc:
            raise InvalidInput(f"SpecificCharacterSet: {exc}", location="SpecificCharacterSet") from None
    _check_items(ds, "")


def _check_items(ds: Dataset, parent: str) -> None:
    for tag in list(ds.keys()):
        tag = BaseTag(tag)
        if tag.element == 0 or tag.is_private or tag == 0x00080005:   # group lengths; private: VR unknown
            continue
        elem = ds.get_item(tag)
        vr = elem.VR or _dictionary_vr(tag)
        at = where(parent, keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})")
        if vr == "SQ" or (vr is None and isinstance(elem, RawDataElement) and elem.value is None):
            for item in ds[tag].value or []:
                _check_items(item, at)
            continue
        if vr is None or (isinstance(elem, RawDataElement) and not elem.value) or (
                isinstance(elem, DataElement) and elem.is_empty):
            continue
        _check_value(elem, vr, at, ds)


def _dictionary_vr(tag: BaseTag) -> str | None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return None if " or " in vr else vr           # ambiguous VRs (US or SS) are not matching keys


def _check_value(elem, vr: str, at: str, ds: Dataset) -> None:
    name = at.rsplit(".", 1)[-1]
    if vr in _BINARY_SIZES:
        if isinstance(elem, RawDataElement) and len(elem.value) % _BINARY_SIZES[vr]:
            raise InvalidInput(f"{name}: {len(elem.value)} bytes is not a value of VR {vr}", location=at)
        return
    if isinstance(elem, RawDataElement) and vr in _ASCII_VRS:
        try:
            value = elem.value.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidInput(f"{name}: not in the default repertoire (VR {vr})", location=at) from None
        value = value.rstrip("\0 ")
    else:
        value = _as_text(ds[elem.tag].value)
    for part in value.split("\\"):
        part = part.strip() if vr not in ("ST", "LT", "UT") else part
        if part and part != "*" and not _valid(vr, part):
            raise InvalidInput(f"{name} {part[:24]!r}: not a {vr} value or matching key", location=at)


def _as_text(value) -> str:
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(_as_text(v) for v in value)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(getattr(value, "original_string", None) or value)


def _valid(vr: str, value: str) -> bool:
    try:
        if vr == "DA":
            value_range(value, parse_date, "")
        elif vr == "TM":
            value_range(value, parse_time, "")
        elif vr == "DT":
            value_range(value, parse_datetime, "")
        else:
            return _VALUE_CHECKS.get(vr, _no_control)(value)
    except InvalidInput:
        return False
    return True


def _no_control(value: str) -> bool:
    return not _CONTROL.search(value)


def _person_name(value: str) -> bool:
    groups = value.split("=")
    return len(groups) <= 3 and all(len(g.split("^")) <= 5 for g in groups) and _no_control(value)


def _integer(value: str) -> bool:
    return bool(_IS.match(value)) and -(2 ** 31) <= int(value) < 2 ** 31


_VALUE_CHECKS: dict[str, Callable[[str], bool]] = {
    "AE": lambda v: _no_control(v) and "\x1b" not in v,
    "AS": lambda v: bool(_AS.match(v)),
    "CS": lambda v: bool(_CS.match(v)),
    "DS": lambda v: bool(_DS.match(v)) and len(v) <= 16,
    "IS": _integer,
    "UI": lambda v: len(v) <= 64 and bool(_UID.match(v)),
    "PN": _person_name,
    "ST": lambda v: not _CONTROL_TEXT.search(v),
    "LT": lambda v: not _CONTROL_TEXT.search(v),
    "UT": lambda v: not _CONTROL_TEXT.search(v),
}


# Readers of single keys ---------------------------------------------------------------------------------
def single(ds: Dataset, keyword: str, parent: str = "") -> str | None:
    """The single value of a key, or None for universal matching (absent or empty)."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if isinstance(value, (MultiValue, list)):
        values = [str(v) for v in value]
        if len(values) > 1:
            raise InvalidInput(f"{keyword}: {len(values)} values, only UIDs may be a list",
                               location=where(parent, keyword))
        value = values[0] if values else ""
    text = "" if value is None else str(value).strip()
    return text or None


def text_key(ds: Dataset, keyword: str, parent: str = "") -> Text | None:
    """A single-value or wildcard key as the core's :class:`Text`; None for universal matching."""
    value = single(ds, keyword, parent)
    return None if value is None or set(value) == {"*"} else Text(value)


def uid_list(ds: Dataset, keyword: str) -> tuple[str, ...] | None:
    """List of UID matching (C.2.2.2.2); None when absent, empty or ``*``."""
    if keyword not in ds or ds[keyword].is_empty:
        return None
    value = ds[keyword].value
    uids = [str(v).strip().rstrip("\0") for v in (value if isinstance(value, (MultiValue, list)) else [value])]
    uids = [u for u in uids if u]
    if uids == ["*"]:
        return None
    bad = [u for u in uids if len(u) > 64 or not _UID.match(u)]
    if bad:
        raise InvalidInput(f"{keyword} {bad[0]!r} is not a UID", location=keyword)
    return tuple(uids) or None


def sequence_item(ds: Dataset, keyword: str, parent: str = "") -> Dataset | None:
    """The single item of a sequence matching key; None when absent, empty or with an empty item."""
    if keyword not in ds or ds[keyword].VR != "SQ":
        return None
    items = ds[keyword].value or []
    if len(items) > 1:
        raise InvalidInput(f"{keyword}: {len(items)} items, one allowed (C.2.2.2.6)",
                           location=where(parent, keyword))
    return items[0] if items and len(items[0]) else None


def date_time_range(ds: Dataset, date_keyword: str, time_keyword: str | None,
                    parent: str = "") -> DateTimeRange | None:
    """A DA key, and its TM key if given, as one range (C.2.2.2.5); None when both are universal."""
    date_value = single(ds, date_keyword, parent)
    time_value = single(ds, time_keyword, parent) if time_keyword else None
    date_value = None if date_value == "*" else date_value
    time_value = None if time_value == "*" else time_value
    if date_value is None and time_value is None:
        return None
    date_from = date_to = time_from = time_to = None
    if date_value is not None:
        date_from, date_to = value_range(date_value, parse_date, date_keyword, parent)
    if time_value is not None:
        time_from, time_to = value_range(time_value, parse_time, time_keyword, parent)
    return DateTimeRange(date_from=date_from, date_to=date_to, time_from=time_from, time_to=time_to,
                         has_date=date_value is not None, has_time=time_value is not None)


def value_range(value: str, parse: Callable, keyword: str, parent: str = ""):
    """(low, high) of a single value "A", a range "A-B", "-B" or "A-" (PS3.4 C.2.2.2.5); None = open end.

    A DT value may end in a UTC offset ("-0500"), whose sign is not the range separator."""
    at = where(parent, keyword)
    dt_range = _DT_RANGE.match(value) if parse is parse_datetime else None
    parts = [p or "" for p in dt_range.groups()] if dt_range else value.split("-")
    if len(parts) == 1:
        return parse(value.strip(), at)
    if len(parts) != 2 or [p.strip() for p in parts] == ["", ""]:
        raise InvalidInput(f"{keyword} {value!r} is not a value or range of its VR", location=at)
    low = parse(parts[0].strip(), at)[0] if parts[0].strip() else None
    high = parse(parts[1].strip(), at)[1] if parts[1].strip() else None
    return low, high


_DT_VALUE = r"\d{4,14}(?:\.\d{1,6})?(?:[+-]\d{4})?"
_DT_RANGE = re.compile(rf"^\s*({_DT_VALUE})?\s*-\s*({_DT_VALUE})?\s*$")


def parse_date(text: str, at: str) -> tuple[dt.date, dt.date]:
    """A DA value (PS3.5 6.2: YYYYMMDD) as a one-day interval."""
    match = _DA.match(text)
    try:
        if not match:
            raise ValueError(text)
        day = dt.date(*(int(g) for g in match.groups()))
    except ValueError:
        raise InvalidInput(f"{at.rsplit('.', 1)[-1]} {text!r}: not YYYYMMDD", location=at) from None
    return day, day


def parse_time(text: str, at: str) -> tuple[dt.time, dt.time]:
    """A TM value as the interval its precision covers: "10" is 10:00:00 to 10:59:59.999999."""
    match = _TM.match(text)
    try:
        if not match:
            raise ValueError(text)
        hh, mm, ss, frac = match.groups()
        low = dt.time(int(hh), int(mm or 0), int(ss or 0), int((frac or "0").ljust(6, "0")))
        high = dt.time(int(hh), int(mm if mm is not None else 59), int(ss if ss is not None else 59),
                       int(frac.ljust(6, "0")) if frac else 999999)
    except ValueError:
        raise InvalidInput(f"{at.rsplit('.', 1)[-1]} {text!r}: not HHMMSS.FFFFFF", location=at) from None
    return low, high


def parse_datetime(text: str, at: str) -> tuple[dt.datetime, dt.datetime]:
    """A DT value (YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]) as the interval its precision covers (naive; the
    offset is checked, not applied)."""
    match = _DT.match(text)
    try:
        if not match:
            raise ValueError(text)
        year, month, day, hh, mm, ss, frac, offset = match.groups()
        low = dt.datetime(int(year), int(month or 1), int(day or 1), int(hh or 0), int(mm or 0), int(ss or 0),
                          int((frac or "0").ljust(6, "0")))
        if offset and not (int(offset[1:3]) <= 14 and int(offset[3:]) < 60):
            raise ValueError(offset)
        if month is None:
            high = dt.datetime(int(year), 12, 31, 23, 59, 59, 999999)
        elif day is None:
            nxt = dt.date(int(year) + (int(month) == 12), int(month) % 12 + 1, 1)
            high = dt.datetime.combine(nxt - dt.timedelta(days=1), dt.time.max)
        else:
            high = dt.datetime(int(year), int(month), int(day), int(hh if hh is not None else 23),
                               int(mm if mm is not None else 59), int(ss if ss is not None else 59),
                               int(frac.ljust(6, "0")) if frac else 999999)
    except ValueError:
        raise InvalidInput(f"{at.rsplit('.', 1)[-1]} {text!r}: not a DT value", location=at) from None
    return low, high
