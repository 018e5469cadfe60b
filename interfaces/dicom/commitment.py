"""Storage Commitment Push Model SCP: N-ACTION, then N-EVENT-REPORT (DICOM PS3.4 Annex J; IHE RAD-10).

N-ACTION (PS3.4 J.3.2), Action Type ID 1 "Request Storage Commitment", on the well-known SOP Instance
1.2.840.10008.1.20.1.1: the request (Transaction UID, Referenced SOP Sequence) is checked and answered at once;
the commitment itself is reported afterwards by N-EVENT-REPORT (J.3.3), Event Type ID 1 when every instance is
committed, 2 when some are not, with the committed instances in the Referenced SOP Sequence and the others in
the Failed SOP Sequence with a Failure Reason (interfaces.dicom.statuses: 0112 when not durably stored, 0119 when
archived with another SOP Class).

An instance is committed only when it is durably stored: indexed, and its file present with the indexed size
(app.services.archive.check_commitment; C-STORE answers success only once both are durable). The report is
evaluated when it is sent, after the N-ACTION response.

Where the report goes (J.3.3): on the same association when it is still open (and no release or abort is
pending :data:`RELEASE_GRACE` after the N-ACTION response) and the requester answers it with Success within
:data:`SAME_ASSOCIATION_TIMEOUT`; otherwise (released, aborted, no answer or a failure answer) on a new association to the requester's
address in the known-AE table (setting dicom_known_aes), proposing the Storage Commitment Push Model with the
SCP role (SCP/SCU Role Selection, PS3.7 D.3.3.4), tried up to :data:`NEW_ASSOCIATION_ATTEMPTS` times. Reports are
sent by a small thread pool of the server; a pending report does not survive a restart of the engine (the
requester then times out and asks again, as J.3.3 allows).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Iterator
from concurrent.futures import ThreadPoolExecutor

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import build_context, build_role, evt
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE
from pynetdicom.sop_class import StorageCommitmentPushModel

from app.db import unit_of_work
from app.errors import InvalidInput, Unsupported
from app.services.archive import CommitmentResult, check_commitment
from app.storage import ArchiveStore
from interfaces.dicom import statuses
from interfaces.dicom.matching import uid_list
from interfaces.dicom.network import KnownAE, set_tcp_nodelay
from interfaces.dicom.values import text

log = logging.getLogger(__name__)

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"   # Storage Commitment Push Model SOP Instance (PS3.4 J.3.5)
REQUEST_STORAGE_COMMITMENT = 1                  # Action Type ID, PS3.4 Table J.3-1
ALL_COMMITTED, SOME_FAILED = 1, 2               # Event Type ID, PS3.4 Table J.3-2
NEW_ASSOCIATION_ATTEMPTS = 3
RETRY_DELAY = 1.0                               # seconds, doubled after each failed attempt
SAME_ASSOCIATION_TIMEOUT = 10.0                 # seconds to wait for the answer on the request's association
RELEASE_GRACE = 0.2                             # seconds given to a requester to release before the report


@contextlib.contextmanager
def _reactor_paused(assoc) -> Iterator[bool]:
    """Hold the association's reactor between DIMSE messages and tell whether a report may be sent now: the
    association is established and the peer has not asked to release or abort it (a queued A-RELEASE-RQ is
    peeked, not consumed). pynetdicom's send_* methods pause the reactor the same way (``_reactor_checkpoint``,
    ``_is_paused``, pynetdicom 2-3), but only after checking the state, so a release arriving meanwhile would
    get an N-EVENT-REPORT sent into it; holding the reactor first closes that window. The reactor is held at
    most :data:`PAUSE_WAIT` seconds."""
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if checkpoint is None or not hasattr(assoc, "_is_paused"):
        yield assoc.is_established
        return
    checkpoint.clear()
    try:
        deadline = time.monotonic() + PAUSE_WAIT
        while not assoc._is_paused and assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.001)
        pending = assoc.dul.peek_next_pdu() if assoc.is_established else None
        yield (assoc.is_established and assoc._is_paused
               and not isinstance(pending, (A_RELEASE, A_ABORT, A_P_ABORT)))
    finally:
        checkpoint.set()


PAUSE_WAIT = 5.0


def read_request(event) -> tuple[str, list[tuple[str, str]]]:
    """(Transaction UID, [(SOP Class UID, SOP Instance UID)]) of an N-ACTION request (PS3.4 J.3.2.1.1)."""
    if event.action_type != REQUEST_STORAGE_COMMITMENT:
        raise Unsupported(f"Action Type ID {event.action_type}: only 1 (Request Storage Commitment)")
    ds = event.action_information
    transaction = uid_list(ds, "TransactionUID")
    if not transaction or len(transaction) != 1:
        raise InvalidInput("TransactionUID (0008,1195) missing", location="TransactionUID", missing=True)
    items = ds.get("ReferencedSOPSequence") or []
    if not items:
        raise InvalidInput("ReferencedSOPSequence (0008,1199) missing or empty", location="ReferencedSOPSequence",
                           missing=True)
    references = []
    for item in items:
        sop_class, sop_uid = text(item, "ReferencedSOPClassUID"), text(item, "ReferencedSOPInstanceUID")
        if not sop_class or not sop_uid:
            raise InvalidInput("a Referenced SOP Sequence item lacks its SOP Class or Instance UID",
                               location="ReferencedSOPSequence", missing=True)
        references.append((sop_class, sop_uid))
    return transaction[0], references


def event_report(transaction_uid: str, result: CommitmentResult, retrieve_aet: str) -> tuple[int, Dataset]:
    """(Event Type ID, Event Information) of the N-EVENT-REPORT (PS3.4 J.3.3.1.1)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.RetrieveAETitle = retrieve_aet
    if result.committed:
        ds.ReferencedSOPSequence = Sequence([_reference(c, u) for c, u in result.committed])
    if result.failed:
        items = []
        for sop_class, uid, reason in result.failed:
            item = _reference(sop_class, uid)
            item.FailureReason = statuses.commitment_failure_reason(reason)
            items.append(item)
        ds.FailedSOPSequence = Sequence(items)
    return (SOME_FAILED if result.failed else ALL_COMMITTED), ds


