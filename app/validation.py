"""Value limits of the domain, which are those of the DICOM attributes the values end up in
(PS3.5 6.2: SH 16 characters, LO 64, UI 64 digits and dots, AE 16, CS 16).

Identifiers that do not fit are refused (a truncated accession number would link the wrong
study); descriptive texts are shortened.
"""

from __future__ import annotations

import re

from app.errors import InvalidInput

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def identifier(value: str, limit: int, location: str) -> str:
    if len(value) > limit:
        raise InvalidInput(f"{location} {value!r} is longer than {limit} characters", location=location)
    if "\\" in value:
        raise InvalidInput(f"{location} {value!r} contains a backslash", location=location)
    return value


def uid(value: str, location: str) -> str:
    if value and (len(value) > 64 or not _UID.match(value)):
        raise InvalidInput(f"{location} {value!r} is not a DICOM UID (digits and dots, at most 64)",
                           location=location)
    return value


def clip(value: str, limit: int) -> str:
    return value[:limit]
