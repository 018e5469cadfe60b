"""Reading C-FIND / C-MOVE / C-GET matching keys (DICOM PS3.4 C.2.2.2), shared by the worklist and Q/R SCPs.

Each reader takes one key of an Identifier and returns what the core's queries take, or raises
:class:`InvalidInput` (answered A900 by interfaces.dicom.statuses) for a value that is not a value of its VR:

- :func:`single` / :func:`text_key`: single value or wildcard (C.2.2.2.1, C.2.2.2.4); absent, empty or all ``*``
  is universal matching (C.2.2.2.3) and gives None. Several values are refused: without Extended Negotiation
  of Multiple Value Matching their meaning is undefined (C.2.2.2.8 note 4; BUG-22);
- :func:`uid_list`: list of UID matching (C.2.2.2.2), each value checked against PS3.5 9.1;
- :func:`value_range` with :func:`parse_date` / :func:`parse_time`: range matching (C.2.2.2.5): "A", "A-B",
  "-B", "A-"; a TM value stands for the interval its precision covers;
- :func:`sequence_item`: the single item of a sequence matching key (C.2.2.2.6).

``where`` names the key for the Offending Element, ``Parent.Keyword`` inside a sequence.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Callable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from app.errors import InvalidInput
from app.queries.worklist import Text

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def where(parent: str, keyword: str) -> str:
    return f"{parent}.{keyword}" if parent else keyword


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
    return None if value is None else Text(value)


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


def sequence_item(ds: Dataset, keyword: str) -> Dataset | None:
    """The single item of a sequence matching key; None when absent, empty or with an empty item."""
    if keyword not in ds or ds[keyword].VR != "SQ":
        return None
    items = ds[keyword].value or []
    if len(items) > 1:
        raise InvalidInput(f"{keyword}: {len(items)} items, one allowed (C.2.2.2.6)", location=keyword)
    return items[0] if items and len(items[0]) else None


def value_range(value: str, parse: Callable, keyword: str, parent: str = ""):
    """(low, high) of a single value "A", a range "A-B", "-B" or "A-" (PS3.4 C.2.2.2.5); None = open end."""
    at = where(parent, keyword)
    parts = value.split("-")
    if len(parts) == 1:
        return parse(value, at)
    if len(parts) != 2 or parts == ["", ""]:
        raise InvalidInput(f"{keyword} {value!r} is not a value or range of its VR", location=at)
    low = parse(parts[0].strip(), at)[0] if parts[0].strip() else None
    high = parse(parts[1].strip(), at)[1] if parts[1].strip() else None
    return low, high


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
