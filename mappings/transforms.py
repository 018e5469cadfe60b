"""The fixed registry of transforms a profile may name with ``as:``.

The registry is closed: an analyst combines these with the source options of a profile (``regex``
extract, ``table`` lookup, ``concat``) and a field's ``default``; nothing else runs.

A transform reads one HL7 field (through the message view and a path) and returns the domain
value. Leaf transforms work on the field's text; structured ones (person names, codes) read the
components themselves. Values that cannot be read are reported as warnings and give no value,
so a bad birth date never blocks an order (SOURCES.md: "store no DOB and warn").

Each transform produces one kind of value (:data:`PRODUCES`: text, a person name, a date, a time, a code, a
number of minutes); a profile may use it only for a value of that kind (mappings.targets).

Person names follow the profile's :class:`NamePolicy` (``person_names:``): which repetition of an XPN/XCN field
(by name type code), whether its ideographic and phonetic repetitions become DICOM component groups, and what
becomes of prefixes and degrees.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Callable, Protocol

from app.commands import CodeData
from app.vocabulary import MODALITIES
from mappings.targets import parse_codes, parse_minutes

HL7_NULL = '""'


class MessageView(Protocol):
    def value(self, seg: str, field: int, rep: int = 1, comp: int = 1, sub: int = 1, occurrence: int = 1) -> str: ...
    def values(self, seg: str, field: int, comp: int = 1, sub: int = 1, occurrence: int = 1) -> list[str]: ...


@dataclass(frozen=True)
class NamePolicy:
    """How an HL7 person name (XPN, or the name in an XCN) becomes a DICOM person name (PS3.5 6.2.1).

    ``types``: the name type codes (XPN-7 / XCN-10, HL7 table 0200: L legal, D display, ...) in order of
    preference: the name is taken from the repetitions of the first type the field has; none given, or none
    present: from the type of the first repetition. ``groups``: the repetitions of that type whose name
    representation code (XPN-8 / XCN-15, table 4000) is I (ideographic) or P (phonetic) become the second and
    third component groups (PS3.5 6.2.1.2), the alphabetic one (A or empty) the first. ``prefix``: keep or omit
    XPN-5 / XCN-6. ``degree``: omit XPN-6 / XCN-7, or append it to the suffix (PS3.5 6.2.1.1 keeps degrees in
    the suffix component)."""

    types: tuple[str, ...] = ()
    groups: bool = False
    prefix: str = "keep"          # keep | omit
    degree: str = "omit"          # omit | suffix


PREFIX_CHOICES = ("keep", "omit")
DEGREE_CHOICES = ("omit", "suffix")


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
    names: NamePolicy = NamePolicy()                          # the profile's person-name policy

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


# XPN and XCN component numbers (HL7 v2.5.1 2A.89 XPN, 2A.88 XCN): family, given, middle, suffix, prefix, degree,
# name type code, name representation code.
_XPN = (1, 2, 3, 4, 5, 6, 7, 8)
_XCN = (2, 3, 4, 5, 6, 7, 10, 15)


def _name(view: MessageView, path, occurrence: int, ctx: Context, comps: tuple[int, ...]) -> str:
    """The DICOM person name of an XPN/XCN field under the profile's :class:`NamePolicy`: one repetition (or
    the alphabetic, ideographic and phonetic repetitions of one name type as component groups)."""
    family, given, middle, suffix, prefix, degree, type_code, representation = comps
    policy = ctx.names
    get = lambda rep, comp: view.value(path.segment, path.field, rep, comp, 1, occurrence)  # noqa: E731
    if "[" in path.text:                  # the profile names the repetition: that one only
        reps = [path.rep or 1]
    else:
        count = len(view.values(path.segment, path.field, 1, 1, occurrence)) or 1
        reps = list(range(1, count + 1))
        types = [get(r, type_code).strip().upper() for r in reps]
        wanted = next((t for t in policy.types if t in types), types[0])
        reps = [r for r, t in zip(reps, types) if t == wanted]
    if get(reps[0], family) == HL7_NULL:
        return HL7_NULL

    def render(rep: int) -> str:
        sfx = _clean(get(rep, suffix))
        if policy.degree == "suffix" and _clean(get(rep, degree)):
            sfx = f"{sfx} {_clean(get(rep, degree))}".strip()
        pfx = get(rep, prefix) if policy.prefix == "keep" else ""
        return _pn(get(rep, family), get(rep, given), get(rep, middle), pfx, sfx)

    if not policy.groups:
        return render(reps[0])
    by_representation: dict[str, int] = {}
    for rep in reps:
        code = get(rep, representation).strip().upper()
        by_representation.setdefault("A" if code in ("", "A") else code, rep)
    groups = [render(by_representation[c]) if c in by_representation else "" for c in ("A", "I", "P")]
    return "=".join(groups).rstrip("=")


def person_name(view: MessageView, path, occurrence: int, ctx: Context) -> str:
    """HL7 XPN (family^given^middle^suffix^prefix^degree^type^representation) to a DICOM person name."""
    return _name(view, path, occurrence, ctx, _XPN)


def person_name_xcn(view: MessageView, path, occurrence: int, ctx: Context) -> str:
    """HL7 XCN (id^family^given^middle^suffix^prefix^degree^...^type^...^representation) to a DICOM person name."""
    return _name(view, path, occurrence, ctx, _XCN)


def code(view: MessageView, path, occurrence: int, ctx: Context):
    """An HL7 CE/CWE (identifier^text^name of coding system, HL7 v2.5.1 2A.8/2A.13) as a code: value, coding
    scheme designator and meaning (a DICOM code sequence item, PS3.3 8.8); empty without an identifier."""
    v = lambda comp: view.value(path.segment, path.field, path.rep or 1, comp, 1, occurrence).strip()  # noqa: E731
    if not v(1) or v(1) == HL7_NULL:
        return None
    return CodeData(v(1), v(3), v(2))


def code_text(value: str, ctx: Context):
    """A code written as text (a table cell): 'VALUE^MEANING^SCHEME', several separated by '~'."""
    codes = tuple(CodeData(*c) for c in parse_codes(value))
    return codes if len(codes) != 1 else codes[0]


def minutes(value: str, ctx: Context):
    """A duration in minutes ('15', '15 min', '1.5 h'); anything else: a warning and no value."""
    parsed = parse_minutes(value)
    if parsed is None and value.strip():
        ctx.warnings.append(f"duration {value!r} is not a number of minutes: ignored")
    return parsed


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
    "code": ("field", code),
    "minutes": ("leaf", minutes),
}

# What each transform gives: the kind of value (mappings.targets.Target.kind) it may be used for.
PRODUCES: dict[str, str] = {
    "text": "text", "trim": "text", "upper": "text", "sex": "text", "modality": "text", "date": "date",
    "datetime": "time", "person_name": "name", "person_name_xcn": "name", "code": "code", "minutes": "number",
}
# A field transform that also reads a code table's text (the codes of a table cell).
FROM_TEXT: dict[str, Callable] = {"code": code_text}
