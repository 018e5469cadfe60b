"""What the AE admits: re-sent SOP instances by policy, known callers, the association limit (real peers)."""

from __future__ import annotations

import dataclasses
import time

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from app.db import unit_of_work
from app.models import Instance, Study
from config.settings import SettingsError, load_settings
from interfaces.dicom import statuses
from interfaces.dicom.network import known_aes
from interfaces.dicom.server import DicomServer
from tests.dicom.conftest import associate, nodelay, run_dcmtk, scu
from pynetdicom import evt


@pytest.fixture
def start(settings, session_factory, read_factory, store):
    """start(**setting overrides) -> a started DicomServer; all stopped at the end."""
    servers = []

    def _start(**overrides):
        srv = DicomServer(dataclasses.replace(settings, **overrides), session_factory, read_factory, store)
        srv.start()
        servers.append(srv)
        return srv

    yield _start
    for srv in servers:
        srv.stop()


def _send_twice(port, first, second):
    assoc = associate(scu(CTImageStorage), port)
    try:
        return assoc.send_c_store(first), assoc.send_c_store(second)
    finally:
        assoc.release()


def _versions():
    first = dcmread(get_testdata_file("CT_small.dcm"))
    second = dcmread(get_testdata_file("CT_small.dcm"))
    second.PatientName = "SECOND^COPY"
    return first, second


def _archived(session_factory, store):
    with unit_of_work(session_factory) as session:
        ((path, name),) = session.execute(select(Instance.path, Study.patient_name)
                                          .join(Instance.series).join(Study)).all()
    return str(dcmread(store.absolute(path)).PatientName), name


@pytest.mark.parametrize("policy, second_status, kept", [
    ("replace", statuses.SUCCESS, "SECOND^COPY"),
    ("ignore", statuses.SUCCESS, "CompressedSamples^CT1"),
    ("reject", statuses.DUPLICATE_SOP_INSTANCE, "CompressedSamples^CT1"),
])
def test_resent_instance_policy(start, session_factory, store, policy, second_status, kept):
    srv = start(dicom_resent_instance=policy)
    one, two = _send_twice(srv.port, *_versions())
    assert one.Status == statuses.SUCCESS and two.Status == second_status
    file_name, _ = _archived(session_factory, store)
    assert file_name == kept                                   # a refused or ignored copy never overwrites
    if policy == "reject":
        assert "already archived" in two.ErrorComment and two.OffendingElement == 0x00080018


@pytest.mark.parametrize("policy", ["ignore", "reject"])
def test_resent_instance_whose_file_is_gone_is_stored_again(start, session_factory, store, policy):
    srv = start(dicom_resent_instance=policy)
    first, second = _versions()
    assoc = associate(scu(CTImageStorage), srv.port)
    try:
        assert assoc.send_c_store(first).Status == statuses.SUCCESS
        with unit_of_work(session_factory) as session:
            store.absolute(session.scalars(select(Instance.path)).one()).unlink()
        assert assoc.send_c_store(second).Status == statuses.SUCCESS
    finally:
        assoc.release()
    assert _archived(session_factory, store)[0] == "SECOND^COPY"


def test_unknown_policy_is_a_settings_error(settings, session_factory, read_factory, store):
    with pytest.raises(SettingsError, match="RIS_DICOM_RESENT_INSTANCE"):
        DicomServer(dataclasses.replace(settings, dicom_resent_instance="keep"), session_factory, read_factory,
                    store)


def test_known_aes_setting():
    table = known_aes(load_settings(env={"RIS_DICOM_KNOWN_AES": "PACS=10.0.0.5:104, VIEWER=[::1]:11112"})
                      .dicom_known_aes)
    assert (table["PACS"].host, table["PACS"].port) == ("10.0.0.5", 104)
    assert (table["VIEWER"].host, table["VIEWER"].port) == ("::1", 11112)
    for bad in ("PACS", "PACS=host", "PACS=host:0", "=h:1", "A_TITLE_LONGER_THAN_16=h:1"):
        with pytest.raises(SettingsError):
            known_aes((bad,))


@pytest.mark.dcmtk
def test_only_known_callers_from_their_host(start):
    srv = start(dicom_check_callers=True, dicom_known_aes=("MODALITY1=127.0.0.1:104", "ELSEWHERE=127.0.0.2:104"))
    assoc = associate(scu(Verification, ae_title="MODALITY1"), srv.port)
    assert assoc.send_c_echo().Status == statuses.SUCCESS
    assoc.release()
    for title in ("STRANGER", "ELSEWHERE"):           # unknown title; known title from another host
        refused = scu(Verification, ae_title=title).associate("127.0.0.1", srv.port, ae_title="RIS",
                                                             evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        assert refused.is_rejected
        result = refused.acceptor.primitive
        assert (result.result, result.result_source, result.diagnostic) == (0x01, 0x01, 0x03)
    result = run_dcmtk("echoscu", "-v", "-aet", "STRANGER", "-aec", "RIS", "-to", "30", "127.0.0.1", str(srv.port))
    assert result.returncode != 0
    assert "Association Rejected" in result.stdout + result.stderr
    ok = run_dcmtk("echoscu", "-v", "-aet", "MODALITY1", "-aec", "RIS", "-to", "30", "127.0.0.1", str(srv.port))
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_association_limit(start):
    srv = start(dicom_max_associations=1)
    first = associate(scu(Verification), srv.port)
    try:
        second = scu(Verification).associate("127.0.0.1", srv.port, ae_title="RIS",
                                             evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        assert second.is_rejected
        assert second.acceptor.primitive.diagnostic == 0x02           # local limit exceeded (PS3.8 9.3.4)
    finally:
        first.release()
    for _ in range(100):                                               # the released one is cleaned up
        if not srv.ae.active_associations:
            break
        time.sleep(0.05)
    third = associate(scu(Verification), srv.port)
    assert third.send_c_echo().Status == statuses.SUCCESS
    third.release()
