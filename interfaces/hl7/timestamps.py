"""HL7 v2 date/time values: DTM, TS and DT (HL7 v2.5.1 chapter 2, appendix 2.A: DT, DTM, TS).

DTM is ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``. Precision that stops early means the start of the
period (``200007`` is 2000-07-01 00:00). The older TS type adds a second component, the degree of precision
(``20190924143134^S``); it is ignored: when the whole raw field is given, component 1 is used (the component
separator is taken to be '^'; pass the component value for messages with other delimiters).

Deviations accepted because senders produce them: 15 to 18 digits without a '.' (Mirth writes
``YYYYMMDDHHMMSSmmm``) are seconds followed by a fraction of 1 to 4 digits.

Plausibility: the syntax accepts any year; values before MIN_YEAR (1800) are refused as garbage.

Time zones (2.A, DTM): a value with an offset gives an aware datetime. Without one, the value is in the sender's
zone, which by default is the offset of MSH-7: pass it as ``default_tz`` (``parse_dtm(msh7).tzinfo``).
Without ``default_tz`` a naive datetime is returned. A ``zoneinfo`` default_tz is attached with
``datetime.replace``: a wall time that does not exist (the DST gap) is kept as given, with fold=0 (the
pre-transition offset); converting it later moves it by the gap, it never raises.
"""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["MIN_YEAR", "format_dtm", "parse_date", "parse_dtm"]

MIN_YEAR = 1800
"""Years before this are refused: DTM syntax allows them, but in a RIS they are garbage (e.g. DOB '10131113',
which reads as 1013-11-13). Pass ``min_year`` to change it."""

_DTM = re.compile(
    r"(?P<year>\d{4})"
    r"(?:(?P<month>\d{2})(?:(?P<day>\d{2})(?:(?P<hour>\d{2})(?:(?P<minute>\d{2})"
    r"(?:(?P<second>\d{2})(?:\.?(?P<fraction>\d{1,4}))?)?)?)?)?)?"
    r"(?P<offset>[+-]\d{4})?"
)


def _component_1(value: str) -> str:
    return value.split("^", 1)[0].strip()


def parse_dtm(
    value: str, default_tz: dt.tzinfo | None = None, *, min_year: int = MIN_YEAR
) -> dt.datetime | None:
    """Parse an HL7 DTM/TS value; None when empty. Raises ValueError naming the value when it is invalid.

    Years before ``min_year`` are refused as implausible (see the module docstring).
    """
    text = _component_1(value or "")
    if not text:
        return None
    match = _DTM.fullmatch(text)
    if match is None:
        raise ValueError(f"not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.SSSS]]]]]][+/-ZZZZ]): {value!r}")
    parts = match.groupdict()
    if int(parts["year"]) < min_year:
        raise ValueError(f"implausible HL7 date/time {value!r}: year before {min_year}")
    fraction = parts["fraction"] or ""
    tzinfo = _offset(parts["offset"], value) if parts["offset"] else default_tz
    try:
        return dt.datetime(
            int(parts["year"]),
            int(parts["month"] or 1),
            int(parts["day"] or 1),
            int(parts["hour"] or 0),
            int(parts["minute"] or 0),
            int(parts["second"] or 0),
            int(fraction.ljust(6, "0")) if fraction else 0,
            tzinfo=tzinfo,
        )
    except ValueError as exc:
        raise ValueError(f"invalid HL7 date/time {value!r}: {exc}") from None


def _offset(offset: str, value: str) -> dt.timezone:
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if hours > 23 or minutes > 59:
        raise ValueError(f"invalid time zone offset {offset!r} in HL7 date/time {value!r}")
    delta = dt.timedelta(hours=hours, minutes=minutes)
    return dt.timezone(-delta if offset[0] == "-" else delta)


def parse_date(value: str, *, min_year: int = MIN_YEAR) -> dt.date | None:
    """The calendar date of an HL7 DT/DTM/TS value (e.g. a date of birth); None when empty.

    Never shifted by time zone: ``19701004000000+0100`` is 1970-10-04. Lenient for one common malformation:
    when the value is not a valid DTM but its first 8 characters are a valid YYYYMMDD date (e.g.
    ``19500131T143414``), that date is returned. Otherwise ValueError naming the value.
    """
    text = _component_1(value or "")
    if not text:
        return None
    try:
        parsed = parse_dtm(text, min_year=min_year)
    except ValueError:
        head = text[:8]
        if len(head) == 8 and head.isdigit() and int(head[:4]) >= min_year:
            try:
                return dt.date(int(head[:4]), int(head[4:6]), int(head[6:8]))
            except ValueError:
                pass
        raise ValueError(f"not an HL7 date: {value!r}") from None
    assert parsed is not None
    return parsed.date()


def format_dtm(moment: dt.datetime) -> str:
    """Write a DTM: ``YYYYMMDDHHMMSS``, plus ``+/-ZZZZ`` when the datetime is aware (seconds precision)."""
    text = (
        f"{moment.year:04d}{moment.month:02d}{moment.day:02d}"
        f"{moment.hour:02d}{moment.minute:02d}{moment.second:02d}"
    )
    offset = moment.utcoffset()
    if offset is None:
        return text
    sign = "-" if offset < dt.timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{text}{sign}{minutes // 60:02d}{minutes % 60:02d}"
