"""DICOM UID generation under the site's UID root (DICOM PS3.5 section 9: digits and dots, <= 64 chars)."""

from __future__ import annotations

import hashlib
import uuid


def derived_uid(root: str, *parts: str) -> str:
    """A UID derived deterministically from ``parts`` (the same order always gets the same UID).

    Used for a Study Instance UID that the order did not carry (BUG-03): re-sending the order
    yields the same UID, so a modality and the archive agree with the worklist.
    """
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    number = int.from_bytes(digest[:12], "big")
    uid = f"{root}.1.{number}"
    return uid[:64]


def new_uid(root: str) -> str:
    """A fresh unique UID (UUID-derived, as PS3.5 B.2 allows under any root)."""
    uid = f"{root}.2.{uuid.uuid4().int}"
    return uid[:64]
