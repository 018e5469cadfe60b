"""Storage Commitment Push Model over loopback (PS3.4 Annex J; IHE RAD-10): a pynetdicom requester receives the
N-EVENT-REPORT on its own association, or on a new one to its configured address. (Debian's DCMTK has no storage
commitment tool.)"""

from __future__ import annotations

import dataclasses
import queue

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, StorageCommitmentPushModel
from sqlalchemy import select

from app.db import unit_of_work
from app.models import Instance
from interfaces.dicom import statuses
from interfaces.dicom.commitment import WELL_KNOWN_INSTANCE
from interfaces.dicom.server import DicomServer
from tests.dicom.conftest import archive_datasets, free_port, nodelay, scu

REPORT_WAIT = 30   # seconds a test waits for one N-EVENT-REPORT


def _ct(**changes) -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def request(*references: tuple[str, str], transaction: str | None = None) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction or generate_uid()
    items = []
    for sop_class, uid in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def _collector(answer: int = 0x0000):
    got: queue.Queue = queue.Queue()

    def on_report(event):
        got.put((event.assoc.is_requestor, event.event_type, event.event_information))
        return answer, None

    return got, on_report


def _requester(port: int, title: str, on_report):
    ae = scu(StorageCommitmentPushModel, ae_title=title)
    handlers = [(evt.EVT_CONN_OPEN, nodelay)]
    if on_report is not None:
        handlers.append((evt.EVT_N_EVENT_REPORT, on_report))
    assoc = ae.associate("127.0.0.1", port, ae_title="RIS", evt_handlers=handlers)
    assert assoc.is_established
    return assoc


def test_report_on_the_same_association(server, store, session_factory):
    kept, gone = _ct(), _ct()
    archive_datasets(server.port, kept, gone)
    with unit_of_work(session_factory) as session:
        path = session.scalars(select(Instance.path).where(Instance.sop_instance_uid == gone.SOPInstanceUID)).one()
    store.absolute(path).unlink()                              # indexed, but its file is gone: not durable
    never = generate_uid()
    rq = request((CTImageStorage, kept.SOPInstanceUID), (CTImageStorage, gone.SOPInstanceUID),
                 (CTImageStorage, never), (MRImageStorage, kept.SOPInstanceUID))

    got, on_report = _collector()
    assoc = _requester(server.port, "MODALITY1", on_report)
    try:
        status, _ = assoc.send_n_action(rq, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        assert status.Status == statuses.SUCCESS
        on_requestor, event_type, info = got.get(timeout=REPORT_WAIT)
    finally:
        assoc.release()
    assert on_requestor                                        # the requester's own association
    assert event_type == 2                                     # some instances failed (PS3.4 Table J.3-2)
    assert info.TransactionUID == rq.TransactionUID and info.RetrieveAETitle == "RIS"
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence] == [
        (CTImageStorage, kept.SOPInstanceUID)]
    assert {(i.ReferencedSOPInstanceUID, i.ReferencedSOPClassUID, i.FailureReason) for i in info.FailedSOPSequence} == {
        (gone.SOPInstanceUID, CTImageStorage, statuses.NO_SUCH_SOP_INSTANCE),
        (never, CTImageStorage, statuses.NO_SUCH_SOP_INSTANCE),
        (kept.SOPInstanceUID, MRImageStorage, statuses.CLASS_INSTANCE_CONFLICT),
    }


def test_all_committed_is_event_type_1(server):
    images = [_ct(), _ct()]
    archive_datasets(server.port, *images)
    got, on_report = _collector()
    assoc = _requester(server.port, "MODALITY1", on_report)
    try:
        rq = request(*[(CTImageStorage, ds.SOPInstanceUID) for ds in images])
        assert assoc.send_n_action(rq, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)[0].Status == 0
        _, event_type, info = got.get(timeout=REPORT_WAIT)
    finally:
        assoc.release()
    assert event_type == 1 and "FailedSOPSequence" not in info
    assert len(info.ReferencedSOPSequence) == 2


@pytest.fixture
def listener():
    """The requester's own SCP (AE REQUESTER) on a free loopback port, taking reports on new associations."""
    got, on_report = _collector()
    ae = AE(ae_title="REQUESTER")
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    port = free_port()
    srv = ae.start_server(("127.0.0.1", port), block=False,
                          evt_handlers=[(evt.EVT_CONN_OPEN, nodelay), (evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        yield port, got
    finally:
        srv.shutdown()


@pytest.fixture
def sc_server(settings, session_factory, read_factory, store, listener):
    srv = DicomServer(dataclasses.replace(settings, dicom_known_aes=(f"REQUESTER=127.0.0.1:{listener[0]}",)),
                      session_factory, read_factory, store)
    srv.start()
    yield srv
    srv.stop()


def test_report_on_a_new_association_when_the_request_association_cannot_take_it(sc_server, listener):
    """The request association answers the report with a failure (no handler bound): the engine opens a new
    association to the requester's configured address, with the SCP role, and sends it there."""
    _, on_new = listener
    image = _ct()
    archive_datasets(sc_server.port, image)
    assoc = _requester(sc_server.port, "REQUESTER", None)
    try:
        rq = request((CTImageStorage, image.SOPInstanceUID))
        assert assoc.send_n_action(rq, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)[0].Status == 0
        on_requestor, event_type, info = on_new.get(timeout=REPORT_WAIT)
    finally:
        assoc.release()
    assert not on_requestor                                    # it came in on the listener (acceptor side)
    assert event_type == 1 and info.TransactionUID == rq.TransactionUID
    assert on_new.empty()


def test_report_after_the_requester_released(sc_server, listener):
    """A requester that releases as soon as the N-ACTION is answered gets its report on a new association."""
    _, on_new = listener
    image = _ct()
    archive_datasets(sc_server.port, image)
    assoc = _requester(sc_server.port, "REQUESTER", None)
    rq = request((CTImageStorage, image.SOPInstanceUID))
    assert assoc.send_n_action(rq, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)[0].Status == 0
    assoc.release()
    on_requestor, event_type, info = on_new.get(timeout=REPORT_WAIT)
    assert not on_requestor and event_type == 1 and info.TransactionUID == rq.TransactionUID
    sc_server.commitment.shutdown()                           # every report sent: exactly one arrived
    assert on_new.empty()


def _without_transaction() -> Dataset:
    ds = request((CTImageStorage, "1.2.3"))
    del ds.TransactionUID
    return ds


@pytest.mark.parametrize("action_type, dataset, expected", [
    (2, request((CTImageStorage, "1.2.3")), statuses.NO_SUCH_ACTION_TYPE),
    (1, _without_transaction(), statuses.MISSING_ATTRIBUTE),
    (1, request(), statuses.MISSING_ATTRIBUTE),                    # no Referenced SOP Sequence items
])
def test_malformed_request_refused(server, action_type, dataset, expected):
    assoc = _requester(server.port, "MODALITY1", _collector()[1])
    try:
        status, _ = assoc.send_n_action(dataset, action_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
    finally:
        assoc.release()
    assert status.Status == expected
