"""HL7 intake (store, decode, map, apply, acknowledge) called directly, without sockets.

Fixtures are synthetic messages written for these tests (no real patient data).
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from app.db import unit_of_work
from app.models import InboundMessage, MessageStatus, Order, OrderStatus, Patient, StepStatus
from app.queries.worklist import Text, WorklistQuery, find_worklist_items
from interfaces.hl7.intake import HL7Intake
from mappings.profile import ProfileSet


def hl7(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("latin-1")


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment from {field number: value} (1-based, as the standard numbers fields)."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join([name, *values])


def orm(control: str, ctrl_id: str, *, code="CTH^CT head^L", placer="PL-100", accession="ACC-100", modality="CT",
        start="20261204093000", pid="PAT-1", name="TESTER^ANNA^M", aets="CT_ROOM1~CT_ROOM2") -> bytes:
    return hl7(
        f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000+0100||ORM^O01|{ctrl_id}|P|2.3.1",
        f"PID|||{pid}^^^HOSP||{name}||19800101|F",
        seg("PV1", {2: "O", 8: "1234^REFER^ROBERT"}),
        seg("ORC", {1: control, 2: f"{placer}^HIS", 7: f"^^^{start}", 12: "5678^ORDER^OLGA"}),
        seg("OBR", {1: "1", 2: f"{placer}^HIS", 4: code, 18: accession, 19: "RP-100", 20: "SPS-100",
                    24: modality}),
        seg("IPC", {9: aets}) if aets else "ZZZ|1",
        "ZDS|1.2.826.0.1.3680043.10.1356.99.1^RIS^Application^DICOM",
    )


def adt(event: str, ctrl_id: str, *, pid="PAT-1", name="TESTER^ANNA^M", dob="19800101") -> bytes:
    return hl7(
        f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ADT^{event}|{ctrl_id}|P|2.3.1",
        f"EVN|{event}|20261203120000",
        f"PID|||{pid}^^^HOSP||{name}||{dob}|F",
    )


def segments(ack: bytes) -> dict[str, list[str]]:
    out = {}
    for seg in ack.decode("latin-1").strip("\r").split("\r"):
        out[seg[:3]] = seg.split("|")
    return out


def err(ack: bytes) -> tuple[str, str, str]:
    """(location, table 0357 code, text) of the ERR segment, v2.5 (ERR-2/3/8) or older (ERR-1 ELD)."""
    fields = segments(ack)["ERR"]
    if len(fields) > 8:
        return fields[2], fields[3].split("^")[0], fields[8]
    seg_name, occurrence, field_no, code_text = fields[1].split("^")[:4]
    code, text = code_text.split("&")[:2]
    return f"{seg_name}^{occurrence}^{field_no}", code, text


def worklist(read_factory, **keys):
    with unit_of_work(read_factory) as session:
        return find_worklist_items(session, WorklistQuery(**{k: Text(v) for k, v in keys.items()}))


def test_new_order_becomes_a_worklist_item(intake, read_factory):
    ack = segments(intake.handle(orm("NW", "C1")))
    assert ack["MSA"][1:3] == ["AA", "C1"]
    assert ack["MSH"][8] == "ACK^O01"  # v2.3.1: ACK^trigger
    [item] = worklist(read_factory, accession_number="ACC-100")
    assert (item.patient_id, item.issuer, item.patient_name) == ("PAT-1", "HOSP", "TESTER^ANNA^M")
    assert (item.requested_procedure_id, item.sps_id, item.modality) == ("RP-100", "SPS-100", "CT")
    assert item.station_aets == ("CT_ROOM1", "CT_ROOM2")
    assert item.study_instance_uid == "1.2.826.0.1.3680043.10.1356.99.1"
    # 09:30 with the MSH-7 offset +0100 is 09:30 in Europe/Berlin in December (site zone of the fixture)
    assert item.scheduled_start == dt.datetime(2026, 12, 4, 9, 30)
    assert item.referring_physician == "REFER^ROBERT"
    assert item.requesting_physician == "ORDER^OLGA"
    assert item.birth_date == dt.date(1980, 1, 1)
    assert worklist(read_factory, station_aet="CT_ROOM2")[0].accession_number == "ACC-100"


def test_raw_bytes_are_stored_and_the_ack_recorded(intake, session_factory):
    raw = orm("NW", "C2")
    ack = intake.handle(raw, peer="127.0.0.1:5000")
    with unit_of_work(session_factory) as session:
        [msg] = session.scalars(select(InboundMessage)).all()
        assert msg.raw == raw
        assert msg.status is MessageStatus.PROCESSED
        assert (msg.sender, msg.control_id, msg.message_type) == ("HIS^HOSP", "C2", "ORM^O01")
        assert msg.ack == ack and msg.ack_code == "AA"
        assert msg.profile.startswith("default@")


def test_resent_message_gets_the_original_ack_and_changes_nothing(intake, session_factory):
    first = intake.handle(orm("NW", "C3"))
    again = intake.handle(orm("NW", "C3"))
    assert again == first
    with unit_of_work(session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 1
        statuses = [m.status for m in session.scalars(select(InboundMessage).order_by(InboundMessage.id))]
        assert statuses == [MessageStatus.PROCESSED, MessageStatus.DUPLICATE]


def test_resent_message_after_an_application_error_is_applied_again(intake, read_factory):
    """A CA that came before its NW is answered AE; resent once the order exists, it cancels it."""
    early = intake.handle(orm("CA", "C3-CA"))
    assert segments(early)["MSA"][1] == "AE"
    assert segments(intake.handle(orm("NW", "C3-NW")))["MSA"][1] == "AA"
    assert len(worklist(read_factory, accession_number="ACC-100")) == 1
    again = intake.handle(orm("CA", "C3-CA"))
    assert segments(again)["MSA"][1:3] == ["AA", "C3-CA"]
    assert worklist(read_factory, accession_number="ACC-100") == []


def test_reused_control_id_with_other_content_is_processed(intake, session_factory):
    assert segments(intake.handle(adt("A01", "SAME", pid="P-A")))["MSA"][1] == "AA"
    assert segments(intake.handle(adt("A01", "SAME", pid="P-B")))["MSA"][1] == "AA"
    with unit_of_work(session_factory) as session:
        assert sorted(session.scalars(select(Patient.patient_id))) == ["P-A", "P-B"]


RESENDS = {  # how a sender may resend a message after a lost ACK: the same message (app.services.messages)
    "CRLF terminators": lambda raw: raw.replace(b"\r", b"\r\n"),
    "LF terminators": lambda raw: raw.replace(b"\r", b"\n"),
    "an extra trailing CR": lambda raw: raw + b"\r",
    "MSH-7 stamped anew": lambda raw: raw.replace(b"|20261203120000+0100|", b"|20261203120005+0100|", 1),
    "trailing empty fields": lambda raw: raw.replace(b"\rPID|||PAT-1^^^HOSP||TESTER^ANNA^M||19800101|F\r",
                                                     b"\rPID|||PAT-1^^^HOSP||TESTER^ANNA^M||19800101|F|||\r"),
}


@pytest.mark.parametrize("how", sorted(RESENDS))
def test_a_resend_is_a_duplicate_whatever_its_terminators_or_msh7(intake, session_factory, how):
    raw = orm("NW", "D1")
    first = intake.handle(raw)
    resent = RESENDS[how](raw)
    assert resent != raw
    assert intake.handle(resent) == first     # the original ACK, not AE "already exists"
    with unit_of_work(session_factory) as session:
        rows = session.scalars(select(InboundMessage).order_by(InboundMessage.id)).all()
        assert [m.status for m in rows] == [MessageStatus.PROCESSED, MessageStatus.DUPLICATE]
        assert rows[1].raw == resent and rows[1].duplicate_of_fk == rows[0].id
        assert session.scalar(select(func.count()).select_from(Order)) == 1


def test_other_content_under_the_same_control_id_is_another_message(intake, session_factory):
    """BUG-28: a reused control id with different content is a different message, even one field."""
    intake.handle(orm("NW", "D2"))
    ack = intake.handle(orm("NW", "D2", placer="PL-101", accession="ACC-101"))
    assert segments(ack)["MSA"][1] == "AA"
    with unit_of_work(session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 2


def test_second_nw_for_a_known_order_is_refused(intake, read_factory):
    intake.handle(orm("NW", "C4"))
    ack = intake.handle(orm("NW", "C5", accession="ACC-OTHER"))
    assert segments(ack)["MSA"][1] == "AE"
    assert err(ack)[0:2] == ("ORC^1^2", "205") and "already exists" in err(ack)[2]
    assert len(worklist(read_factory, patient_id="PAT-1")) == 1


@pytest.mark.parametrize("control, status", [("CA", OrderStatus.CANCELLED), ("DC", OrderStatus.DISCONTINUED)])
def test_cancel_removes_the_item_from_the_worklist(intake, read_factory, session_factory, control, status):
    intake.handle(orm("NW", "C6"))
    assert segments(intake.handle(orm(control, "C7")))["MSA"][1] == "AA"
    assert worklist(read_factory, accession_number="ACC-100") == []
    with unit_of_work(session_factory) as session:
        order = session.scalars(select(Order)).one()
        assert order.status is status
        assert order.procedures[0].steps[0].status in (StepStatus.CANCELLED, StepStatus.DISCONTINUED)


def test_change_order_updates_in_place(intake, read_factory):
    intake.handle(orm("NW", "C8"))
    ack = segments(intake.handle(orm("XO", "C9", modality="MR", start="20261205140000", aets="MR_ROOM")))
    assert ack["MSA"][1] == "AA"
    [item] = worklist(read_factory, accession_number="ACC-100")
    assert (item.modality, item.station_aets, item.scheduled_start) == ("MR", ("MR_ROOM",), dt.datetime(2026, 12, 5, 14))
    assert item.study_instance_uid == "1.2.826.0.1.3680043.10.1356.99.1"


def test_cancel_of_an_unknown_order_is_ae_naming_the_field(intake):
    ack = intake.handle(orm("CA", "C10", placer="NOPE"))
    assert segments(ack)["MSA"][1:3] == ["AE", "C10"]
    assert err(ack) == ("ORC^1^2", "204", "unknown order: placer order NOPE of HIS, accession ACC-100")


def test_adt_creates_then_updates_the_patient(intake, session_factory):
    intake.handle(adt("A04", "A1", name="OLD^NAME"))
    intake.handle(adt("A08", "A2", name="NEW^NAME", dob=""))
    with unit_of_work(session_factory) as session:
        patient = session.scalars(select(Patient)).one()
        assert patient.name == "NEW^NAME"
        assert patient.birth_date == dt.date(1980, 1, 1)  # not sent in the A08: kept


def test_hl7_null_clears_a_value(intake, session_factory):
    intake.handle(adt("A04", "N1"))
    intake.handle(adt("A08", "N2", dob='""'))
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(Patient)).one().birth_date is None


def test_unsupported_message_type_is_ar(intake, session_factory):
    ack = segments(intake.handle(hl7("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203||MFN^M02|U1|P|2.5.1", "MFI|PRA")))
    assert ack["MSA"][1:3] == ["AR", "U1"]
    assert ack["MSH"][8] == "ACK^M02^ACK"
    assert ack["ERR"][3].startswith("200^")
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(InboundMessage)).one().status is MessageStatus.REJECTED


def test_not_hl7_is_ar_and_kept(intake, session_factory):
    raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    ack = segments(intake.handle(raw))
    assert ack["MSA"][1:3] == ["AR", ""]
    with unit_of_work(session_factory) as session:
        msg = session.scalars(select(InboundMessage)).one()
        assert msg.raw == raw and msg.status is MessageStatus.REJECTED
        assert "MSH" in msg.error


def test_missing_modality_is_ae_never_an_item(intake, read_factory):
    ack = intake.handle(orm("NW", "M1", code="LAB1^Urinalysis", modality="", aets=""))
    assert segments(ack)["MSA"][1] == "AE"
    assert err(ack)[:2] == ("OBR^1^24", "101")
    assert worklist(read_factory, patient_id="PAT-1") == []


def test_missing_accession_is_assigned_by_the_engine(intake, read_factory):
    ack = segments(intake.handle(orm("NW", "G1", accession="")))
    assert ack["MSA"][1] == "AA"
    [item] = worklist(read_factory, patient_id="PAT-1")
    assert item.accession_number.startswith("RIS") and len(item.accession_number) <= 16
    assert item.filler_order_number == item.accession_number      # and the order filler's number with it


def test_an_order_without_a_filler_order_number_gets_ours(intake, read_factory):
    """corpus orm_o01_v22_hapi_nw_no_filler_lf: NW without ORC-3/OBR-3 - the order filler numbers the order
    (HL7 v2.5.1 4.5.1.3); a sender's own ORC-3 is kept."""
    assert segments(intake.handle(orm("NW", "F1", placer="PL-F1", accession="ACC-F1")))["MSA"][1] == "AA"
    [item] = worklist(read_factory, patient_id="PAT-1")
    assert (item.placer_order_number, item.filler_order_number) == ("PL-F1", "ACC-F1")
    given = orm("NW", "F2", placer="PL-F2", accession="ACC-F2", pid="PAT-2").replace(b"ORC|NW|PL-F2^HIS||",
                                                                                     b"ORC|NW|PL-F2^HIS|HISFILL-9|")
    assert b"|HISFILL-9|" in given
    assert segments(intake.handle(given))["MSA"][1] == "AA"
    [other] = worklist(read_factory, patient_id="PAT-2")
    assert other.filler_order_number == "HISFILL-9"


