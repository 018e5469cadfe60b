"""The HL7 v2 segment definitions that a profile's field paths are checked against (hl7apy's reference).

HL7 v2.5.1 defines every segment's fields with their data types (chapters 3-17, e.g. PID in 3.4.2) and every
composite data type's components and subcomponents (chapter 2A, e.g. CE, CX, XPN). A path names positions in
that structure: ``OBR-4.2`` is field 4 of OBR (Universal Service Identifier, CE) and its 2nd component (CE-2
Text); ``PID-3.4.1`` the 1st subcomponent (HD-1 Namespace ID) of the 4th component of PID-3 (CX-4 Assigning
Authority). A path beyond the segment's fields (``PID-99``), a data type's components (``OBR-4.99``) or a
segment the version does not define (``XYZ-1``) cannot exist and is refused when a profile is loaded.

Z-segments (HL7 v2.5.1 2.1.6: locally defined, names beginning with Z) are not in the standard; a profile
declares those its sender uses with their number of fields (``z_segments: {ZDS: 1}``), and their fields'
components are not checked.

Repetitions are not checked: senders repeat fields the standard does not repeat (dcm4che sends several
Scheduled Station AE Titles in IPC-9), so ``[n]`` and ``[*]`` are left to the message.

The definitions are read with hl7apy (it carries HL7 v2.1 to v2.8.2) once per segment and version, when a
profile is loaded; mapping a message never touches them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

DEFAULT_VERSION = "2.5.1"
Z_SEGMENT = re.compile(r"^Z[A-Z0-9]{2}$")


@dataclass(frozen=True)
class Component:
    name: str            # "Text"
    datatype: str        # "ST"
    subcomponents: int   # 0: a primitive component


@dataclass(frozen=True)
class FieldDef:
    number: int
    name: str                            # "Universal Service Identifier"
    datatype: str                        # "CE"
    components: tuple[Component, ...]    # empty: a primitive field


def _title(name: str) -> str:
    return name.replace("_", " ").title()


def versions() -> tuple[str, ...]:
    """The HL7 versions whose definitions are known ("2.1" ... "2.8.2")."""
    from hl7apy import SUPPORTED_LIBRARIES

    return tuple(sorted(SUPPORTED_LIBRARIES, key=lambda v: tuple(int(p) for p in v.split("."))))


@functools.lru_cache(maxsize=512)
def segment(name: str, version: str = DEFAULT_VERSION) -> tuple[FieldDef, ...] | None:
    """The fields of segment ``name`` in HL7 ``version``; None when the version defines no such segment."""
    from hl7apy import load_reference
    from hl7apy.exceptions import ChildNotFound

    try:
        reference = load_reference(name, "Segment", version)
    except (ChildNotFound, KeyError, ValueError):
        return None
    fields = []
    for field_name, spec, *_ in reference[1]:
        children = spec[1] or ()
        components = tuple(Component(_title(c[1][3] or c[0]), c[1][2] or "", len(c[1][1] or ())) for c in children)
        fields.append(FieldDef(int(field_name.rsplit("_", 1)[1]), _title(spec[3] or field_name), spec[2] or "",
                               components))
    return tuple(fields)


def check_path(seg: str, field: int, comp: int, sub: int, *, version: str = DEFAULT_VERSION,
               z_segments: dict[str, int] | None = None) -> str | None:
    """Why ``SEG-field.comp.sub`` cannot exist in HL7 ``version`` (a text for the analyst), or None when it can."""
    z_segments = z_segments or {}
    if seg in z_segments:
        count = z_segments[seg]
        if field > count:
            return f"{seg} is declared with {count} field{'s' if count != 1 else ''} (z_segments), so {seg}-{field} " \
                   f"cannot exist"
        return None
    if Z_SEGMENT.match(seg):
        return f"{seg} is a Z-segment: declare it with its number of fields under z_segments (e.g. {seg}: 1)"
    fields = segment(seg, version)
    if fields is None:
        return f"{seg} is not a segment of HL7 v{version} (a sender's own segment is a Z-segment, declared " \
               f"under z_segments)"
    if field > len(fields):
        return f"{seg} has {len(fields)} fields in HL7 v{version}, so {seg}-{field} cannot exist"
    definition = fields[field - 1]
    label = f"{seg}-{field} ({definition.name}, {definition.datatype})"
    if not definition.components:
        if comp > 1 or sub > 1:
            return f"{label} has no components in HL7 v{version}"
        return None
    if comp > len(definition.components):
        return f"{label} has {len(definition.components)} components in HL7 v{version}, so " \
               f"{seg}-{field}.{comp} cannot exist"
    component = definition.components[comp - 1]
    if sub > max(component.subcomponents, 1):
        what = f"{label} component {comp} ({component.name}, {component.datatype})"
        if not component.subcomponents:
            return f"{what} has no subcomponents in HL7 v{version}"
        return f"{what} has {component.subcomponents} subcomponents in HL7 v{version}"
    return None
