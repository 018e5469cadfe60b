"""The standard's names of a message's fields, for the analyst tools (``ris mapping test``).

hl7apy carries the HL7 v2 reference (v2.1-2.8.2): each segment's fields with their data type and
long name (HL7 v2.5.1 chapter 2.15 onwards defines them segment by segment). Our tokenizer reads
the values; hl7apy only names them. A version hl7apy does not know is named as v2.5.1; a segment it
does not know (Z-segments) keeps its fields unnamed.
"""

from __future__ import annotations

import functools

from interfaces.hl7.tokenizer import Message

FALLBACK_VERSION = "2.5.1"


@functools.lru_cache(maxsize=256)
def segment_fields(segment: str, version: str) -> dict[int, tuple[str, str]]:
    """{field number: (long name, data type)} of ``segment`` in HL7 ``version``; {} when unknown."""
    from hl7apy import load_reference
    from hl7apy.exceptions import ChildNotFound, UnsupportedVersion

    try:
        reference = load_reference(segment, "Segment", version)
    except UnsupportedVersion:
        return segment_fields(segment, FALLBACK_VERSION) if version != FALLBACK_VERSION else {}
    except (ChildNotFound, KeyError, ValueError):
        return {}
    fields = {}
    for name, spec, *_ in reference[1]:
        number = int(name.rsplit("_", 1)[1])
        fields[number] = (spec[3].replace("_", " ").title(), spec[2])
    return fields


def describe_fields(msg: Message) -> list[dict]:
    """Every non-empty field of ``msg``: its path (``PID-3``, ``OBR[2]-4`` for the second OBR), the
    standard's name and data type, and the value as sent."""
    version = msg.version or FALLBACK_VERSION
    seen: dict[str, int] = {}
    out = []
    for segment in msg.segments:
        seen[segment.name] = seen.get(segment.name, 0) + 1
        label = segment.name if seen[segment.name] == 1 else f"{segment.name}[{seen[segment.name]}]"
        names = segment_fields(segment.name, version)
        for number in range(1, segment.field_count + 1):
            value = segment.raw(number)
            if not value:
                continue
            name, data_type = names.get(number, ("", ""))
            out.append({"path": f"{label}-{number}", "name": name, "type": data_type, "value": value})
    return out