def test_a_nul_character_in_a_field_is_ae_naming_the_field(intake, read_factory, session_factory):
    """No value may hold U+0000 (PostgreSQL refuses it; the HTTP edge says 400): AE naming the field, the raw
    message kept, nothing applied (fresh-clone check: the NUL reached the worklist's PatientName)."""
    ack = intake.handle(orm("NW", "N0", name="NU\x00LL^NINA"))
    assert segments(ack)["MSA"][1] == "AE" and err(ack)[0] == "PID^1^5" and "NUL" in err(ack)[2]
    assert worklist(read_factory) == []
    second = orm("NW", "N1").replace(b"ORC|NW|", b"ORC|NW|\x00")
    assert err(intake.handle(second))[0] == "ORC^1^2"
    with unit_of_work(session_factory) as session:
        assert [m.raw.count(b"\x00") for m in session.scalars(select(InboundMessage).order_by(InboundMessage.id))] == [1, 1]


def test_too_long_accession_is_refused(intake):
    ack = intake.handle(orm("NW", "L1", accession="A" * 17))
    assert segments(ack)["MSA"][1] == "AE"
    assert err(ack)[0] == "OBR^1^18" and "longer than 16" in err(ack)[2]


def test_oversize_frame_is_ar_and_recorded(intake, session_factory):
    from interfaces.mllp.framing import FrameEvent

    head = orm("NW", "BIG")[:200]
    ack = segments(intake.handle_frame(FrameEvent(head, oversize=True, size=99_000_000), "peer"))
    assert ack["MSA"][1:3] == ["AR", "BIG"]
    with unit_of_work(session_factory) as session:
        msg = session.scalars(select(InboundMessage)).one()
        assert msg.status is MessageStatus.REJECTED and "too large" in msg.error
        # found by what its header says, with its real size
        assert (msg.control_id, msg.sender, msg.message_type, msg.size) == ("BIG", "HIS^HOSP", "ORM^O01", 99_000_000)


