"""The whole engine in-process: an order placed over MLLP (RAD-2), performed over DICOM MPPS with a pynetdicom SCU
(RAD-6/RAD-7), and the status feedback (RAD-3) delivered by the scheduler's dispatch job to a real MLLP receiver;
the outbox seen through the JSON API."""

from __future__ import annotations

import dataclasses
import json
import urllib.request

from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from interfaces.dicom import statuses
from interfaces.mllp.client import MLLPClient
from interfaces.runtime import Engine
from tests.dicom.test_mpps import create_attrs, set_attrs
from tests.dicom.conftest import associate, scu
from tests.mllp.conftest import wait_until

ORDER = (
    "MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ORM^O01|FB-1|P|2.3.1\r"
    "PID|||FB-PAT-1^^^HOSP||FEEDBACK^FRIDA||19750505|F\r"
    "ORC|NW|FB-PL-1^HIS|||||^^^20261204083000\r"
    "OBR|1|FB-PL-1^HIS||CTCH^CT chest^L||||||||||||||FB-ACC-1|FB-RP-1|FB-SPS-1||||CT\r"
).encode("ascii")


def test_order_performed_over_dicom_is_reported_to_the_his(settings, receiver):
    engine = Engine(dataclasses.replace(settings, his_mllp=f"127.0.0.1:{receiver.port}", outbox_poll_seconds=0.2,
                                        outbox_timeout=5.0))
    engine.start()
    try:
        with MLLPClient("127.0.0.1", engine.mllp.port, timeout=10) as client:
            assert b"MSA|AA|FB-1" in client.send(ORDER)
        assoc = associate(scu(MPPS), engine.dicom.port, called=settings.dicom_aet)
        try:
            uid = generate_uid()
            attrs = create_attrs(accession="FB-ACC-1", sps_id="FB-SPS-1")
            assert assoc.send_n_create(attrs, MPPS, uid)[0].Status == statuses.SUCCESS
            assert wait_until(lambda: len(receiver.received) >= 2, timeout=20)
            assert assoc.send_n_set(set_attrs("COMPLETED"), MPPS, uid)[0].Status == statuses.SUCCESS
        finally:
            assoc.release()
        assert wait_until(lambda: len(receiver.received) >= 3, timeout=20)
        assert receiver.statuses() == ["SC", "IP", "CM"]
        for msg in receiver.messages:
            assert msg.raw("ORC", 2) == "FB-PL-1^HIS" and msg.value("OBR", 18) == "FB-ACC-1"
            assert msg.raw("PID", 3) == "FB-PAT-1^^^HOSP" and msg.raw("PID", 5) == "FEEDBACK^FRIDA"
            assert msg.value("OBR", 20) == "FB-SPS-1" and msg.value("OBR", 24) == "CT"
        url = f"http://127.0.0.1:{engine.http_port}/api/outbox?destination=his"
        assert wait_until(lambda: _json(url)["count"] == 3 and
                          {m["status"] for m in _json(url)["messages"]} == {"SENT"}, timeout=10)
        listed = _json(url)["messages"]
        assert [m["message_id"] for m in reversed(listed)] == receiver.control_ids()
        assert [m["cause"]["kind"] for m in reversed(listed)] == ["hl7", "mpps", "mpps"]
    finally:
        engine.stop()
    assert len(receiver.received) == 3                                  # nothing sent twice


def _json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())
