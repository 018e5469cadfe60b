"""Stopping the AE (SIGTERM) lets an association in progress finish its transfer (review finding 6)."""

from __future__ import annotations

import threading
import time

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom.sop_class import CTImageStorage, Verification

from interfaces.dicom import statuses
from interfaces.dicom.server import DicomServer
from tests.dicom.conftest import associate, scu


def test_stop_waits_for_an_open_association_and_refuses_new_ones(settings, session_factory, read_factory, store):
    server = DicomServer(settings, session_factory, read_factory, store)
    server.start()
    port = server.port
    assoc = associate(scu(CTImageStorage), port)
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 20})
    started = time.monotonic()
    stopper.start()
    try:
        time.sleep(0.5)  # stop() is now waiting for this association
        assert stopper.is_alive()
        late = scu(Verification).associate("127.0.0.1", port, ae_title="RIS")
        assert not late.is_established  # the listener is closed
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = generate_uid()
        assert assoc.send_c_store(ds).Status == statuses.SUCCESS  # the transfer in progress completes
    finally:
        assoc.release()
    stopper.join(20)
    assert not stopper.is_alive() and time.monotonic() - started < 15
