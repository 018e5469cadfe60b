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

C-STORE of a SOP Instance already archived, policy ``reject`` (setting dicom_resent_instance): ``Conflict`` ->
  0111 *Duplicate SOP Instance* (PS3.7 C.4 general status).

C-FIND / C-MOVE / C-GET, Query/Retrieve (PS3.4 C.4.1.1.4 Table C.4-1, C.4.2.1.5 Table C.4-2, C.4.3.1.4 Table C.4-3)
  - ``InvalidInput`` (bad Query/Retrieve Level, malformed key, retrieve without the unique key of its level)
    -> A900 *Identifier does not match SOP Class*; database unavailable -> A700; anything else -> C000;
  - an unknown Move Destination -> A801 (:data:`MOVE_DESTINATION_UNKNOWN`, answered by pynetdicom when the
    handler yields no address);
  - sub-operations: all failed -> A702, some failed -> B000 with the Failed SOP Instance UID List, counted by
    pynetdicom from the C-STORE responses.

N-ACTION, Storage Commitment Push Model (PS3.4 J.3.2.1.2; codes of PS3.7 C.4)
  - ``Unsupported`` (Action Type ID other than 1) -> 0123 *No such action type*;
  - ``InvalidInput`` with ``missing`` -> 0120; other ``InvalidInput`` -> 0106; anything else -> 0110.
  Per instance, in the Failed SOP Sequence of the N-EVENT-REPORT (PS3.4 J.3.3.1.1.2, Failure Reason (0008,1197)):
  not durably stored -> 0112 *No such object instance*; stored with another SOP Class -> 0119 *Class-instance
  conflict* (:func:`commitment_failure_reason`).

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

from app.errors import Conflict, DomainError, InvalidInput, NotFound, UnknownCode, Unsupported
from app.services.archive import CommitmentFailure
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
NO_SUCH_ACTION_TYPE = 0x0123
CLASS_INSTANCE_CONFLICT = 0x0119
MOVE_DESTINATION_UNKNOWN = 0xA801
UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
SUBOPERATIONS_WARNING = 0xB000
MAY_NO_LONGER_BE_UPDATED = 0xA710   # Error ID (0000,0903) with 0110, PS3.4 Table F.7.2-2
MAY_NO_LONGER_BE_UPDATED_COMMENT = "Performed Procedure Step Object may no longer be updated"

C_FIND, C_STORE, N_CREATE, N_SET = "C-FIND", "C-STORE", "N-CREATE", "N-SET"
C_MOVE, C_GET, N_ACTION = "C-MOVE", "C-GET", "N-ACTION"
_QUERY_RETRIEVE = (C_FIND, C_MOVE, C_GET)

_COMMITMENT_FAILURES = {
    CommitmentFailure.NOT_STORED: NO_SUCH_SOP_INSTANCE,
    CommitmentFailure.CLASS_CONFLICT: CLASS_INSTANCE_CONFLICT,
}


def commitment_failure_reason(reason: CommitmentFailure) -> int:
    """Failure Reason (0008,1197) of an instance that is not committed (PS3.4 J.3.3.1.1.2)."""
    return _COMMITMENT_FAILURES[reason]


def failure(code: int, comment: str, *, operation: str = "", offending: int | None = None,
            error_id: int | None = None) -> Dataset:
    """A status dataset; the Error Comment is cut to fit LO (64 characters, default repertoire)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = _comment(comment)
    if offending is not None and operation in (*_QUERY_RETRIEVE, C_STORE):
        status.OffendingElement = [offending]
    if error_id is not None:
        status.ErrorID = error_id
    return status


def from_error(exc: BaseException, operation: str) -> Dataset:
    """The status answering ``exc`` raised while serving ``operation`` (one of the operation names above)."""
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
    if operation in _QUERY_RETRIEVE:
        if isinstance(exc, (InvalidInput, UnknownCode)):
            return IDENTIFIER_DOES_NOT_MATCH, None, text
        return UNABLE_TO_PROCESS, None, f"unable to process: {type(exc).__name__}"
    if operation == C_STORE:
        if isinstance(exc, InvalidInput):
            return UNABLE_TO_PROCESS, None, text
        if isinstance(exc, Conflict) and exc.location in ("PatientID", "AccessionNumber", "SeriesInstanceUID"):
            return UNABLE_TO_PROCESS, None, text  # contradicts the archive (app.services.archive.check_identity)
        if isinstance(exc, Conflict):
            return DUPLICATE_SOP_INSTANCE, None, text
        return PROCESSING_FAILURE, None, f"processing failure: {type(exc).__name__}"
    if operation == N_ACTION and isinstance(exc, Unsupported):
        return NO_SUCH_ACTION_TYPE, None, text
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