def test_unreadable_message_is_still_found_by_its_control_id(intake, session_factory):
    """MSH-2 is broken but the first line still shows the control id: the analyst can search for it."""
    ack = intake.handle(b"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203||ADT^A01|CTRL-7|P|2.5\rPID|||1\r"
                        .replace(b"^~\\&", b"^^\\&"))
    assert segments(ack)["MSA"][1] == "AR"
    with unit_of_work(session_factory) as session:
        msg = session.scalars(select(InboundMessage)).one()
        assert (msg.status, msg.control_id, msg.sender) == (MessageStatus.REJECTED, "CTRL-7", "HIS^HOSP")


def test_frame_that_is_not_hl7_is_a_segment_sequence_error(intake):
    ack = intake.handle(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert segments(ack)["MSA"][1] == "AR"
    assert err(ack)[1] == "100" and "MSH" in err(ack)[2]


@pytest.mark.parametrize("msh9, text", [("", "MSH-9 (message type) is empty"),
                                        ("ACK", "message type ACK without a trigger event is not handled"),
                                        ("ORM^O99", "message type ORM O99 is not handled")])
def test_unhandled_message_type_is_named_plainly(intake, msh9, text):
    ack = intake.handle(f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203||{msh9}|T-1|P|2.5\rPID|||1\r".encode())
    assert segments(ack)["MSA"][1:3] == ["AR", "T-1"]
    assert err(ack)[1] == "200" and err(ack)[2].startswith(text)


def test_unfinished_message_is_recovered(intake, session_factory, read_factory):
    from app.services.messages import store_received
    from interfaces.scheduler.jobs import recover_unfinished_messages

    with unit_of_work(session_factory) as session:
        store_received(session, orm("NW", "R1"), transport="mllp", peer="crashed")
    assert recover_unfinished_messages(session_factory, intake, older_than_s=0) == 1
    assert len(worklist(read_factory, accession_number="ACC-100")) == 1
    assert recover_unfinished_messages(session_factory, intake, older_than_s=0) == 0


def a40(ctrl_id: str, survivor: str, merged: str) -> bytes:
    return hl7(f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ADT^A40^ADT_A39|{ctrl_id}|P|2.5",
               "EVN|A40|20261203120000", f"PID|||{survivor}^^^HOSP||MERGED^MARIA", f"MRG|{merged}^^^HOSP")


def test_merge_guards(intake, session_factory):
    intake.handle(adt("A04", "G0", pid="OLD"))
    intake.handle(orm("NW", "G1", pid="OLD"))
    assert segments(intake.handle(a40("G2", "NEW", "NEW")))["MSA"][1] == "AE"          # into itself
    assert segments(intake.handle(a40("G3", "NEW", "OLD")))["MSA"][1] == "AA"
    assert segments(intake.handle(a40("G4", "NEW", "OLD")))["MSA"][1] == "AA"          # repeated: no change
    ack = intake.handle(a40("G5", "OLD", "NEW"))                                           # swapped
    assert segments(ack)["MSA"][1] == "AE" and "other way round" in err(ack)[2]
    with unit_of_work(session_factory) as session:
        order = session.scalars(select(Order)).one()
        assert order.patient.patient_id == "NEW"
    # a later message naming the merged-away identifier lands on the survivor
    intake.handle(adt("A08", "G6", pid="OLD", name="LATER^NAME"))
    with unit_of_work(session_factory) as session:
        survivor = session.scalars(select(Patient).where(Patient.patient_id == "NEW")).one()
        assert survivor.name == "LATER^NAME"
        assert session.scalar(select(func.count()).select_from(Patient)) == 2


def test_merge_relabels_archived_studies(intake, session_factory):
    from app.commands import InstanceData
    from app.models import Study
    from app.services.archive import index_instance

    intake.handle(adt("A04", "S0", pid="OLD"))
    with unit_of_work(session_factory) as session:
        index_instance(session, InstanceData("1.2.3", "1.2.3.1", "1.2.3.1.1", "1.2.840.10008.5.1.4.1.1.2", "x", 1,
                                             patient_id="OLD", issuer="HOSP"))
    intake.handle(a40("S1", "NEW", "OLD"))
    with unit_of_work(session_factory) as session:
        study = session.scalars(select(Study)).one()
        assert (study.patient_id, study.patient_name) == ("NEW", "MERGED^MARIA")


def visit_msg(event: str, ctrl_id: str, *, visit="V-1", location="WARD1^R1^B1", prior="") -> bytes:
    return hl7(f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ADT^{event}|{ctrl_id}|P|2.5",
               f"EVN|{event}|20261203120000", "PID|||PAT-V^^^HOSP||VISIT^VERA",
               seg("PV1", {2: "I", 3: location, 6: prior, 19: visit, 44: "20261203110000"}))


def test_visit_lifecycle(intake, session_factory):
    from app.models import Visit, VisitStatus

    def visit():
        with unit_of_work(session_factory) as session:
            v = session.scalars(select(Visit)).one()
            return v.status, v.location, v.prior_location

    assert segments(intake.handle(visit_msg("A01", "V1")))["MSA"][1] == "AA"
    assert visit() == (VisitStatus.ADMITTED, "WARD1", "")
    intake.handle(visit_msg("A02", "V2", location="WARD2"))
    assert visit() == (VisitStatus.ADMITTED, "WARD2", "WARD1")
    intake.handle(visit_msg("A12", "V3", location="WARD2", prior="WARD1"))
    assert visit() == (VisitStatus.ADMITTED, "WARD1", "")
    intake.handle(visit_msg("A03", "V4", location="WARD1"))
    assert visit()[0] is VisitStatus.DISCHARGED
    intake.handle(visit_msg("A13", "V5", location="WARD1"))
    assert visit()[0] is VisitStatus.ADMITTED
    intake.handle(visit_msg("A11", "V6", location="WARD1"))
    assert visit()[0] is VisitStatus.CANCELLED
    ack = intake.handle(visit_msg("A11", "V7", visit="V-UNKNOWN"))
    assert segments(ack)["MSA"][1] == "AE" and err(ack)[:2] == ("PV1^1^19", "204")


def test_hold_and_release(intake, read_factory):
    intake.handle(orm("NW", "H1"))
    assert segments(intake.handle(orm("HD", "H2")))["MSA"][1] == "AA"
    assert worklist(read_factory, accession_number="ACC-100") == []
    assert segments(intake.handle(orm("RL", "H3")))["MSA"][1] == "AA"
    assert len(worklist(read_factory, accession_number="ACC-100")) == 1


def test_status_change_cancel_and_noop(intake, read_factory):
    intake.handle(orm("NW", "SC1"))
    plain = orm("SC", "SC2").replace(b"ORC|SC|", b"ORC|SC|").replace(b"|||||^^^", b"|||IP||^^^")
    assert segments(intake.handle(plain))["MSA"][1] == "AA"
    assert len(worklist(read_factory, accession_number="ACC-100")) == 1
    cancel = orm("SC", "SC3").replace(b"|||||^^^", b"|||CA||^^^")
    assert segments(intake.handle(cancel))["MSA"][1] == "AA"
    assert worklist(read_factory, accession_number="ACC-100") == []


def test_unknown_order_control_is_ae_table_value_not_found(intake):
    """An ORC-1 the profile does not handle: AE naming ORC-1, code 103 (HL7 table 0357: table value not found;
    ORC-1 is table 0119) - the sender's content, not its message type."""
    ack = intake.handle(orm("ZZ", "U9"))
    assert segments(ack)["MSA"][1] == "AE" and err(ack)[:2] == ("ORC^1^1", "103")


def test_batch_in_one_frame_is_applied_and_answered_per_message(intake, session_factory, read_factory):
    batch = b"BHS|^~\\&|HIS|HOSP|RIS|RAD|20261203||||BATCH-7\r" + orm("NW", "B1") + \
        orm("NW", "B2", placer="PL-200", accession="ACC-200") + b"BTS|2\r"
    ack = intake.handle(batch).decode()
    lines = ack.strip("\r").split("\r")
    assert lines[0].startswith("BHS|^~\\&|RIS|RADIOLOGY|HIS|HOSP|") and lines[0].endswith("|BATCH-7")
    assert [line for line in lines if line.startswith("MSA")] == ["MSA|AA|B1", "MSA|AA|B2"]
    assert lines[-1] == "BTS|2"
    assert {i.accession_number for i in worklist(read_factory)} == {"ACC-100", "ACC-200"}
    # resent batch: the same answer, nothing applied twice
    assert intake.handle(batch).decode().count("MSA|AA|") == 2
    with unit_of_work(session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 2


def test_duplicate_window(settings, session_factory):
    import dataclasses

    from app.models import utcnow

    short = HL7Intake(dataclasses.replace(settings, hl7_dedup_window_days=1), session_factory,
                      ProfileSet(settings.mappings_path).get("default"))
    short.handle(adt("A04", "W1"))
    with unit_of_work(session_factory) as session:
        session.scalars(select(InboundMessage)).one().received_at = utcnow() - dt.timedelta(days=2)
    short.handle(adt("A04", "W1"))
    with unit_of_work(session_factory) as session:
        statuses = [m.status for m in session.scalars(select(InboundMessage).order_by(InboundMessage.id))]
    assert statuses == [MessageStatus.PROCESSED, MessageStatus.PROCESSED]  # outside the window: applied again


def test_retention_prunes_answered_messages_but_keeps_errors(intake, session_factory):
    from app.models import utcnow
    from interfaces.scheduler.jobs import prune_messages

    intake.handle(orm("NW", "P1"))
    intake.handle(orm("CA", "P2", placer="NOPE"))   # ERROR
    intake.handle(orm("NW", "P1"))                  # DUPLICATE
    with unit_of_work(session_factory) as session:
        for m in session.scalars(select(InboundMessage)):
            m.received_at = utcnow() - dt.timedelta(days=100)
    assert prune_messages(session_factory, 90) == 2
    with unit_of_work(session_factory) as session:
        left = session.scalars(select(InboundMessage)).all()
        assert [m.status for m in left] == [MessageStatus.ERROR]
        assert session.scalars(select(Order)).one().source_message_fk is None
    assert prune_messages(session_factory, 0) == 0


def test_omi_with_two_ipc_gives_two_steps(intake, read_factory):
    omi = hl7("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||OMI^O23^OMI_O23|I1|P|2.5.1",
              "PID|||PAT-I^^^HOSP||IPC^IDA", "ORC|NW|PL-I^HIS", "TQ1|1||||||20261204090000",
              seg("OBR", {1: "1", 2: "PL-I^HIS", 4: "XR^Chest^L"}),
              seg("IPC", {1: "ACC-I", 2: "RP-I", 3: "1.2.3.4.5", 4: "SPS-I1", 5: "CR", 9: "CR_ROOM1"}),
              seg("IPC", {1: "ACC-I", 2: "RP-I", 3: "1.2.3.4.5", 4: "SPS-I2", 5: "DX", 9: "DX_ROOM1"}))
    assert segments(intake.handle(omi))["MSA"][1] == "AA"
    items = worklist(read_factory, accession_number="ACC-I")
    assert sorted((i.sps_id, i.modality, i.station_aets) for i in items) == [
        ("SPS-I1", "CR", ("CR_ROOM1",)), ("SPS-I2", "DX", ("DX_ROOM1",))]
    assert {i.study_instance_uid for i in items} == {"1.2.3.4.5"}


@pytest.mark.parametrize("accept, application, ok_reply, error_reply", [
    ("", "", "AA", "AE"),          # original mode
    ("NE", "AL", "AA", "AE"),      # original mode spelled out
    ("AL", "NE", "CA", "CA"),      # accept ACK only: the message is stored either way
    ("AL", "AL", "CA", "CA"),      # both due: the accept ACK answers, the application ACK is recorded
    ("NE", "NE", None, None),
    ("NE", "ER", None, "AE"),
    ("NE", "SU", "AA", None),
    ("AL", "", "CA", "CA"),        # empty MSH-16 counts as AL, the accept ACK answers
    ("ER", "ER", None, "AE"),      # stored fine (no accept ACK due), not applied: the application error is sent
    ("ER", "AL", "AA", "AE"),
    ("SU", "ER", "CA", "CA"),      # stored: the accept ACK (its success) answers
])
def test_enhanced_acknowledgment_mode(intake, session_factory, accept, application, ok_reply, error_reply):
    def with_mode(message: bytes) -> bytes:
        head, rest = message.split(b"\r", 1)
        return head + f"|||{accept}|{application}".encode() + b"\r" + rest

    def code(reply):
        return None if reply is None else segments(reply)["MSA"][1]

    assert code(intake.handle(with_mode(orm("NW", "E1")))) == ok_reply
    assert code(intake.handle(with_mode(orm("CA", "E2", placer="NOPE")))) == error_reply
    assert code(intake.handle(with_mode(orm("CA", "E2", placer="NOPE")))) == error_reply  # resent: same answer
    with unit_of_work(session_factory) as session:
        rows = session.scalars(select(InboundMessage).order_by(InboundMessage.id)).all()
        assert [m.ack_code for m in rows[:2]] == ["AA", "AE"]
        # the store says what was answered on the connection
        for row, sent in zip(rows[:2], (ok_reply, error_reply)):
            answered = row.ack if row.reply is None else row.reply
            assert (segments(answered)["MSA"][1] if answered else None) == sent


def test_enhanced_mode_refusal_is_cr(intake):
    msg = hl7("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203||MFN^M02|R1|P|2.5.1|||AL|NE", "MFI|PRA")
    reply = intake.handle(msg)
    assert segments(reply)["MSA"][1:3] == ["CR", "R1"]
    assert err(reply)[:2] == ("MSH^1^9", "200")               # why, as the AR would say: unsupported type


@pytest.mark.parametrize("header, location, code", [(b"|Q|2.5.1|||AL|NE", "MSH^1^11", "202"),
                                                     (b"|P|9.9|||AL|NE", "MSH^1^12", "203")])
def test_enhanced_mode_cr_carries_the_refusals_code(intake, header, location, code):
    """The accept ACK's CR names what the AR would (fresh-clone check: every CR said 207)."""
    reply = intake.handle(orm("NW", "R2").replace(b"|P|2.3.1", header))
    assert segments(reply)["MSA"][1:3] == ["CR", "R2"] and err(reply)[:2] == (location, code)


def test_strict_structure_profile_refuses_a_malformed_message(settings, session_factory, tmp_path):
    import shutil

    folder = tmp_path / "profiles"
    folder.mkdir()
    text = (settings.mappings_path / "default.yaml").read_text().replace("name: default", "name: strict")
    (folder / "strict.yaml").write_text(text + "\nstrict_structure: true\n")
    strict = HL7Intake(settings, session_factory, ProfileSet(folder).get("strict"))
    good = hl7("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ADT^A01^ADT_A01|S1|P|2.5",
               "EVN|A01|20261203120000", "PID|||PAT-S^^^HOSP||STRICT^STELLA||19800101|F", "PV1||I")
    assert segments(strict.handle(good))["MSA"][1] == "AA"
    no_evn = good.replace(b"EVN|A01|20261203120000\r", b"").replace(b"|S1|", b"|S2|")
    ack = strict.handle(no_evn)
    assert segments(ack)["MSA"][1] == "AR"
    location, code, text = err(ack)
    assert (location.split("^")[0], code) == ("EVN", "100") and "EVN" in text
    shutil.rmtree(folder)


def test_unreadable_value_is_applied_and_the_ack_warns_in_v25(intake, read_factory):
    """An order time that cannot be read falls back (here: the time of receipt) and is applied; from v2.5 on
    the AA carries an ERR of severity W naming the problem, so the HIS learns it (review finding 7)."""
    raw = hl7("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ORM^O01|W-1|P|2.5",
              "PID|||PAT-W^^^HOSP||WARN^WILMA||19800101|F", "ORC|NW|PL-W^HIS|||||^^^2026ABCD",
              "OBR|1|PL-W^HIS||CTH^CT head^L||||||||||||||ACC-W|RP-W|SPS-W||||CT")
    ack = intake.handle(raw)
    assert segments(ack)["MSA"][1:3] == ["AA", "W-1"]
    fields = segments(ack)["ERR"]
    assert fields[3].split("^")[0] == "0" and fields[4] == "W" and "2026ABCD" in fields[8]
    assert len(worklist(read_factory, accession_number="ACC-W")) == 1


def test_warnings_stay_out_of_a_v23_ack(intake):
    raw = hl7("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ORM^O01|W-2|P|2.3.1",
              "PID|||PAT-W^^^HOSP||WARN^WILMA||19800101|F", "ORC|NW|PL-W2^HIS|||||^^^2026ABCD",
              "OBR|1|PL-W2^HIS||CTH^CT head^L||||||||||||||ACC-W2|RP-W|SPS-W||||CT")
    ack = intake.handle(raw)
    assert segments(ack)["MSA"][1] == "AA" and "ERR" not in segments(ack)


# ORDER groups (HL7 v2.5.1 ch. 4 abstract syntax: ORC, TQ1, OBR, IPC... repeat per group) -------------------
def two_groups(ctrl_id: str, *, version="2.5.1", second_placer="PL-G", second_accession="", second_modality="MR",
               first_extra=(), second_extra=(), control="NW") -> bytes:
    return hl7(f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000+0100||OMI^O23^OMI_O23|{ctrl_id}|P|{version}",
               "PID|||PAT-G^^^HOSP||GROUP^GRETA||19800101|F",
               f"ORC|{control}|PL-G^HIS", "TQ1|||||||20261204083000",
               seg("OBR", {1: "1", 2: "PL-G^HIS", 4: "CTH^CT head^L", 18: "ACC-G"}), *first_extra,
               f"ORC|{control}|{second_placer}^HIS", "TQ1|||||||20261204093000",
               seg("OBR", {1: "2", 2: f"{second_placer}^HIS", 4: "MRH^MR head^L", 18: second_accession,
                           24: second_modality}), *second_extra)


FIRST_IPC = seg("IPC", {1: "ACC-G", 2: "RP-G1", 3: "1.2.3.4.5", 4: "SPS-G1", 5: "CT", 9: "CT_ROOM1"})


def test_a_later_group_never_borrows_the_first_groups_ipc(intake, read_factory):
    """Only the first group has an IPC: the second group's procedure has its own (derived) ids, study UID,
    no station and its own TQ1 time (e3 of the audit: both items had RP-1, SPS-1, the same UID and station)."""
    assert segments(intake.handle(two_groups("G1", first_extra=[FIRST_IPC])))["MSA"][1] == "AA"
    items = sorted(worklist(read_factory, accession_number="ACC-G"), key=lambda i: i.scheduled_start)
    assert [(i.requested_procedure_id, i.sps_id, i.modality, i.station_aets, i.scheduled_start) for i in items] == [
        ("RP-G1", "SPS-G1", "CT", ("CT_ROOM1",), dt.datetime(2026, 12, 4, 8, 30)),
        ("ACC-G.2", "ACC-G.2", "MR", (), dt.datetime(2026, 12, 4, 9, 30))]
    assert items[0].study_instance_uid == "1.2.3.4.5"
    assert items[1].study_instance_uid not in ("1.2.3.4.5", "") and items[1].study_instance_uid.startswith("1.2.")


def test_a_single_zds_gives_its_study_uid_to_its_own_group_only(intake, read_factory):
    zds = "ZDS|1.2.826.0.1.3680043.10.1356.7.7^RIS^Application^DICOM"
    assert segments(intake.handle(two_groups("G2", first_extra=[zds])))["MSA"][1] == "AA"
    uids = [i.study_instance_uid for i in sorted(worklist(read_factory), key=lambda i: i.scheduled_start)]
    assert uids[0] == "1.2.826.0.1.3680043.10.1356.7.7"
    assert len(set(uids)) == 2
    # a ZDS in the second group is the second procedure's only
    intake.handle(two_groups("G3", second_extra=[zds.replace(".7.7", ".8.8")]).replace(b"PL-G", b"PL-J")
                  .replace(b"ACC-G", b"ACC-J"))
    uids = [i.study_instance_uid for i in sorted(worklist(read_factory, accession_number="ACC-J"),
                                                 key=lambda i: i.scheduled_start)]
    assert uids[1] == "1.2.826.0.1.3680043.10.1356.8.8" and uids[0] not in uids[1:]


def test_a_second_placer_order_number_is_a_second_order(intake, session_factory, read_factory):
    """ORC-2 PL-2 / OBR-18 ACC-2 of the second group are kept: two orders (e1b of the audit put everything
    under PL-1/ACC-1), and a later CA for the second finds it."""
    ack = intake.handle(two_groups("G4", second_placer="PL-2", second_accession="ACC-2"))
    assert segments(ack)["MSA"][1] == "AA"
    with unit_of_work(session_factory) as session:
        orders = {o.placer_order_number: (o.accession_number, [p.code_value for p in o.procedures])
                  for o in session.scalars(select(Order))}
    assert orders == {"PL-G": ("ACC-G", ["CTH"]), "PL-2": ("ACC-2", ["MRH"])}
    cancel = hl7("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203130000||ORM^O01|G5|P|2.3.1",
                 "PID|||PAT-G^^^HOSP||GROUP^GRETA", "ORC|CA|PL-2^HIS", "OBR|1|PL-2^HIS||MRH^MR head^L")
    assert segments(intake.handle(cancel))["MSA"][1] == "AA"
    assert [i.accession_number for i in worklist(read_factory)] == ["ACC-G"]


def test_each_order_group_has_its_own_order_control(intake, read_factory):
    intake.handle(two_groups("G6", second_placer="PL-2", second_accession="ACC-2"))
    both = two_groups("G7", second_placer="PL-2", second_accession="ACC-2", control="CA")
    assert segments(intake.handle(both))["MSA"][1] == "AA"
    assert worklist(read_factory) == []


def test_one_order_with_two_accession_numbers_is_refused_naming_the_field(intake, read_factory):
    ack = intake.handle(two_groups("G8", second_placer="PL-G", second_accession="ACC-OTHER"))
    location, code, text = err(ack)
    assert segments(ack)["MSA"][1] == "AE"
    assert (location, code) == ("OBR^2^18", "102") and "ACC-OTHER" in text and "ACC-G" in text
    assert worklist(read_factory) == []


@pytest.mark.parametrize("version", ["2.5.1", "2.3.1"])
def test_error_location_names_the_segment_occurrence(intake, version):
    """A missing modality in the second OBR is OBR^2^24, not OBR^1^24 (ERR-2 ERL / ERR-1 ELD: segment
    sequence, HL7 v2.5.1 2.15.5; e13 of the audit)."""
    ack = intake.handle(two_groups("G9", version=version, first_extra=[FIRST_IPC], second_modality="")
                        .replace(b"MRH^MR head", b"XYZ^Something"))
    assert segments(ack)["MSA"][1] == "AE"
    location, code, text = err(ack)
    assert (location, code) == ("OBR^2^24", "101") and "order group 2" in text


def test_error_location_names_the_field_repetition(settings, session_factory, tmp_path):
    folder = tmp_path / "profiles"
    folder.mkdir()
    text = (settings.mappings_path / "default.yaml").read_text().replace("name: default", "name: auth")
    (folder / "auth.yaml").write_text(text + "\nidentifiers:\n  patient:\n    field: PID-3\n    authorities: [HOSP]\n")
    intake = HL7Intake(settings, session_factory, ProfileSet(folder).get("auth"))
    too_long = "X" * 80
    ack = intake.handle(adt("A04", "R-1", pid=f"OTHER^^^ELSE~{too_long}").replace(b"|2.3.1", b"|2.5"))
    location, code, text = err(ack)
    assert segments(ack)["MSA"][1] == "AE" and location == "PID^1^3^2", (location, text)


def test_warning_err_carries_its_location(intake):
    raw = hl7("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ORM^O01|W-3|P|2.5",
              "PID|||PAT-W^^^HOSP||WARN^WILMA||19800101|F", "ORC|NW|PL-W3^HIS|||||^^^20261204090000",
              "OBR|1|PL-W3^HIS||CTH^CT head^L||||||||||||||ACC-W3|RP-W|SPS-W||||CT",
              "ORC|NW|PL-W3^HIS|||||^^^2026ABCD",
              "OBR|2|PL-W3^HIS||CTC^CT chest^L||||||||||||||ACC-W3|RP-W2|SPS-W2||||CT")
    fields = segments(intake.handle(raw))["ERR"]
    assert fields[2] == "ORC^2^7" and fields[4] == "W" and "2026ABCD" in fields[8]


def test_reprocess_refuses_what_was_applied_and_keeps_its_record(intake, session_factory):
    """e6 of the audit: reprocessing a PROCESSED NW applied it again, turned it into ERROR/AE and wiped its
    change record. Now: Conflict, nothing changes; a resend is still a duplicate of it."""
    from app.errors import Conflict

    first = intake.handle(orm("NW", "R1"))
    with pytest.raises(Conflict, match="PROCESSED"):
        intake.reprocess(1)
    with unit_of_work(session_factory) as session:
        row = session.get(InboundMessage, 1)
        assert (row.status, row.ack_code, row.attempts, row.ack) == (MessageStatus.PROCESSED, "AA", 1, first)
        assert row.changes
    assert intake.handle(orm("NW", "R1")) == first
    with pytest.raises(Conflict, match="DUPLICATE"):
        intake.reprocess(2)
    assert intake.reprocess(1, dry_run=True).status is MessageStatus.PROCESSED  # a dry run shows what it is


def test_reprocess_of_a_batch_applies_only_its_failed_messages(intake, session_factory, read_factory):
    batch = (b"BHS|^~\\&|HIS|HOSP|RIS|RAD|20261203||||B-R\r" + orm("NW", "BR1") +
             orm("CA", "BR2", placer="PL-200", accession="ACC-200") + b"BTS|2\r")
    intake.handle(batch)
    intake.handle(orm("NW", "BR3", placer="PL-200", accession="ACC-200"))
    result = intake.reprocess(1)
    assert result.status is MessageStatus.PROCESSED
    with unit_of_work(session_factory) as session:
        rows = {m.control_id: m for m in session.scalars(select(InboundMessage))}
        assert (rows["BR1"].status, rows["BR1"].attempts) == (MessageStatus.PROCESSED, 1)
        assert rows["BR2"].status is MessageStatus.PROCESSED
    assert [i.accession_number for i in worklist(read_factory)] == ["ACC-100"]


# MSH-11 / MSH-12 (HL7 v2.5.1 2.9.2, tables 0103 and 0104) -------------------------------------------------
@pytest.mark.parametrize("label, old, new, code, location", [
    ("MSH-12 empty", b"|P|2.3.1", b"|P|", "203", "MSH^1^12"),
    ("MSH-12 9.9", b"|P|2.3.1", b"|P|9.9", "203", "MSH^1^12"),
    ("MSH-12 2.1", b"|P|2.3.1", b"|P|2.1", "203", "MSH^1^12"),
    ("MSH-11 Q", b"|P|2.3.1", b"|Q|2.3.1", "202", "MSH^1^11"),
    ("MSH-11 empty", b"|P|2.3.1", b"||2.3.1", "202", "MSH^1^11"),
    ("MSH-11 X", b"|P|2.3.1", b"|X|2.3.1", "202", "MSH^1^11"),
])
def test_unsupported_processing_id_or_version_is_refused(intake, read_factory, session_factory, label, old, new,
                                                          code, location):
    ack = intake.handle(orm("NW", "V1").replace(old, new))
    header = segments(ack)["MSH"]
    assert segments(ack)["MSA"][1:3] == ["AR", "V1"], label
    assert err(ack)[:2] == (location, code)
    assert header[10] and header[11]          # the ACK's own MSH-11 and MSH-12 are never empty
    assert worklist(read_factory) == []
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(InboundMessage)).one().status is MessageStatus.REJECTED


@pytest.mark.parametrize("version", ["2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"])
def test_versions_22_to_28_are_applied(intake, read_factory, version):
    ack = intake.handle(orm("NW", "V2").replace(b"|P|2.3.1", f"|P|{version}".encode()))
    assert segments(ack)["MSA"][1] == "AA"
    assert len(worklist(read_factory)) == 1


def test_a_training_message_is_answered_but_never_applied(intake, read_factory, session_factory):
    """MSH-11 T (training): checked and acknowledged like any other, kept out of production data."""
    ack = intake.handle(orm("NW", "T1").replace(b"|P|2.3.1", b"|T|2.5"))
    assert segments(ack)["MSA"][1] == "AA" and segments(ack)["MSH"][10] == "T"
    assert segments(ack)["ERR"][2] == "MSH^1^11" and "training" in segments(ack)["ERR"][8]
    bad = intake.handle(orm("NW", "T2", modality="", code="XYZ^Thing^L").replace(b"|P|2.3.1", b"|T|2.5"))
    assert segments(bad)["MSA"][1] == "AE"    # the check is real
    assert worklist(read_factory) == []
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(Order)).all() == [] and session.scalars(select(Patient)).all() == []
        assert session.scalars(select(InboundMessage).order_by(InboundMessage.id)).first().changes == []


def test_accepted_processing_ids_are_a_setting(settings, session_factory, read_factory):
    import dataclasses

    from config.settings import load_settings

    assert load_settings(env={}).hl7_processing_ids == ("P", "D")            # D applied by default
    assert load_settings(env={"RIS_HL7_PROCESSING_IDS": "P"}).hl7_processing_ids == ("P",)
    strict = HL7Intake(dataclasses.replace(settings, hl7_processing_ids=("P",)), session_factory,
                       ProfileSet(settings.mappings_path).get("default"))
    refused = strict.handle(orm("NW", "S0", placer="PL-D", accession="ACC-D").replace(b"|P|2.3.1", b"|D|2.3.1"))
    assert segments(refused)["MSA"][1] == "AR" and err(refused)[:2] == ("MSH^1^11", "202")
    lenient = HL7Intake(dataclasses.replace(settings, hl7_processing_ids=("P", "D"), hl7_training_processing_ids=()),
                        session_factory, ProfileSet(settings.mappings_path).get("default"))
    assert segments(lenient.handle(orm("NW", "S1").replace(b"|P|2.3.1", b"|D|2.3.1")))["MSA"][1] == "AA"
    assert segments(lenient.handle(orm("NW", "S2", placer="PL-T", accession="ACC-T")
                                   .replace(b"|P|2.3.1", b"|T|2.3.1")))["MSA"][1] == "AR"
    assert [i.accession_number for i in worklist(read_factory)] == ["ACC-100"]


def _aged_messages(intake, session_factory) -> None:
    from app.models import utcnow

    intake.handle(orm("NW", "P1"))
    intake.handle(orm("CA", "P2", placer="NOPE"))   # ERROR
    with unit_of_work(session_factory) as session:
        for m in session.scalars(select(InboundMessage)):
            m.received_at = utcnow() - dt.timedelta(days=100)


def test_retention_prunes_errors_when_the_setting_asks(intake, session_factory):
    from config.settings import load_settings
    from interfaces.scheduler.jobs import make_scheduler

    _aged_messages(intake, session_factory)
    settings = load_settings(env={"RIS_MESSAGE_RETENTION_INCLUDE_ERRORS": "yes"})
    assert settings.message_retention_include_errors is True
    scheduler = make_scheduler(settings, session_factory, intake)
    job = scheduler.get_job("prune_messages")
    assert job.args[1:] == (90.0, True)
    assert job.func(*job.args) == 2
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(InboundMessage)).all() == []


