"""interfaces.dicom.pynetdicom_tuning: the one-go PDU reader on a real socket pair, and a store whose association
loops are woken (the other DICOM tests run every service with both fixes installed)."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pynetdicom
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import transport
from pynetdicom.sop_class import CTImageStorage

from interfaces.dicom import pynetdicom_tuning
from tests.dicom.conftest import associate, scu


def test_reader_gets_every_byte_however_the_sender_splits_them():
    left, right = socket.socketpair()
    payload = bytes(range(256)) * 2048                       # 512 kB
    pieces = [payload[i:i + 7001] for i in range(0, len(payload), 7001)]

    def send():
        for piece in pieces:
            right.sendall(piece)
            time.sleep(0.0005 if len(pieces) < 200 else 0)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        got = pynetdicom_tuning._recv(SimpleNamespace(socket=left), len(payload))
    finally:
        sender.join(timeout=30)
    assert isinstance(got, bytearray) and bytes(got) == payload
    right.sendall(b"abc")
    right.close()                                            # broken connection: what was read so far
    assert pynetdicom_tuning._recv(SimpleNamespace(socket=left), 10) == bytearray(b"abc")
    left.close()


def test_installed_for_the_version_it_was_written_for(server):
    assert pynetdicom.__version__ in pynetdicom_tuning.SUPPORTED
    assert transport.AssociationSocket.recv is pynetdicom_tuning._recv
    assoc = associate(scu(CTImageStorage), server.port)
    try:
        for _ in range(3):      # several requests on one association: each answered (the loops wake up)
            assert assoc.send_c_store(dcmread(get_testdata_file("CT_small.dcm"))).Status == 0x0000
    finally:
        assoc.release()
    assert assoc.is_released