def _reference(sop_class: str, uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    return item


class CommitmentReporter:
    """Evaluates commitment requests and sends their N-EVENT-REPORTs from its own threads."""

    def __init__(self, ae, settings, read_factory, store: ArchiveStore, requesters: dict[str, KnownAE],
                 workers: int = 4):
        self.ae = ae
        self.settings = settings
        self.read_factory = read_factory
        self.store = store
        self.requesters = requesters
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stgcmt")

    def submit(self, assoc, requester: str, transaction_uid: str, references: list[tuple[str, str]]):
        return self._pool.submit(self._report, assoc, requester, transaction_uid, references)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _report(self, assoc, requester: str, transaction_uid: str, references: list[tuple[str, str]]) -> str:
        """Send one report; returns how it went ("same", "new" or "undelivered")."""
        try:
            with unit_of_work(self.read_factory) as session:
                result = check_commitment(session, self.store, references)
            event_type, info = event_report(transaction_uid, result, self.settings.dicom_aet)
        except Exception:  # noqa: BLE001 - the requester will time out and ask again
            log.exception("storage commitment %s could not be evaluated", transaction_uid)
            return "undelivered"
        log.info("storage commitment %s for %s: %d committed, %d failed", transaction_uid, requester,
                 len(result.committed), len(result.failed))
        time.sleep(RELEASE_GRACE)   # a requester that releases at once has its A-RELEASE-RQ queued by now
        if self._send(assoc, event_type, info, timeout=SAME_ASSOCIATION_TIMEOUT):
            return "same"
        return "new" if self._send_on_new_association(requester, event_type, info) else "undelivered"

    @staticmethod
    def _send(assoc, event_type: int, info: Dataset, *, timeout: float | None = None) -> bool:
        """Send on ``assoc``; True when the requester answered Success (within ``timeout`` if given)."""
        with _reactor_paused(assoc) as usable:
            if not usable:
                return False
            saved = assoc.dimse_timeout
            if timeout is not None:
                assoc.dimse_timeout = timeout
            try:
                status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                                      WELL_KNOWN_INSTANCE)
            except Exception as exc:  # noqa: BLE001 - released or aborted meanwhile, no usable context...
                log.info("N-EVENT-REPORT not sent on the request's association: %s", exc)
                return False
            finally:
                assoc.dimse_timeout = saved
        ok = status is not None and status.get("Status") == statuses.SUCCESS
        if not ok:
            log.info("N-EVENT-REPORT on the request's association answered %s",
                     f"0x{status.Status:04X}" if status is not None and "Status" in status else "nothing")
        return ok

    def _send_on_new_association(self, requester: str, event_type: int, info: Dataset) -> bool:
        known = self.requesters.get(requester)
        if known is None:
            log.error("storage commitment report for %r undelivered: not a known AE (RIS_DICOM_KNOWN_AES)",
                      requester)
            return False
        delay = RETRY_DELAY
        for attempt in range(1, NEW_ASSOCIATION_ATTEMPTS + 1):
            assoc = self.ae.associate(known.host, known.port, ae_title=known.ae_title,
                                      contexts=[build_context(StorageCommitmentPushModel)],
                                      ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)],
                                      evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)])
            if assoc.is_established:
                try:
                    if self._send(assoc, event_type, info):
                        return True
                finally:
                    if assoc.is_established:
                        assoc.release()
            log.warning("storage commitment report to %s at %s:%d: attempt %d failed", requester, known.host,
                        known.port, attempt)
            if attempt < NEW_ASSOCIATION_ATTEMPTS:
                time.sleep(delay)
                delay *= 2
        log.error("storage commitment report to %s undelivered after %d attempts", requester,
                  NEW_ASSOCIATION_ATTEMPTS)
        return False


def handle_n_action(event, reporter: CommitmentReporter) -> tuple:
    """EVT_N_ACTION: accept a commitment request (RAD-10); the result follows by N-EVENT-REPORT."""
    try:
        transaction_uid, references = read_request(event)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        return statuses.from_error(exc, statuses.N_ACTION), None
    requester = (event.assoc.requestor.ae_title or "").strip()
    reporter.submit(event.assoc, requester, transaction_uid, references)
    log.info("storage commitment %s requested by %s for %d instances", transaction_uid, requester,
             len(references))
    return statuses.SUCCESS, None


def bind(reporter: CommitmentReporter):
    return functools.partial(handle_n_action, reporter=reporter)