@pytest.mark.parametrize("argv, env, left", [
    (["messages", "prune"], {}, [MessageStatus.ERROR]),
    (["messages", "prune", "--include-errors"], {}, []),
    (["messages", "prune"], {"RIS_MESSAGE_RETENTION_INCLUDE_ERRORS": "1"}, []),
    (["messages", "prune", "--days", "200"], {}, [MessageStatus.PROCESSED, MessageStatus.ERROR]),
])
def test_ris_messages_prune(intake, session_factory, settings, monkeypatch, capsys, argv, env, left):
    from interfaces.cli import main

    _aged_messages(intake, session_factory)
    monkeypatch.setenv("RIS_DATABASE_URL", settings.database)
    monkeypatch.setenv("RIS_DATA_DIR", str(settings.data_dir))
    monkeypatch.delenv("RIS_MESSAGE_RETENTION_INCLUDE_ERRORS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{2 - len(left)} messages older than" in out
    with unit_of_work(session_factory) as session:
        assert [m.status for m in session.scalars(select(InboundMessage).order_by(InboundMessage.id))] == left


def test_ordering_keys_name_every_patient_of_the_message(intake):
    from interfaces.mllp.framing import FrameEvent

    def keys(raw: bytes):
        return intake.ordering_key(FrameEvent(payload=raw, size=len(raw)))  # as the MLLP server calls it

    assert keys(orm("NW", "K1")) == ("patient:PAT-1",)
    assert keys(a40("K2", "NEW-1", "OLD-1")) == ("patient:NEW-1", "patient:OLD-1")
    two_pairs = hl7("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203||ADT^A40^ADT_A39|K3|P|2.5", "EVN|A40",
                    "PID|||S1~X9^^^H", "MRG|M1^^^H", "PID|||S2^^^H", "MRG|M2^^^H")
    assert keys(two_pairs) == ("patient:S1", "patient:S2", "patient:M1", "patient:M2")
    assert keys(adt("A08", "K4").replace(b"\r", b"\n")) == ("patient:PAT-1",)
    assert keys(b"MSH|^~\\&|A|B|C|D|2026||MFN^M02|K5|P|2.5\rMFI|PRA\r") is None


# Enhanced acknowledgment mode: the application ACK as a message of its own (HL7 v2.5.1 2.9.3) ---------------
def _enhanced(message: bytes, accept: str, application: str) -> bytes:
    head, rest = message.split(b"\r", 1)
    return head + f"|||{accept}|{application}".encode() + b"\r" + rest


def test_application_ack_is_sent_to_the_senders_destination_over_mllp(settings, session_factory):
    """MSH-15 AL + MSH-16 AL: the connection gets CA; the AE goes to the sender's application through the
    outbox and a real MLLP listener receives it, MSA-2 naming the failed message."""
    import dataclasses

    from interfaces.mllp import MLLPServer
    from interfaces.outbound.dispatcher import build_dispatcher, route_destinations

    received: list[bytes] = []

    def his(event, peer):  # the sender's application: answers our ACK message with a commit ACK
        received.append(event.payload)
        control = event.payload.split(b"\r")[0].split(b"|")[9]
        return b"MSH|^~\\&|HIS|HOSP|RIS|RADIOLOGY|20261203||ACK|H1|P|2.5.1\rMSA|CA|" + control + b"\r"

    listener = MLLPServer(his, "127.0.0.1", 0)
    listener.start()
    try:
        spec = f"hisack=127.0.0.1:{listener.port};kinds=hl7.application_ack;application=HIS;facility=HOSP"
        configured = dataclasses.replace(settings, outbound_destinations=(spec,))
        route_destinations(configured, session_factory)
        intake = HL7Intake(configured, session_factory, ProfileSet(settings.mappings_path).get("default"))
        reply = intake.handle(_enhanced(orm("CA", "EA-1", placer="NOPE"), "AL", "AL"))
        assert segments(reply)["MSA"][1:3] == ["CA", "EA-1"]
        ok = intake.handle(_enhanced(orm("NW", "EA-2"), "AL", "ER"))   # ER: no application ACK for a success
        assert segments(ok)["MSA"][1] == "CA"
        with unit_of_work(session_factory) as session:
            first = session.scalars(select(InboundMessage).order_by(InboundMessage.id)).first()
            assert "queued for hisack" in first.warnings
        dispatcher = build_dispatcher(configured, session_factory)
        try:
            assert dispatcher.run_once() == {"hisack": 1}
        finally:
            dispatcher.close()
        [sent] = received
        lines = sent.split(b"\r")
        assert lines[1].startswith(b"MSA|AE|EA-1|")   # v2.3.1: MSA-3 carries the text
        assert lines[0].split(b"|")[4:6] == [b"HIS", b"HOSP"]     # to the sender's application and facility
        assert b"unknown order" in sent
    finally:
        listener.stop()


def test_application_ack_without_a_destination_is_kept_and_said_so(intake, session_factory):
    reply = intake.handle(_enhanced(orm("CA", "EA-3", placer="NOPE"), "AL", "AL"))
    assert segments(reply)["MSA"][1] == "CA"
    with unit_of_work(session_factory) as session:
        row = session.scalars(select(InboundMessage)).one()
        assert segments(row.ack)["MSA"][1] == "AE"                 # the application ACK, kept
        assert "application ACK AE not sent: no outbound destination" in row.warnings


def test_accept_never_application_ack_on_the_connection(intake):
    """MSH-15 NE (or empty) with MSH-16 AL: no accept ACK is due, the application ACK answers on the connection;
    MSH-15 AL with MSH-16 NE (BUG-10's header): the accept ACK only - the sender asked for no application ACK."""
    assert segments(intake.handle(_enhanced(orm("CA", "EA-4", placer="NOPE"), "NE", "AL")))["MSA"][1] == "AE"
    assert segments(intake.handle(_enhanced(orm("CA", "EA-5", placer="NOPE"), "", "AL")))["MSA"][1] == "AE"
    assert segments(intake.handle(_enhanced(orm("NW", "EA-6"), "AL", "NE")))["MSA"][1] == "CA"


def test_placer_numbers_without_a_namespace_still_make_two_orders(intake, session_factory):
    raw = hl7("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ORM^O01|NS-1|P|2.3.1", "PID|||PAT-N^^^HOSP||NS^NINA",
              "ORC|NW|PL-N1", "OBR|1|PL-N1||CTH^CT head^L||||||||||||||ACC-N1||||||CT",
              "ORC|NW|PL-N2", "OBR|1|PL-N2||MRH^MR head^L||||||||||||||ACC-N2||||||MR",
              "ORC|NW", "OBR|2|||MRC^MR chest^L||||||||||||||||||||MR")   # no number: part of PL-N2
    assert segments(intake.handle(raw))["MSA"][1] == "AA"
    with unit_of_work(session_factory) as session:
        orders = {o.placer_order_number: (o.accession_number, [p.code_value for p in o.procedures])
                  for o in session.scalars(select(Order))}
    assert orders == {"PL-N1": ("ACC-N1", ["CTH"]), "PL-N2": ("ACC-N2", ["MRH", "MRC"])}


def test_an_error_about_the_second_order_names_its_own_fields(intake):
    """A service error (here: the accession of the second order belongs to another order) names the field of
    the order it is about: the values of each order command remember where they were read (OBR^2^18)."""
    intake.handle(orm("NW", "O-1"))                       # ACC-100 exists
    ack = intake.handle(two_groups("O-2", second_placer="PL-2", second_accession="ACC-100"))
    assert segments(ack)["MSA"][1] == "AE"
    location, code, text = err(ack)
    assert (location, code) == ("OBR^2^18", "205") and "ACC-100" in text
