"""What profiles map beyond fields: the order-control + order-status -> step-status table, body part, expected
duration and protocol codes, [*] sources read like single ones, the person-name policy and the character-set
policy per sender. Each through the real intake (real database), with the rows it leaves asserted."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.db import unit_of_work
from app.models import InboundMessage, Order, OrderStatus, Patient, ProcedureState, ProcedureStep, StepStatus
from app.queries.worklist import WorklistQuery, find_worklist_items
from config.settings import REPO_ROOT
from interfaces.hl7.intake import HL7Intake
from mappings.profile import ProfileSet
from tests.corpus import corpus_path
from tests.mappings.fixtures import folder_with, intake_for
from tests.test_intake import err, hl7, seg, segments


@pytest.fixture
def shipped(settings, session_factory):
    return HL7Intake(settings, session_factory, ProfileSet(REPO_ROOT / "mappings", "default", check_interval=0.0))


def northwind(ctrl: str, control: str = "NW", status: str = "SC", *, code: str = "NW-MR-KNEE^MR knee^NWLOCAL",
              placer: str = "NWP-500", accession: str = "NWACC-500", orc18: str = "", ipc: str = "") -> bytes:
    return hl7(f"MSH|^~\\&|NORTHWIND|NORTH|RIS|RAD|20261203101500||ORM^O01|{ctrl}|P|2.5.1",
               "PID|1||NW-5000^^^NWH^MR||TEST^TINA||19800101|F",
               "PV1|1|O|OUTPAT^^^NWH",
               seg("ORC", {1: control, 2: f"{placer}^NORTHWIND", 3: f"{accession}^NORTHWIND", 5: status, 18: orc18}),
               "TQ1|1||||||20261214090000",
               seg("OBR", {1: "1", 2: f"{placer}^NORTHWIND", 3: f"{accession}^NORTHWIND", 4: code}),
               *([ipc] if ipc else []))


def ack_code(ack: bytes) -> str:
    return segments(ack)["MSA"][1]


def state(session_factory, accession: str = "NWACC-500"):
    with unit_of_work(session_factory) as session:
        order = session.scalars(select(Order).where(Order.accession_number == accession)).one()
        proc = order.procedures[0]
        return order.status, proc.state, [s.status for s in proc.steps]


def offered(session_factory) -> list[str]:
    with unit_of_work(session_factory) as session:
        return [i.accession_number for i in find_worklist_items(session, WorklistQuery())]


# step_statuses ---------------------------------------------------------------------------------------------
def test_order_control_and_status_give_the_steps_status(shipped, session_factory):
    assert ack_code(shipped.handle(northwind("SS1", "NW", "HD"))) == "AA"           # NW^HD: HELD
    assert state(session_factory) == (OrderStatus.HELD, ProcedureState.SCHEDULED, [StepStatus.HELD])
    assert offered(session_factory) == []                                            # a held step is not offered
    assert ack_code(shipped.handle(northwind("SS2", "SC", "SC"))) == "AA"           # SC^SC: SCHEDULED (released)
    assert state(session_factory) == (OrderStatus.SCHEDULED, ProcedureState.SCHEDULED, [StepStatus.SCHEDULED])
    assert offered(session_factory) == ["NWACC-500"]
    assert ack_code(shipped.handle(northwind("SS3", "SC", "IP"))) == "AA"           # SC^IP: ARRIVED (checked in)
    assert state(session_factory) == (OrderStatus.SCHEDULED, ProcedureState.ARRIVED, [StepStatus.ARRIVED])
    assert offered(session_factory) == ["NWACC-500"]
    assert ack_code(shipped.handle(northwind("SS4", "SC", "CA"))) == "AA"           # no entry: status_changes CA
    assert state(session_factory) == (OrderStatus.CANCELLED, ProcedureState.CANCELLED, [StepStatus.CANCELLED])
    assert offered(session_factory) == []


def test_a_new_order_without_a_status_entry_is_scheduled(shipped, session_factory):
    assert ack_code(shipped.handle(northwind("SS5", "NW", "SC"))) == "AA"
    assert state(session_factory) == (OrderStatus.SCHEDULED, ProcedureState.SCHEDULED, [StepStatus.SCHEDULED])


def test_a_step_status_for_an_unknown_order_is_answered_ae_naming_it(shipped, session_factory):
    ack = shipped.handle(northwind("SS6", "SC", "IP", placer="NWP-404", accession="NWACC-404"))
    assert ack_code(ack) == "AE"
    assert err(ack)[1:] == ("204", "unknown order: placer order NWP-404 of NORTHWIND, filler order NWACC-404, "
                                   "accession NWACC-404")


def test_a_held_order_is_not_checked_in(shipped, session_factory):
    shipped.handle(northwind("SS7", "NW", "HD"))
    ack = shipped.handle(northwind("SS8", "SC", "IP"))
    assert ack_code(ack) == "AE"
    assert "order NWACC-500 is on hold; release it (RL) before its steps can be ARRIVED" in err(ack)[2]
    assert state(session_factory)[2] == [StepStatus.HELD]


# Body part, expected duration, protocol codes --------------------------------------------------------------
def step_rows(session_factory, accession: str = "NWACC-500"):
    with unit_of_work(session_factory) as session:
        order = session.scalars(select(Order).where(Order.accession_number == accession)).one()
        proc = order.procedures[0]
        step = proc.steps[0]
        return (proc.body_part, step.expected_duration_minutes,
                [(c.code_value, c.code_scheme, c.code_meaning) for c in step.protocol_codes])


def test_the_procedure_table_gives_body_part_duration_and_protocol_codes_and_xo_replaces_them(shipped,
                                                                                            session_factory):
    assert ack_code(shipped.handle(northwind("BP1"))) == "AA"
    assert step_rows(session_factory) == ("KNEE", 30.0, [("NWP-MRK-01", "99NWH", "MR knee routine"),
                                                         ("NWP-MRK-02", "99NWH", "MR knee cartilage")])
    assert ack_code(shipped.handle(northwind("BP2", "XO", code="NW-CT-HEAD^CT head^NWLOCAL"))) == "AA"
    assert step_rows(session_factory) == ("HEAD", 15.0, [("NWP-CTH-01", "99NWH", "CT head routine")])
    assert ack_code(shipped.handle(northwind("BP3", "XO", code="NW-XR-CHEST^Chest^NWLOCAL"))) == "AA"
    assert step_rows(session_factory) == ("CHEST", 10.0, [])


def test_ipc6_protocol_codes_of_the_message_come_before_the_table(shipped, session_factory):
    ipc = "IPC|NWACC-500|RP-1|1.2.826.0.1.3680043.10.1356.99.80|SPS-1|MR|P-A^Protocol A^99X~P-B^Protocol B^99X"
    assert ack_code(shipped.handle(northwind("BP4", ipc=ipc))) == "AA"
    assert step_rows(session_factory)[2] == [("P-A", "99X", "Protocol A"), ("P-B", "99X", "Protocol B")]


def test_a_dcm4che_omi_gives_the_protocol_code_of_ipc6(shipped, session_factory):
    # corpus: "SPS ScheduledProtocolCodeSequence from IPC-6"
    assert ack_code(shipped.handle(corpus_path("hl7", "omi_o23_v251_dcm4che_2021_ipc_protocol_code.hl7")
                                   .read_bytes())) == "AA"
    assert step_rows(session_factory, "ACC")[2] == [("ProtocolCode", "ProtocolScheme", "ProtocolMeaning")]


@pytest.mark.parametrize("tq1_6, minutes, warned", [
    ("30^min", 30.0, False), ("2^h", 120.0, False), ("90^s", 1.5, False), ("45", 45.0, False),
    ("soon", None, True), ("", None, False),
])
def test_tq1_6_service_duration_is_the_expected_duration(shipped, session_factory, tq1_6, minutes, warned):
    raw = hl7("MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||OMI^O23^OMI_O23|D-1|P|2.5.1",
              "PID|||DUR-1^^^HOSP||DAUER^DORA||19720303|F", "ORC|NW|DPL-1^HIS",
              seg("TQ1", {1: "1", 6: tq1_6, 7: "20261206100000"}), "OBR|1|DPL-1^HIS||CTA^CT angiography^L",
              "IPC|DACC-1|DRP-1|1.2.826.0.1.3680043.10.1356.99.81|DSPS-1|CT")
    assert ack_code(shipped.handle(raw)) == "AA"
    assert step_rows(session_factory, "DACC-1")[1] == minutes
    with unit_of_work(session_factory) as session:
        warnings = session.scalars(select(InboundMessage.warnings)).one()
    assert ("duration 'soon' is not a number of minutes: ignored" in warnings) is warned


# [*] sources ----------------------------------------------------------------------------------------------
STAR = """\
name: star
extends: default
senders: [STAR]
step:
  station_aets:
    from: [{path: 'IPC-9[*]', regex: '^([a-z]+_[a-z0-9]+)'}, {path: 'ORC-18[*]', table: rooms, missing: skip}]
    as: upper
