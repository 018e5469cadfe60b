"""Feedback to the HIS end to end (issue 7; IHE RAD-3 and HL7 v2.5.1 ch. 4 and 7): the whole engine in-process and a
real MLLP receiver (the HIS) started by the test. An order arrives over MLLP (NW), the patient arrives (ADT^A10), a
modality performs it (MPPS N-CREATE and N-SET over DICOM), the images arrive (DCMTK storescu), a radiologist signs
the report through the JSON API - and the HIS receives, in that order and each once: ORM SC (scheduled), ORM IP with
ORC-25 ARRIVED, ORM IP (in progress), ORM CM (completed), ORU^R01 F (the report)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import urllib.request

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from interfaces.dicom import statuses
from interfaces.mllp.client import MLLPClient
from interfaces.runtime import Engine
from tests.dicom.conftest import associate, run_dcmtk, scu
from tests.dicom.test_mpps import create_attrs, set_attrs
from tests.mllp.conftest import wait_until

TODAY = dt.date.today()


def _order() -> bytes:
    return ("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ORM^O01|E2E-1|P|2.3.1\r"
            "PID|||E2E-PAT^^^HOSP||FEEDBACK^FRIDA||19750505|F\r"
            f"ORC|NW|E2E-PL^HIS|||||^^^{TODAY:%Y%m%d}083000\r"
            "OBR|1|E2E-PL^HIS||CTCH^CT chest^L||||||||||||||E2E-ACC|E2E-RP|E2E-SPS||||CT\r").encode("ascii")


def _arrival() -> bytes:
    return (f"MSH|^~\\&|HIS|HOSP|RIS|RAD|{TODAY:%Y%m%d}080000||ADT^A10|E2E-2|P|2.3.1\r"
            f"EVN|A10|{TODAY:%Y%m%d}081000\rPID|||E2E-PAT^^^HOSP||FEEDBACK^FRIDA||19750505|F\rPV1|1|O\r"
            ).encode("ascii")


def _http(port: int, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_his_learns_each_step_of_an_order_in_order(settings, receiver, tmp_path):
    engine = Engine(dataclasses.replace(settings, his_mllp=f"127.0.0.1:{receiver.port}", outbox_poll_seconds=0.2,
                                        outbox_timeout=5.0))
    engine.start()
    try:
        with MLLPClient("127.0.0.1", engine.mllp.port, timeout=10) as client:
            assert b"MSA|AA|E2E-1" in client.send(_order())
            assert wait_until(lambda: len(receiver.received) >= 1, timeout=20)
            assert b"MSA|AA|E2E-2" in client.send(_arrival())
        assert wait_until(lambda: len(receiver.received) >= 2, timeout=20)

        order = _http(engine.http_port, "GET", "/api/orders?accession=E2E-ACC")["orders"][0]
        study_uid = order["procedures"][0]["study_instance_uid"]
        assoc = associate(scu(MPPS), engine.dicom.port, called=settings.dicom_aet)
        try:
            mpps_uid = generate_uid()
            attrs = create_attrs(accession="E2E-ACC", sps_id="E2E-SPS")
            assert assoc.send_n_create(attrs, MPPS, mpps_uid)[0].Status == statuses.SUCCESS
            assert wait_until(lambda: len(receiver.received) >= 3, timeout=20)

            image = pydicom.dcmread(get_testdata_file("CT_small.dcm"))     # the images, over DICOM (RAD-8)
            image.AccessionNumber, image.PatientID, image.StudyInstanceUID = "E2E-ACC", "E2E-PAT", study_uid
            image.save_as(tmp_path / "image.dcm")
            stored = run_dcmtk("storescu", "-aec", settings.dicom_aet, "127.0.0.1", str(engine.dicom.port),
                               str(tmp_path / "image.dcm"))
            assert stored.returncode == 0, stored.stderr

            assert assoc.send_n_set(set_attrs("COMPLETED"), MPPS, mpps_uid)[0].Status == statuses.SUCCESS
        finally:
            assoc.release()
        assert wait_until(lambda: len(receiver.received) >= 4, timeout=20)

        procedure_id = order["procedures"][0]["id"]
        report = _http(engine.http_port, "POST", f"/api/procedures/{procedure_id}/reports",
                       {"text": "CT chest: no acute findings.\nImpression: normal.", "author": "dr-rad"})
        _http(engine.http_port, "POST", f"/api/reports/{report['id']}/sign", {"signed_by": "dr-rad"})
        assert wait_until(lambda: len(receiver.received) >= 5, timeout=20)

        url = "/api/outbox?destination=his"
        assert wait_until(lambda: {m["status"] for m in _http(engine.http_port, "GET", url)["messages"]} == {"SENT"},
                          timeout=20)
        listed = list(reversed(_http(engine.http_port, "GET", url)["messages"]))
        final = _http(engine.http_port, "GET", f"/api/orders/{order['id']}")
    finally:
        engine.stop()

    messages = receiver.messages
    assert [(m.raw("MSH", 9), m.value("ORC", 1), m.value("ORC", 5)) for m in messages] == [
        ("ORM^O01^ORM_O01", "SC", "SC"), ("ORM^O01^ORM_O01", "SC", "IP"), ("ORM^O01^ORM_O01", "SC", "IP"),
        ("ORM^O01^ORM_O01", "SC", "CM"), ("ORU^R01^ORU_R01", "RE", "CM")]
    assert [m.value("ORC", 25) for m in messages[:4]] == ["SCHEDULED", "ARRIVED", "IN_PROGRESS", "COMPLETED"]
    assert receiver.control_ids() == [m["message_id"] for m in listed]          # each once, in order
    assert [m["cause"]["kind"] for m in listed] == ["hl7", "hl7", "mpps", "mpps", "user"]
    for msg in messages:
        assert msg.raw("ORC", 2) == "E2E-PL^HIS" and msg.value("OBR", 18) == "E2E-ACC"
        assert msg.raw("PID", 3) == "E2E-PAT^^^HOSP" and msg.raw("PID", 5) == "FEEDBACK^FRIDA"
        assert [msg.value("MSH", n) for n in (5, 6)] == ["HIS", "HOSP"]
    oru = messages[4]
    assert (oru.value("OBR", 25), oru.value("OBR", 19), oru.value("OBR", 32)) == ("F", "E2E-RP", "dr-rad")
    assert [seg.value(5) for seg in oru.all("OBX")] == ["CT chest: no acute findings.", "Impression: normal.",
                                                              study_uid]
    assert final["procedures"][0]["state"] == "FINAL" and final["studies"][0]["link_status"] == "LINKED"
    assert [h["to"] for h in final["procedures"][0]["history"]] == [
        "ORDERED", "SCHEDULED", "ARRIVED", "IN_PROGRESS", "COMPLETED", "FINAL"]
