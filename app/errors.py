"""Domain errors of the RIS core.

Each edge translates these once: HL7 ACK code + ERR segment (MLLP), DICOM status (DIMSE),
OperationOutcome (FHIR), JSON problem document (REST). ``location`` names the domain field at fault with
the keys of the mapping profiles ("patient.id", "order.placer_order_number", "step.modality");
an edge turns it into its own vocabulary (the HL7 field the profile reads it from, e.g. PID-3),
so the sender can find it. Adapters that raise these errors themselves may give such a location
directly.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the core raises on purpose. ``retryable`` errors may succeed later."""

    retryable = False

    def __init__(self, message: str, *, location: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        return f"{self.message} ({self.location})" if self.location else self.message


class InvalidInput(DomainError):
    """A value is missing or malformed (HL7 table 0357 codes 101/102)."""

    def __init__(self, message: str, *, location: str | None = None, missing: bool = False):
        super().__init__(message, location=location)
        self.missing = missing


class UnknownCode(DomainError):
    """A coded value is not one the engine or the mapping profile knows (HL7 0357 code 103)."""


class NotFound(DomainError):
    """The thing a message refers to does not exist (e.g. cancel of an unknown order; 0357: 204)."""


class Conflict(DomainError):
    """The change would contradict the current state (duplicate key, invalid transition; 0357: 205)."""


class Unsupported(DomainError):
    """The engine does not handle this kind of input at all (HL7 0357 code 200/201)."""
