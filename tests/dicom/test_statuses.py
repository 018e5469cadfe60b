"""The one error -> DIMSE status table (interfaces.dicom.statuses), without sockets."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from app.errors import Conflict, InvalidInput, NotFound, Unsupported
from app.storage import StorageError
from interfaces.dicom import statuses as s


@pytest.mark.parametrize("exc, operation, code", [
    (InvalidInput("bad date", location="ScheduledProcedureStepStartDate"), s.C_FIND, 0xA900),
    (RuntimeError("boom"), s.C_FIND, 0xC000),
    (OperationalError("select", {}, Exception("locked")), s.C_FIND, 0xA700),
    (StorageError(28, "disk full"), s.C_STORE, 0xA700),
    (InvalidInput("StudyInstanceUID missing", missing=True), s.C_STORE, 0xC000),
    (RuntimeError("boom"), s.C_STORE, 0x0110),
    (Conflict("exists"), s.N_CREATE, 0x0111),
    (InvalidInput("status missing", missing=True), s.N_CREATE, 0x0120),
    (InvalidInput("status COMPLETED"), s.N_CREATE, 0x0106),
    (NotFound("no such step"), s.N_SET, 0x0112),
    (Conflict("final"), s.N_SET, 0x0110),
    (Unsupported("no"), s.N_SET, 0x0110),
])
def test_error_to_status(exc, operation, code):
    assert s.from_error(exc, operation).Status == code


def test_may_no_longer_be_updated_carries_error_id():
    status = s.from_error(Conflict("COMPLETED"), s.N_SET)
    assert (status.Status, status.ErrorID) == (0x0110, 0xA710)
    assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"


def test_offending_element_only_where_the_response_has_it():
    find = s.from_error(InvalidInput("x", location="ScheduledProcedureStepSequence.Modality"), s.C_FIND)
    assert find.OffendingElement == 0x00080060
    n_set = s.from_error(InvalidInput("x", location="PerformedProcedureStepEndDate"), s.N_SET)
    assert "OffendingElement" not in n_set


def test_error_comment_fits_lo_in_the_default_repertoire():
    status = s.failure(0xC000, "Ünïcode \\ and a very long explanation " * 4)
    assert len(status.ErrorComment) <= 64 and status.ErrorComment.isascii() and "\\" not in status.ErrorComment
