"""DICOM status codes of the engine's AE: the one place where errors become DIMSE statuses.

Every handler of this package answers success with :data:`SUCCESS` (or :data:`PENDING` per C-FIND match) and
turns an exception into a status dataset with :func:`from_error`, which pynetdicom copies into the response
(Status, Error Comment (0000,0902), Offending Element (0000,0901), Error ID (0000,0903)).

Choices, by operation (the status tables they come from):

C-FIND, Modality Worklist (PS3.4 K.4.1.1.4, Table K.4-1; the same codes as PS3.4 C.4.1.1.4 Table C.4-1)
  - ``InvalidInput`` -> A900 *Identifier does not match SOP Class*, with Offending Element and a comment.
    A matching key whose value is not a valid value of its VR (a date ``20201216,``, ``2020-12-16``) or that
    holds several values where the standard allows only list-of-UID matching (PS3.4 C.2.2.2: AccessionNumber
    ``A\\B``, BUG-22), or a sequence key with more than one item (C.2.2.2.6), makes the Identifier
    non-conformant to the Information Model: A900 names that precisely, is final, and is never "everything"
    (BUG-23). Cxxx *Unable to process* is kept for faults of the engine itself.
  - database unavailable (``OperationalError``) -> A700 *Refused: out of resources*; anything else -> C000.

C-STORE (PS3.4 B.2.3, Table B.2-1)
  - ``StorageError`` (disk full, folder not writable) and database unavailable -> A700 *Refused: out of
    resources* (the modality keeps the image and retries);
  - ``InvalidInput`` (data set unreadable, Study/Series/SOP Instance UID missing) -> C000 *Cannot understand*
    with the problem in the Error Comment;
  - anything else -> 0110 *Processing failure* (PS3.7 C.4 general status).

N-CREATE / N-SET, Modality Performed Procedure Step (PS3.4 F.7.2.1.2 and F.7.2.2.2; codes of PS3.7 C.4)
  - N-CREATE ``Conflict`` (the SOP Instance exists) -> 0111 *Duplicate SOP Instance*;
  - N-SET ``NotFound`` -> 0112 *No such SOP Instance*;
  - N-SET ``Conflict`` (the step is COMPLETED/DISCONTINUED) -> 0110 *Processing failure* with Error Comment
    "Performed Procedure Step Object may no longer be updated" and Error ID A710: PS3.4 Table F.7.2-2
    (N-SET status, F.7.2.2.4 in recent editions). A710 is an Error ID, not a status code;
  - ``InvalidInput`` with ``missing`` -> 0120 *Missing attribute*; other ``InvalidInput``/``UnknownCode`` ->
    0106 *Invalid attribute value*; anything else -> 0110 *Processing failure*.
"""

from __future__ import annotations

import logging

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from sqlalchemy.exc import OperationalError

from app.errors import Conflict, DomainError, InvalidInput, NotFound, UnknownCode
from app.storage import StorageError

log = logging.getLogger(__name__)

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00

OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000          # C-FIND "Unable to process" / C-STORE "Cannot understand"
PROCESSING_FAILURE = 0x0110
INVALID_ATTRIBUTE_VALUE = 0x0106
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MAY_NO_LONGER_BE_UPDATED = 0xA710   # Error ID (0000,0903) with 0110, PS3.4 Table F.7.2-2
MAY_NO_LONGER_BE_UPDATED_COMMENT = "Performed Procedure Step Object may no longer be updated"

C_FIND, C_STORE, N_CREATE, N_SET = "C-FIND", "C-STORE", "N-CREATE", "N-SET"


def failure(code: int, comment: str, *, operation: str = "", offending: int | None = None,
            error_id: int | None = None) -> Dataset:
    """A status dataset; the Error Comment is cut to fit LO (64 characters, default repertoire)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = _comment(comment)
    if offending is not None and operation in (C_FIND, C_STORE):
        status.OffendingElement = [offending]
    if error_id is not None:
        status.ErrorID = error_id
    return status


def from_error(exc: BaseException, operation: str) -> Dataset:
    """The status answering ``exc`` raised while serving ``operation`` (C-FIND, C-STORE, N-CREATE, N-SET)."""
    code, error_id, comment = _classify(exc, operation)
    if code in (PROCESSING_FAILURE, UNABLE_TO_PROCESS) and not isinstance(exc, DomainError):
        log.exception("%s failed", operation, exc_info=exc)
    else:
        log.warning("%s refused with 0x%04X: %s", operation, code, comment)
    return failure(code, comment, operation=operation, offending=_offending(exc), error_id=error_id)


def _classify(exc: BaseException, operation: str) -> tuple[int, int | None, str]:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (StorageError, OperationalError)):
        return OUT_OF_RESOURCES, None, text if isinstance(exc, StorageError) else "database unavailable"
    if operation == C_FIND:
        if isinstance(exc, (InvalidInput, UnknownCode)):
            return IDENTIFIER_DOES_NOT_MATCH, None, text
        return UNABLE_TO_PROCESS, None, f"unable to process: {type(exc).__name__}"
    if operation == C_STORE:
        if isinstance(exc, InvalidInput):
            return UNABLE_TO_PROCESS, None, text
        return PROCESSING_FAILURE, None, f"processing failure: {type(exc).__name__}"
    if isinstance(exc, InvalidInput):
        return (MISSING_ATTRIBUTE if exc.missing else INVALID_ATTRIBUTE_VALUE), None, text
    if isinstance(exc, UnknownCode):
        return INVALID_ATTRIBUTE_VALUE, None, text
    if operation == N_CREATE and isinstance(exc, Conflict):
        return DUPLICATE_SOP_INSTANCE, None, "Performed Procedure Step SOP Instance already exists"
    if operation == N_SET and isinstance(exc, NotFound):
        return NO_SUCH_SOP_INSTANCE, None, "no such Performed Procedure Step SOP Instance"
    if operation == N_SET and isinstance(exc, Conflict):
        return PROCESSING_FAILURE, MAY_NO_LONGER_BE_UPDATED, MAY_NO_LONGER_BE_UPDATED_COMMENT
    if isinstance(exc, DomainError):
        return PROCESSING_FAILURE, None, text
    return PROCESSING_FAILURE, None, f"processing failure: {type(exc).__name__}"


def _offending(exc: BaseException) -> int | None:
    """The tag named by a domain error's location when it is a DICOM keyword (adapters set those)."""
    location = getattr(exc, "location", None) or ""
    return tag_for_keyword(location.rsplit(".", 1)[-1]) if location else None


def _comment(text: str) -> str:
    ascii_text = text.encode("ascii", "replace").decode("ascii").replace("\\", "/")
    return ascii_text[:64]
