"""The HL7 writer of order status messages (IHE RAD-3; HL7 v2.5.1 ch. 4) and the ACK reader, without sockets."""

from __future__ import annotations

import datetime as dt

import pytest

from interfaces.hl7.ack_reader import NotAnAck, read_ack
from interfaces.hl7.tokenizer import parse
from interfaces.hl7.writer import ORDER_STATUS_CODES, Header, encode, order_status_message

HEADER = Header("RIS", "RADIOLOGY", "HIS", "HOSP", "OUT000000007",
                dt.datetime(2026, 12, 3, 13, 5, 9, tzinfo=dt.timezone(dt.timedelta(hours=1))))


def snapshot(**changes) -> dict:
    payload = {
        "order_id": 7, "status": "IN_PROGRESS", "previous_status": "SCHEDULED", "changed_at": "2026-12-03T12:05:00",
        "placer_order_number": "PL-1", "placer_issuer": "HIS", "filler_order_number": "", "accession_number": "ACC-1",
        "sender": "HIS^HOSP", "patient": {"patient_id": "P-1", "issuer": "HOSP", "name": "MÜLLER^ANNA^B^DR^JR",
                                          "birth_date": "1980-01-02", "sex": "F"},
        "step_id": "SPS-2",
        "procedures": [{"requested_procedure_id": "RP-1", "study_instance_uid": "1.2.3", "code_value": "CTH",
                        "code_scheme": "L", "code_meaning": "CT head", "description": "",
                        "steps": [{"sps_id": "SPS-1", "modality": "MR", "status": "COMPLETED"},
                                  {"sps_id": "SPS-2", "modality": "CT", "status": "IN_PROGRESS"}]}],
    }
    payload.update(changes)
    return payload


def test_orm_status_message_fields():
    msg = parse(order_status_message(snapshot(), header=HEADER))
    assert msg.segment_names() == ["MSH", "PID", "ORC", "OBR"]
    assert msg.raw("MSH", 9) == "ORM^O01^ORM_O01"
    assert (msg.control_id, msg.version, msg.value("MSH", 18), msg.value("MSH", 7)) == (
        "OUT000000007", "2.5.1", "UNICODE UTF-8", "20261203130509+0100")
    assert [msg.value("MSH", n) for n in (3, 4, 5, 6, 11)] == ["RIS", "RADIOLOGY", "HIS", "HOSP", "P"]
    assert msg.raw("PID", 3) == "P-1^^^HOSP"
    assert msg.raw("PID", 5) == "MÜLLER^ANNA^B^JR^DR"          # XPN: suffix before prefix
    assert (msg.value("PID", 7), msg.value("PID", 8)) == ("19800102", "F")
    assert [msg.value("ORC", n) for n in (1, 5, 9)] == ["SC", "IP", "20261203130500+0100"]   # 12:05 UTC
    assert msg.raw("ORC", 2) == msg.raw("OBR", 2) == "PL-1^HIS"
    assert msg.raw("ORC", 3) == msg.raw("OBR", 3) == "ACC-1^RIS"   # no filler number: the accession
    assert msg.raw("OBR", 4) == "CTH^CT head^L"
    # OBR-18 accession, OBR-19 requested procedure, OBR-20 the step that changed, OBR-24 its modality
    assert [msg.value("OBR", n) for n in (18, 19, 20, 24)] == ["ACC-1", "RP-1", "SPS-2", "CT"]


def test_omg_message_type_and_status_codes():
    for status, code in ORDER_STATUS_CODES.items():
        msg = parse(order_status_message(snapshot(status=status), header=HEADER, message="OMG^O19"))
        assert msg.raw("MSH", 9) == "OMG^O19^OMG_O19"
        assert (msg.value("ORC", 1), msg.value("ORC", 5)) == ("SC", code)
    assert {ORDER_STATUS_CODES[s] for s in ("IN_PROGRESS", "COMPLETED", "DISCONTINUED", "CANCELLED")} == {
        "IP", "CM", "DC", "CA"}


def test_values_are_escaped_and_read_back_unchanged():
    tricky = "O|BRIEN & CO~X\\Y"
    payload = snapshot(placer_order_number="A^B|C", patient={"patient_id": "ID|1", "issuer": "H&S", "name": tricky,
                                                             "birth_date": "", "sex": ""})
    msg = parse(order_status_message(payload, header=HEADER))
    assert len(msg.segment_names()) == 4 and msg.segment("PID").field_count <= 9
    assert msg.value("PID", 5) == tricky
    assert (msg.value("PID", 3), msg.value("PID", 3, comp=4)) == ("ID|1", "H&S")
    assert msg.value("ORC", 2) == "A^B|C"


def test_one_order_pair_per_requested_procedure_and_utf8():
    procedures = snapshot()["procedures"] + [{"requested_procedure_id": "RP-2", "code_value": "", "code_meaning": "",
                                              "description": "Thorax", "steps": []}]
    text = order_status_message(snapshot(procedures=procedures, status="COMPLETED"), header=HEADER)
    msg = parse(text)
    assert msg.segment_names() == ["MSH", "PID", "ORC", "OBR", "ORC", "OBR"]
    assert [s.value(1) for s in msg.all("OBR")] == ["1", "2"]
    assert msg.segment("OBR", 2).raw(4) == "^Thorax" and msg.segment("ORC", 2).value(5) == "CM"
    assert encode(text).decode("utf-8") == text and "MÜLLER".encode() in encode(text)


def test_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match="table 0038"):
        order_status_message(snapshot(status="ARRIVED"), header=HEADER)
    with pytest.raises(ValueError, match="ORM\\^O01"):
        order_status_message(snapshot(), header=HEADER, message="ORU^R01")


