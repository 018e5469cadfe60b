"""The AE itself: port 0, contexts, TCP_NODELAY on accepted sockets, C-ECHO from DCMTK and pynetdicom."""

from __future__ import annotations

import socket
import subprocess

import pytest
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import CTImageStorage, Verification

from interfaces.dicom import statuses
from interfaces.dicom.server import LISTEN_BACKLOG, STORAGE_TRANSFER_SYNTAXES, DicomServer
from tests.dicom.conftest import associate, run_dcmtk, scu


def test_port_zero_binds_a_free_port(server, settings):
    assert settings.dicom_port == 0 and server.port > 0
    assert server.ae.maximum_associations == settings.dicom_max_associations
    assert server.ae.ae_title == settings.dicom_aet


def test_every_storage_class_with_every_transfer_syntax(server):
    supported = {cx.abstract_syntax: cx.transfer_syntax for cx in server.ae.supported_contexts}
    assert len(supported) >= len(AllStoragePresentationContexts) + 3      # + echo, worklist, MPPS
    for cx in AllStoragePresentationContexts:
        assert supported[cx.abstract_syntax] == STORAGE_TRANSFER_SYNTAXES


def test_the_listen_backlog_takes_a_burst_of_modalities(server):
    """The kernel keeps LISTEN_BACKLOG connections waiting for accept (socketserver's 5 dropped a burst's SYNs).
    ss shows a listening socket's backlog as its Send-Q."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.strip().splitlines()
    assert int(line.split()[2]) == LISTEN_BACKLOG == 128


@pytest.mark.parametrize("check, accepted", [(False, True), (True, False)])
def test_the_called_ae_title_is_checked_when_asked(settings, session_factory, read_factory, store, check, accepted):
    import dataclasses

    server = DicomServer(dataclasses.replace(settings, dicom_check_called_aet=check), session_factory, read_factory,
                         store)
    server.start()
    try:
        assoc = scu(Verification).associate("127.0.0.1", server.port, ae_title="WRONG_AE")
        assert assoc.is_established is accepted
        if accepted:
            assoc.release()
        else:
            assert assoc.is_rejected
            assert (assoc.acceptor.primitive.result_source, assoc.acceptor.primitive.diagnostic) == (1, 7)
        right = associate(scu(Verification), server.port)
        assert right.is_established
        right.release()
    finally:
        server.stop()


def test_accepted_sockets_have_tcp_nodelay(server):
    assoc = associate(scu(Verification), server.port)
    try:
        (accepted,) = server.ae.active_associations
        assert accepted.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        assoc.release()


def test_pynetdicom_echo_and_store_context(server):
    assoc = associate(scu(Verification, CTImageStorage), server.port)
    try:
        assert assoc.send_c_echo().Status == statuses.SUCCESS
        assert {cx.abstract_syntax for cx in assoc.accepted_contexts} == {Verification, CTImageStorage}
    finally:
        assoc.release()


@pytest.mark.dcmtk
def test_dcmtk_echoscu(server):
    result = run_dcmtk("echoscu", "-v", "-aec", "RIS", "-to", "30", "127.0.0.1", str(server.port))
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_stop_closes_the_port(settings, session_factory, read_factory, store):
    srv = DicomServer(settings, session_factory, read_factory, store)
    srv.start()
    port = srv.port
    srv.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    srv.stop()                                                   # idempotent
