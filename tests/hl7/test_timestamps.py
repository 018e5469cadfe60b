"""DTM/TS/DT values (HL7 v2.5.1 2.A.21, 2.A.22, 2.A.77)."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest

from interfaces.hl7 import format_dtm, parse_date, parse_dtm

PLUS1 = dt.timezone(dt.timedelta(hours=1))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024", dt.datetime(2024, 1, 1)),
        ("202403", dt.datetime(2024, 3, 1)),
        ("20240310", dt.datetime(2024, 3, 10)),
        ("2024031008", dt.datetime(2024, 3, 10, 8)),
        ("202403100830", dt.datetime(2024, 3, 10, 8, 30)),
        ("20240310083015", dt.datetime(2024, 3, 10, 8, 30, 15)),
        ("20240310083015.1", dt.datetime(2024, 3, 10, 8, 30, 15, 100000)),
        ("20240310083015.1234", dt.datetime(2024, 3, 10, 8, 30, 15, 123400)),
        ("20110613122406637", dt.datetime(2011, 6, 13, 12, 24, 6, 637000)),  # Mirth: ms without '.'
        ("20190924143134^S", dt.datetime(2019, 9, 24, 14, 31, 34)),  # TS degree of precision ignored
        (" 20240310 ", dt.datetime(2024, 3, 10)),
    ],
)
def test_precisions_without_offset_are_naive(value, expected):
    assert parse_dtm(value) == expected
    assert parse_dtm(value).tzinfo is None


def test_offsets_give_aware_datetimes():
    assert parse_dtm("20250204141403.403+0100") == dt.datetime(2025, 2, 4, 14, 14, 3, 403000, tzinfo=PLUS1)
    value = parse_dtm("20250204141403.4032-0030")
    assert value.utcoffset() == -dt.timedelta(minutes=30)
    assert value.microsecond == 403200
    assert parse_dtm("202403100830+0000").utcoffset() == dt.timedelta(0)


def test_default_tz_is_attached_only_without_offset():
    assert parse_dtm("20240310", PLUS1).tzinfo is PLUS1
    assert parse_dtm("20240310-0500", PLUS1).utcoffset() == dt.timedelta(hours=-5)


def test_default_zone_in_a_dst_gap_does_not_raise():
    value = parse_dtm("20240331023000", ZoneInfo("Europe/Berlin"))  # 02:30 does not exist that night
    assert (value.hour, value.minute) == (2, 30)
    assert value.astimezone(dt.timezone.utc).hour == 1  # read with the pre-transition offset, +01:00


@pytest.mark.parametrize("value", ["", "   ", None, "^S"])
def test_empty_is_none(value):
    assert parse_dtm(value) is None
    assert parse_date(value) is None


@pytest.mark.parametrize(
    "value",
    ["Aug 15, 1942", "10131113", "20240230", "2024031025", "20240310083060", "YYYYMMDDHHMMSS", "202",
     "20240310+2500", "20240310083015.", "19500131T143414", "2024031008301512345"],
)
def test_invalid_values_raise_naming_the_value(value):
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        parse_dtm(value)


def test_parse_date_never_shifts_by_time_zone():
    assert parse_date("19701004000000+0100") == dt.date(1970, 10, 4)
    assert parse_date("19701004235959-1200") == dt.date(1970, 10, 4)
    assert parse_date("19800101") == dt.date(1980, 1, 1)
    assert parse_date("1980") == dt.date(1980, 1, 1)


def test_parse_date_takes_a_valid_date_prefix():
    assert parse_date("19500131T143414") == dt.date(1950, 1, 31)


@pytest.mark.parametrize("value", ["Aug 15, 1942", "10131113", "YYYYMMDDHHMMSS", "10131113T1200", "19501301"])
def test_parse_date_invalid(value):
    with pytest.raises(ValueError, match="not an HL7 date"):
        parse_date(value)


def test_format_dtm():
    assert format_dtm(dt.datetime(2024, 3, 10, 8, 0, 1, 999)) == "20240310080001"
    assert format_dtm(dt.datetime(2024, 3, 10, 8, 0, 1, tzinfo=PLUS1)) == "20240310080001+0100"
    minus = dt.timezone(-dt.timedelta(hours=3, minutes=30))
    assert format_dtm(dt.datetime(2024, 3, 10, tzinfo=minus)) == "20240310000000-0330"
    assert format_dtm(dt.datetime(999, 1, 2)) == "09990102000000"


def test_implausible_years_are_refused_unless_allowed():
    # '10131113' is syntactically 1013-11-13 (not "month 13"): refused by the MIN_YEAR plausibility bound.
    with pytest.raises(ValueError, match="year before 1800"):
        parse_dtm("10131113")
    assert parse_date("10131113", min_year=1000) == dt.date(1013, 11, 13)


def test_format_then_parse_round_trip():
    moment = dt.datetime(2024, 3, 10, 8, 0, 1, tzinfo=PLUS1)
    assert parse_dtm(format_dtm(moment)) == moment