def test_hl7apy_places_every_segment_in_its_group():
    """hl7apy as an independent oracle (strict parsing, group mode): OMG^O19 validates; for ORM^O01 hl7apy
    models the OBR|RQD|RQ1|RXO|ODS|ODT choice as if every member were required, so the groups are checked."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    omg = parse_message(order_status_message(snapshot(), header=HEADER, message="OMG^O19"),
                        validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert omg.validate()
    assert [c.name for c in omg.children] == ["MSH", "OMG_O19_PATIENT", "OMG_O19_ORDER"]
    orm = parse_message(order_status_message(snapshot(), header=HEADER),
                        validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert [c.name for c in orm.children] == ["MSH", "ORM_O01_PATIENT", "ORM_O01_ORDER"]
    order = orm.ORM_O01_ORDER
    assert (order.ORC.ORC_1.value, order.ORC.ORC_5.value) == ("SC", "IP")
    assert order.ORM_O01_ORDER_DETAIL.ORM_O01_OBRRQDRQ1RXOODSODT_SUPPGRP.OBR.OBR_18.value == "ACC-1"


def test_read_ack():
    ack = read_ack(b"MSH|^~\\&|HIS|HOSP|RIS|RADIOLOGY|20261203||ACK^O01^ACK|A1|P|2.5.1\rMSA|AA|OUT1\r")
    assert (ack.code, ack.control_id, ack.accepted, ack.rejected) == ("AA", "OUT1", True, False)
    ack = read_ack(b"MSH|^~\\&|HIS|HOSP|RIS|RADIOLOGY|20261203||ACK^O01^ACK|A2|P|2.5.1\rMSA|AR|OUT2\r"
                   b"ERR||PID^1^3|204^Unknown key identifier^HL70357|E||||no such patient\r")
    assert (ack.code, ack.rejected, ack.text) == ("AR", True, "no such patient")
    ack = read_ack(b"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203||ACK^O01|A3|P|2.3\rMSA|AE|OUT3|try later\r")
    assert (ack.code, ack.accepted, ack.rejected, ack.text) == ("AE", False, False, "try later")
    with pytest.raises(NotAnAck):
        read_ack(b"HELLO")
    with pytest.raises(NotAnAck, match="no MSA"):
        read_ack(b"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203||ADT^A01|A4|P|2.5\rPID|||1\r")


def test_a_procedure_transition_is_one_orc_obr_pair_with_its_state():
    from interfaces.hl7.writer import PROCEDURE_STATUS_CODES

    two = snapshot(procedures=[dict(snapshot()["procedures"][0]),
                               dict(snapshot()["procedures"][0], requested_procedure_id="RP-2")])
    for state, code in PROCEDURE_STATUS_CODES.items():
        payload = dict(two, event="procedure", procedure="RP-2", procedure_state=state, previous_state="ORDERED")
        msg = parse(order_status_message(payload, header=HEADER))
        assert msg.segment_names() == ["MSH", "PID", "ORC", "OBR"]               # only the procedure that moved
        assert (msg.value("ORC", 1), msg.value("ORC", 5), msg.value("OBR", 19)) == ("SC", code, "RP-2")
        assert msg.value("ORC", 25) == state and msg.value("ORC", 25, comp=3) == "99RIS"
    assert PROCEDURE_STATUS_CODES["ARRIVED"] == "IP" and PROCEDURE_STATUS_CODES["SCHEDULED"] == "SC"
    with pytest.raises(ValueError, match="procedure state 'ORDERED' has no HL7 table 0038 code"):
        order_status_message(dict(two, event="procedure", procedure="RP-2", procedure_state="ORDERED"), header=HEADER)
    with pytest.raises(ValueError, match="no requested procedure 'RP-9'"):
        order_status_message(dict(two, event="procedure", procedure="RP-9", procedure_state="ARRIVED"), header=HEADER)


def test_oru_of_a_signed_report():
    from interfaces.hl7.writer import report_message

    payload = {"result_status": "C", "text": "Line | one\r\nLine ^ two", "signed_by": "rad", "signed_by_name": "",
               "signed_at": "2026-12-03T12:00:00", "performed_at": "2026-12-03T08:00:00", "accession_number": "ACC-1",
               "placer_order_number": "PL-1", "placer_issuer": "HIS", "filler_order_number": "",
               "patient": {"patient_id": "P-1", "issuer": "HOSP", "name": "MÜLLER^ANNA"},
               "procedure": {"requested_procedure_id": "RP-1", "code_value": "CTH", "code_meaning": "CT head",
                             "code_scheme": "L", "study_instance_uid": "1.2.3", "modality": "CT"}}
    msg = parse(report_message(payload, header=HEADER))
    assert msg.segment_names() == ["MSH", "PID", "ORC", "OBR", "OBX", "OBX", "OBX"]
    assert msg.raw("MSH", 9) == "ORU^R01^ORU_R01" and (msg.value("ORC", 1), msg.value("ORC", 5)) == ("RE", "CM")
    assert [msg.value("OBR", n) for n in (7, 18, 19, 22, 24, 25, 32)] == [
        "20261203090000+0100", "ACC-1", "RP-1", "20261203130000+0100", "CT", "C", "rad"]   # UTC times in MSH-7's zone
    assert [s.value(5) for s in msg.all("OBX")] == ["Line | one", "Line ^ two", "1.2.3"]     # escaped, read back
    assert [s.value(11) for s in msg.all("OBX")] == ["C", "C", "C"] and msg.all("OBX")[2].value(3) == "110180"
    with pytest.raises(ValueError, match="result status 'X' is not one of P, F, C"):
        report_message(dict(payload, result_status="X"), header=HEADER)
