"""Forwarding received instances to a configured node by C-STORE from the outbox (interfaces.outbound.dicom), with
DCMTK storescp as the node: down for a while, then up; nothing lost, nothing twice, never back to the sender."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from app.commands import MergePatient, PatientData, PatientRef
from app.db import unit_of_work
from app.models import Instance, OutboxMessage, OutboxStatus
from app.services.patients import merge_patient
from config.settings import SettingsError
from interfaces.dicom.server import DicomServer
from interfaces.outbound.dispatcher import build_dispatcher
from tests.dicom.conftest import associate, dcmtk, free_port, received_files, scu, wait_listening


@pytest.fixture
def node(tmp_path):
    """A storescp that can be started and stopped on one fixed port (stopped by its PID)."""

    class Node:
        port = free_port()
        folder = tmp_path / "node"
        proc: subprocess.Popen | None = None

        def start(self):
            self.folder.mkdir(exist_ok=True)
            self.proc = subprocess.Popen([dcmtk("storescp"), "-aet", "NODE", "-od", str(self.folder), str(self.port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         env=dict(os.environ, TCP_NODELAY="1"))
            wait_listening(self.port, self.proc)

        def stop(self):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.proc = None

    n = Node()
    yield n
    n.stop()


@pytest.fixture
def fwd_settings(settings, node):
    return dataclasses.replace(settings, dicom_known_aes=(f"NODE=127.0.0.1:{node.port}",), dicom_forward=("NODE",),
                               outbox_backoff_seconds=0.2, outbox_backoff_max_seconds=0.4, outbox_timeout=5.0)


@pytest.fixture
def fwd_server(fwd_settings, session_factory, read_factory, store):
    srv = DicomServer(fwd_settings, session_factory, read_factory, store)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def dispatcher(fwd_settings, session_factory):
    d = build_dispatcher(fwd_settings, session_factory)
    yield d
    d.close()


def images(n: int, **attrs):
    study, series = generate_uid(), generate_uid()
    out = []
    for k in range(n):
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.InstanceNumber = k + 1
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
        out.append(ds)
    return out


def store_all(port: int, datasets, calling: str = "MODALITY") -> None:
    assoc = associate(scu(CTImageStorage, ae_title=calling), port)
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


def rows(session_factory) -> list[tuple]:
    with unit_of_work(session_factory) as session:
        return [(r.destination, r.payload["sop_instance_uid"], r.status, r.attempts, r.last_error)
                for r in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]


def run_until_final(dispatcher, session_factory, tries: int = 60) -> None:
    """Dispatch until every row is SENT or DEAD (at most ``tries`` runs, 0.1 s apart)."""
    for _ in range(tries):
        dispatcher.run_once()
        if all(status in (OutboxStatus.SENT, OutboxStatus.DEAD) for *_, status, _, _ in rows(session_factory)):
            return
        time.sleep(0.1)
    pytest.fail(f"outbox not delivered: {rows(session_factory)}")


@pytest.mark.dcmtk
def test_node_down_for_a_while_then_everything_arrives_once(fwd_server, dispatcher, node, session_factory):
    sent = images(3, PatientID="P-F", AccessionNumber="ACC-F")
    store_all(fwd_server.port, sent)
    queued = rows(session_factory)
    assert [(d, uid, s) for d, uid, s, _, _ in queued] == [("dicom:NODE", ds.SOPInstanceUID, OutboxStatus.PENDING)
                                                          for ds in sent]
    assert dispatcher.run_once()["dicom:NODE"] == 0                         # the node is down
    first, *rest = rows(session_factory)
    assert (first[2], first[3]) == (OutboxStatus.FAILED, 1)
    assert f"cannot associate with NODE at 127.0.0.1:{node.port}" in first[4]
    assert [(r[2], r[3]) for r in rest] == [(OutboxStatus.PENDING, 0)] * 2  # waiting behind it, in order

    node.start()
    run_until_final(dispatcher, session_factory)
    assert [r[2] for r in rows(session_factory)] == [OutboxStatus.SENT] * 3
    assert rows(session_factory)[0][3] >= 2
    got = received_files(node.folder)
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(ds.SOPInstanceUID for ds in sent)   # each once
    assert all(ds.PixelData == sent[0].PixelData for ds in got)


@pytest.mark.dcmtk
def test_never_forwarded_back_to_the_node_it_came_from(fwd_server, session_factory):
    store_all(fwd_server.port, images(2), calling="NODE")
    assert rows(session_factory) == []


@pytest.mark.dcmtk
def test_a_file_gone_is_dead_lettered_and_the_queue_moves_on(fwd_server, dispatcher, node, session_factory, store):
    gone, kept = images(2)
    store_all(fwd_server.port, [gone, kept])
    with unit_of_work(session_factory) as session:
        path = session.scalars(select(Instance.path).where(Instance.sop_instance_uid == gone.SOPInstanceUID)).one()
    store.absolute(path).unlink()
    node.start()
    run_until_final(dispatcher, session_factory)
    (_, _, dead, _, reason), (_, _, ok, _, _) = rows(session_factory)
    assert (dead, ok) == (OutboxStatus.DEAD, OutboxStatus.SENT)
    assert f"the archived file of {gone.SOPInstanceUID} is gone" in reason
    assert [ds.SOPInstanceUID for ds in received_files(node.folder)] == [kept.SOPInstanceUID]


@pytest.mark.dcmtk
def test_forwarded_with_the_patient_of_the_index(fwd_server, dispatcher, node, place, session_factory):
    place("ACC-NEW", patient_id="P-NEW", name="NEW^NAME")
    place("ACC-OLD", patient_id="P-OLD", name="OLD^NAME")
    store_all(fwd_server.port, images(1, PatientID="P-OLD", PatientName="OLD^NAME", AccessionNumber="ACC-OLD"))
    with unit_of_work(session_factory) as session:
        merge_patient(session, MergePatient(survivor=PatientData(patient_id="P-NEW"),
                                            merged=PatientRef(patient_id="P-OLD")))
    node.start()
    run_until_final(dispatcher, session_factory)
    [got] = received_files(node.folder)
    assert (got.PatientID, str(got.PatientName)) == ("P-NEW", "NEW^NAME")
    assert got.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID == "P-OLD"


def test_forward_node_must_be_a_known_ae(settings, session_factory, read_factory, store):
    bad = dataclasses.replace(settings, dicom_forward=("NOWHERE",))
    with pytest.raises(SettingsError, match="RIS_DICOM_FORWARD: NOWHERE not in RIS_DICOM_KNOWN_AES"):
        DicomServer(bad, session_factory, read_factory, store)
    with pytest.raises(SettingsError, match="NOWHERE"):
        build_dispatcher(bad, session_factory)
