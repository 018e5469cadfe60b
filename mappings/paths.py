"""HL7 v2 field paths in the standard's 1-based notation: ``PID-3``, ``PID-3[2].1``, ``ORC-7.4``,
``PID-3.4.1``, ``IPC-9[*]``.

``SEG-F`` means the first repetition, first component, first subcomponent of field F (HAPI
Terser semantics); ``[n]`` picks repetition n, ``[*]`` every repetition (for repeated fields such
as Scheduled Station AE Title, IPC-9). Segment names are three upper-case letters or digits
(Z-segments included). HL7 v2.5.1 section 2.5 defines the numbering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATH = re.compile(
    r"^(?P<seg>[A-Z][A-Z0-9]{2})-(?P<field>[1-9][0-9]{0,2})"
    r"(?:\[(?P<rep>\*|[1-9][0-9]{0,2})\])?"
    r"(?:\.(?P<comp>[1-9][0-9]{0,2})(?:\.(?P<sub>[1-9][0-9]{0,2}))?)?$"
)


class PathError(ValueError):
    pass


@dataclass(frozen=True)
class FieldPath:
    segment: str
    field: int
    rep: int | None = 1          # None: every repetition ([*])
    comp: int = 1
    sub: int = 1
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> "FieldPath":
        m = _PATH.match(text.strip())
        if not m:
            raise PathError(f"{text!r} is not an HL7 field path like PID-3, PID-3[2].1 or ORC-7.4")
        rep = m["rep"]
        return cls(
            segment=m["seg"], field=int(m["field"]),
            rep=None if rep == "*" else int(rep or 1),
            comp=int(m["comp"] or 1), sub=int(m["sub"] or 1), text=text.strip(),
        )

    @property
    def location(self) -> str:
        """The ERR-2 style location of this field: segment and field number."""
        return f"{self.segment}-{self.field}"

    def __str__(self) -> str:
        return self.text or f"{self.segment}-{self.field}.{self.comp}.{self.sub}"
