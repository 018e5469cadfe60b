"""The fixed registry of transforms a profile may name with ``as:``.

The registry is closed: an analyst combines these with the source options of a profile (``regex``
extract, ``table`` lookup, ``concat``) and a field's ``default``; nothing else runs.

A transform reads one HL7 field (through the message view and a path) and returns the domain
value. Leaf transforms work on the field's text; structured ones (person names) read the
components themselves. Values that cannot be read are reported as warnings and give no value,
so a bad birth date never blocks an order (SOURCES.md: "store no DOB and warn").
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Callable, Protocol

from app.vocabulary import MODALITIES

HL7_NULL = '""'


class MessageView(Protocol):
    def value(self, seg: str, field: int, rep: int = 1, comp: int = 1, sub: int = 1, occurrence: int = 1) -> str: ...
    def values(self, seg: str, field: int, comp: int = 1, sub: int = 1, occurrence: int = 1) -> list[str]: ...


@dataclass
class Context:
    """What a transform may need besides the message (times, zones, the HL7 type parsers)."""

    received_at: dt.datetime                     # aware
    site_tz: dt.tzinfo
    message_tz: dt.tzinfo | None                 # MSH-7's offset: default zone of the message's times
    parse_dtm: Callable[[str, dt.tzinfo | None], dt.datetime | None]
    parse_date: Callable[[str], dt.date | None]
    warnings: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)   # domain key -> the field path that gave it

    def local_naive(self, value: dt.datetime) -> dt.datetime:
        """A time as the department's wall clock (DICOM times carry no zone)."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=self.message_tz or self.site_tz)
        return value.astimezone(self.site_tz).replace(tzinfo=None)


def _clean(text: str) -> str:
    return " ".join(text.replace("^", " ").replace("=", " ").replace("\\", " ").split())


def _pn(family: str, given: str, middle: str, prefix: str, suffix: str) -> str:
    """DICOM PS3.5 6.2.1 person name: family^given^middle^prefix^suffix, trailing empties dropped."""
    return "^".join(_clean(p) for p in (family, given, middle, prefix, suffix)).rstrip("^")


def person_name(view: MessageView, path, occurrence: int, ctx: Context) -> str:
    """HL7 XPN (family^given^middle^suffix^prefix) to a DICOM person name."""
    v = lambda comp: view.value(path.segment, path.field, path.rep or 1, comp, 1, occurrence)  # noqa: E731
    if v(1) == HL7_NULL:
        return HL7_NULL
    return _pn(v(1), v(2), v(3), v(5), v(4))


def person_name_xcn(view: MessageView, path, occurrence: int, ctx: Context) -> str:
    """HL7 XCN (id^family^given^middle^suffix^prefix) to a DICOM person name."""
    v = lambda comp: view.value(path.segment, path.field, path.rep or 1, comp, 1, occurrence)  # noqa: E731
    return _pn(v(2), v(3), v(4), v(6), v(5))


def text(value: str, ctx: Context) -> str:
    return value.strip()


def upper(value: str, ctx: Context) -> str:
    return value.strip().upper()


def date(value: str, ctx: Context):
    try:
        return ctx.parse_date(value.strip())
    except ValueError as exc:
        ctx.warnings.append(f"ignored date: {exc}")
        return None


def datetime_(value: str, ctx: Context):
    try:
        parsed = ctx.parse_dtm(value.strip(), None)
    except ValueError as exc:
        ctx.warnings.append(f"ignored time: {exc}")
        return None
    return ctx.local_naive(parsed) if parsed is not None else None


def modality(value: str, ctx: Context) -> str:
    """A DICOM modality (PS3.3 C.7.3.1.1.1); anything else gives no value, so the next source is tried."""
    code = value.strip().upper()
    if code in MODALITIES:
        return code
    ctx.warnings.append(f"{value!r} is not a DICOM modality: ignored")
    return ""


_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "U": ""}


def sex(value: str, ctx: Context) -> str:
    """HL7 table 0001 to DICOM Patient's Sex (M, F, O; unknown is empty)."""
    code = value.strip().upper()
    if code in _SEX:
        return _SEX[code]
    ctx.warnings.append(f"sex {value!r} is not in HL7 table 0001: left empty")
    return ""


# name -> (kind, function); "leaf" functions take the text, "field" functions read the components.
TRANSFORMS: dict[str, tuple[str, Callable]] = {
    "text": ("leaf", text),
    "trim": ("leaf", text),        # the same: every text is trimmed
    "upper": ("leaf", upper),
    "date": ("leaf", date),
    "datetime": ("leaf", datetime_),
    "sex": ("leaf", sex),
    "modality": ("leaf", modality),
    "person_name": ("field", person_name),
    "person_name_xcn": ("field", person_name_xcn),
}
