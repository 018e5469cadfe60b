"""Strict structure validation with hl7apy, for senders whose mapping profile asks for it
(``strict_structure: true``).

hl7apy knows the message structures of HL7 v2.1-2.8.2 (segment groups, required segments and
fields, data types), which our tokenizer deliberately does not. It costs 10-50 ms a message, so it
runs only when a profile asks. Known limit: hl7apy's ORM_O01 for v2.5+ requires an RQD segment
in the order detail group, which the standard makes a choice (OBR, RQD, RQ1, RXO, ODS, ODT):
strict validation is for senders whose messages follow hl7apy's reading of the standard.
"""

from __future__ import annotations

import re

from app.errors import InvalidInput

_SEGMENT = re.compile(r"\b([A-Z][A-Z0-9]{2})\b(?!.*\b[A-Z][A-Z0-9]{2}\b)")


class StructureError(InvalidInput):
    """The message does not have the structure its type requires (HL7 0357 code 100)."""


def validate_structure(text: str) -> None:
    """Raise StructureError naming the problem (and its segment when hl7apy names one)."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    message = text.replace("\r\n", "\r").replace("\n", "\r")
    try:
        parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
    except (HL7apyException, ValueError) as exc:
        detail = str(exc) or type(exc).__name__
        found = _SEGMENT.search(detail.rsplit(".", 1)[-1]) or _SEGMENT.search(detail)
        raise StructureError(f"strict structure validation (hl7apy): {detail}",
                           location=found.group(1) if found else None) from None
