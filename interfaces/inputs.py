"""The one reading of numbers, record ids, dates and times at the HTTP edges (JSON API, web pages, FHIR).

Every value a client types is text; the core wants ints, dates and naive datetimes it can compute with and store.
A value that cannot be those, or that lies outside what the database and the calendar can hold, is refused here
with :class:`BadValue` (an :class:`app.errors.InvalidInput`: 400 with a problem document naming the parameter, or
the error next to the form field) - never passed on to fail later as a 500 (an ``OverflowError`` computing the next
day of 9999-12-31, SQLite's "int too large", PostgreSQL's "integer out of range").

- Whole numbers are ASCII digits only: ``str.isdigit`` also accepts '²' and '٣', which ``int()`` refuses or reads as
  3; a number is a number written the one way everybody types it.
- A record id (a path's ``<int:...>``, an ``order_id=`` filter) is 0 to :data:`RECORD_ID_MAX` (PostgreSQL
  ``integer``); a larger one names no record.
- Dates and times lie between :data:`FIRST_DAY` and :data:`LAST_DAY`, so that the day before, the day after and any
  time zone conversion stay inside Python's calendar. ISO 8601 as ``datetime.fromisoformat`` reads it; ``Z`` is UTC;
  a time without an offset is in the site's zone.
"""

from __future__ import annotations

import datetime as dt
import re

from werkzeug.exceptions import BadRequest
from werkzeug.exceptions import NotFound as HTTPNotFound
from werkzeug.routing import IntegerConverter

from app.errors import InvalidInput

RECORD_ID_MAX = 2**31 - 1
FIRST_DAY = dt.date(1900, 1, 1)
LAST_DAY = dt.date(2999, 12, 31)
_DIGITS = re.compile(r"[0-9]{1,30}")


class BadValue(InvalidInput):
    """A parameter that cannot be used; ``advice`` is the sentence a form shows next to the field."""

    def __init__(self, message: str, *, location: str, advice: str):
        super().__init__(message, location=location)
        self.advice = advice


def whole_number(raw, name: str, *, low: int = 0, high: int = RECORD_ID_MAX) -> int:
    """``raw`` (text, or an int from a JSON body) as a whole number from ``low`` to ``high``."""
    advice = f"Enter a whole number from {low} to {high}."
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise BadValue(f"{name} must be a whole number from {low} to {high}", location=name, advice=advice)
    text = str(raw).strip()
    if not _DIGITS.fullmatch(text):
        raise BadValue(f"{name}={_shown(raw)} is not a whole number (digits 0-9) from {low} to {high}",
                       location=name, advice=advice)
    value = int(text)
    if not low <= value <= high:
        raise BadValue(f"{name}={_shown(raw)} is out of range: a whole number from {low} to {high}", location=name,
                       advice=advice)
    return value


def record_id(raw, name: str) -> int:
    """A database id (0 to RECORD_ID_MAX)."""
    return whole_number(raw, name, low=0, high=RECORD_ID_MAX)


def is_whole_number(text: str, *, low: int = 0, high: int = RECORD_ID_MAX) -> bool:
    """Whether ``text`` is a whole number from ``low`` to ``high`` as :func:`whole_number` reads it."""
    return bool(_DIGITS.fullmatch(text)) and low <= int(text) <= high


def _range_text() -> str:
    return f"{FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()}"


def day(raw: str, name: str) -> dt.date:
    """An ISO date (YYYY-MM-DD) from FIRST_DAY to LAST_DAY."""
    advice = f"Enter a date as YYYY-MM-DD. Dates go from {_range_text()}."
    text = str(raw).strip()
    try:
        value = dt.date.fromisoformat(text)
    except ValueError:
        raise BadValue(f"{name}={_shown(raw)} is not a date (YYYY-MM-DD)", location=name, advice=advice) from None
    if not FIRST_DAY <= value <= LAST_DAY:
        raise BadValue(f"{name}={_shown(raw)} is out of range: dates from {_range_text()}", location=name,
                       advice=advice)
    return value


def moment(raw: str, name: str, zone: dt.tzinfo | None) -> dt.datetime:
    """An ISO date or date and time as naive UTC; without an offset it is a time in ``zone`` (UTC when None)."""
    advice = f"Enter a date and time as YYYY-MM-DD HH:MM. Dates go from {_range_text()}."
    text = str(raw).strip()
    try:
        value = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise BadValue(f"{name}={_shown(raw)} is not an ISO 8601 date or date and time", location=name,
                       advice=advice) from None
    if not FIRST_DAY <= value.date() <= LAST_DAY:
        raise BadValue(f"{name}={_shown(raw)} is out of range: times from {_range_text()}", location=name,
                       advice=advice)
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone or dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


def site_time(raw: str, name: str) -> dt.datetime:
    """An ISO date and time as a naive site-local time (the core's clinical times, app.models): an offset, when
    given, is refused - a scheduled time is a time on the department's clock."""
    advice = f"Enter a date and time as YYYY-MM-DDTHH:MM. Dates go from {_range_text()}."
    text = str(raw).strip()
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadValue(f"{name}={_shown(raw)} is not an ISO 8601 date and time (YYYY-MM-DDTHH:MM)", location=name,
                       advice=advice) from None
    if value.tzinfo is not None:
        raise BadValue(f"{name}={_shown(raw)} has a UTC offset; give the time on the site's clock, without one",
                       location=name, advice=advice)
    if not FIRST_DAY <= value.date() <= LAST_DAY:
        raise BadValue(f"{name}={_shown(raw)} is out of range: times from {_range_text()}", location=name,
                       advice=advice)
    return value


def _shown(raw) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "...'"


class RecordIdConverter(IntegerConverter):
    """The ``int`` path converter of the whole application: ASCII digits, 0 to RECORD_ID_MAX. A larger number
    names no record: 404 saying so (never a database overflow)."""

    regex = r"[0-9]+"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number > RECORD_ID_MAX:
            raise HTTPNotFound(f"{value[:30]}{'...' if len(value) > 30 else ''} names no record: record numbers "
                               f"go from 0 to {RECORD_ID_MAX}")
        return number


def _textual(mimetype: str) -> bool:
    """A body of text (JSON, XML, text, a urlencoded form, HL7 v2; no type: read as text by the JSON endpoints).
    Binary bodies (application/dicom, multipart/related of STOW-RS, octet-stream) hold NUL bytes by nature."""
    return (not mimetype or mimetype.startswith("text/") or mimetype.endswith(("json", "xml", "er7"))
            or mimetype in ("application/x-www-form-urlencoded", "application/hl7-v2"))


def refuse_nul_characters(request) -> None:
    """Refuse (400) a request whose path, query, form or text body holds a NUL character (U+0000, or ``\\u0000``
    in JSON): no text the engine keeps may hold one (PostgreSQL refuses it in every text column), so it is named
    here instead of failing as a 500 where it is stored or searched for. Binary bodies are left alone."""
    where = None
    if "\x00" in request.path:
        where = "the path"
    else:
        forms = request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data")
        for source, label in ((request.args, "query parameter"), (request.form if forms else None, "form field")):
            if source is None:
                continue
            for key, values in source.lists():
                if "\x00" in key or any("\x00" in v for v in values):
                    where = f"the {label} {key.replace(chr(0), '')[:40]!r}"
                    break
            if where:
                break
    if where is None and request.content_length and _textual(request.mimetype):
        body = request.get_data(cache=True)
        if b"\x00" in body or b"\\u0000" in body:
            where = "the body"
    if where is not None:
        raise BadRequest(f"{where} contains a NUL character (U+0000), which no value may hold")