tables:
  rooms:
    R1: CT_ROOM1
    R2: CT_ROOM2
"""


@pytest.mark.parametrize("ipc9, orc18, aets", [
    ("ct_room1 (main)~ct_room2", "", ["CT_ROOM1", "CT_ROOM2"]),   # regex and as: apply to every repetition
    ("", "R1~R9~R2", ["CT_ROOM1", "CT_ROOM2"]),                  # a table looks up every repetition (R9: skipped)
])
def test_every_repetition_of_a_star_source_is_read_like_a_single_value(settings, session_factory, tmp_path,
                                                                     ipc9, orc18, aets):
    intake = intake_for(settings, session_factory, folder_with(tmp_path, star=STAR))
    raw = hl7("MSH|^~\\&|STAR|HOSP|RIS|RAD|20261203120000||OMI^O23^OMI_O23|ST-1|P|2.5.1",
              "PID|||STAR-1^^^HOSP||STERN^STELLA||19720303|F", seg("ORC", {1: "NW", 2: "SPL-1^HIS", 18: orc18}),
              "TQ1|1||||||20261206100000", "OBR|1|SPL-1^HIS||CTH^CT head^L",
              seg("IPC", {1: "SACC-1", 2: "SRP-1", 3: "1.2.826.0.1.3680043.10.1356.99.82", 4: "SSPS-1", 5: "CT",
                          9: ipc9}))
    assert ack_code(intake.handle(raw)) == "AA"
    with unit_of_work(session_factory) as session:
        step = session.scalars(select(ProcedureStep)).one()
        assert step.station_aets == aets


# Person names --------------------------------------------------------------------------------------------
def patient_name(session_factory) -> str:
    with unit_of_work(session_factory) as session:
        return session.scalars(select(Patient)).one().name


def test_kanji_and_kana_repetitions_become_component_groups(shipped, session_factory):
    # corpus: "DICOM PatientName with three component groups (alphabetic empty or romaji, ideographic, phonetic)"
    raw = corpus_path("hl7", "adt_a08_v25_ssmix2_iso2022jp_kanji_kana.hl7").read_bytes()
    assert ack_code(shipped.handle(raw)) == "AA"
    assert patient_name(session_factory) == "=患者^太郎=カンジャ^タロウ"


@pytest.mark.parametrize("policy, name", [
    ("", "Lastname^Firstname"),                                   # the first repetition (D, usual name)
    ("person_names: {types: [L]}\n", "Lastname^Firstname^Firstname"),   # the legal name
    ("person_names: {types: [B, D]}\n", "Lastname^Firstname"),
])
def test_the_name_type_chooses_the_repetition(settings, session_factory, tmp_path, policy, name):
    # corpus: "Pick the legal name (type L) or the usual one (D) per configuration for DICOM PatientName"
    profile = f"name: pam\nextends: default\nsenders: [SendingApp]\n{policy}"
    intake = intake_for(settings, session_factory, folder_with(tmp_path, pam=profile),
                        hl7_processing_ids=("P", "D"))     # the sample says MSH-11 D (debugging)
    raw = corpus_path("hl7", "adt_a31_v25_fr_pam_latin1_ins_vid_components.hl7").read_bytes()
    assert ack_code(intake.handle(raw)) == "AA"
    assert patient_name(session_factory) == name


@pytest.mark.parametrize("policy, name", [
    ("{}", "DOE^JOHN^^DR^JR"),
    ("{degree: suffix}", "DOE^JOHN^^DR^JR MD"),
    ("{degree: suffix, prefix: omit}", "DOE^JOHN^^^JR MD"),
    ("{groups: false}", "DOE^JOHN^^DR^JR"),
])
def test_prefixes_and_degrees_follow_the_policy(settings, session_factory, tmp_path, policy, name):
    profile = f"name: names\nextends: default\nsenders: [NAMES]\nperson_names: {policy}\n"
    intake = intake_for(settings, session_factory, folder_with(tmp_path, names=profile))
    raw = hl7("MSH|^~\\&|NAMES|HOSP|RIS|RAD|20261203120000||ADT^A28|N-1|P|2.5",
              "PID|||N-1^^^HOSP||DOE^JOHN^^JR^DR^MD^L||19700101|M")
    assert ack_code(intake.handle(raw)) == "AA"
    assert patient_name(session_factory) == name


# Character sets ------------------------------------------------------------------------------------------
def cp1252_order(msh18: str = "", name: bytes = "NOVAK^\u0160TEFAN".encode("cp1252")) -> bytes:
    head = f"MSH|^~\\&|NORTHWIND|NORTH|RIS|RAD|20261203101900||ADT^A28|CS-1|P|2.5.1||||||{msh18}".encode()
    return head + b"\rPID|1||NW-4722^^^NWH^MR||" + name + b"||19880808|M\r"


def test_a_senders_default_character_set_decodes_what_it_does_not_declare(shipped, session_factory):
    assert ack_code(shipped.handle(cp1252_order())) == "AA"           # northwind: charset default cp1252
    assert patient_name(session_factory) == "NOVAK^\u0160TEFAN"
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(InboundMessage.charset)).one() == "cp1252"


def test_without_the_profiles_charset_the_setting_decides(settings, session_factory):
    intake = HL7Intake(settings, session_factory, ProfileSet(REPO_ROOT / "mappings", "default").get("default"))
    assert ack_code(intake.handle(cp1252_order())) == "AA"            # utf-8 (setting) fails: Latin-1, warned
    assert patient_name(session_factory) == "NOVAK^\x8aTEFAN"


@pytest.mark.parametrize("app, name", [("NORTHWIND", "M\u00c3\u009cLLER^ANNA"), ("HIS", "M\u00dcLLER^ANNA")])
def test_the_mismatch_policy_is_the_senders(shipped, session_factory, app, name):
    # declared 8859/1, bytes UTF-8: northwind believes the declaration (mismatch: declared), others prefer UTF-8
    raw = (f"MSH|^~\\&|{app}|NORTH|RIS|RAD|20261203101900||ADT^A28|CS-2|P|2.5.1||||||8859/1\r"
           f"PID|1||NW-4723^^^NWH^MR||M\u00dcLLER^ANNA||19880808|F\r").encode("utf-8")
    assert ack_code(shipped.handle(raw)) == "AA"
    assert patient_name(session_factory) == name


@pytest.mark.parametrize("raw, sender", [
    (b"MSH|^~\\&|NORTHWIND|NORTH|RIS|RAD|2026\rPID|1\r", ("NORTHWIND", "NORTH")),
    (b"\x0bMSH|^~\\&|APP^1.2^ISO|FAC^3.4^ISO|RIS\n", ("APP", "FAC")),             # MLLP start, LF, HD components
    (b"FHS|^~\\&|X\rBHS|^~\\&|Y\rMSH|^~\\&|BAPP|BFAC|R\r", ("BAPP", "BFAC")),    # a batch: its first message
    (b"MSH#*~\\&#APP#FAC#R\r", ("APP", "FAC")),                                  # the sender's own delimiters
    (b"not hl7 at all", ("", "")),
])
def test_the_sender_is_read_from_the_bytes_before_decoding(raw, sender):
    from mappings.hl7v2 import header_sender

    assert header_sender(raw) == sender
