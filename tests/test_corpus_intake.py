"""Every HL7 message of ../shared/corpus (hl7/ and bugs/; the framing cases of bugs/ over MLLP) through the
intake, with the behaviour ../shared/corpus/SOURCES.md and bugs/README.md state for it."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import select

from app.db import unit_of_work
from app.models import InboundMessage, Patient
from app.queries.worklist import Text, WorklistQuery, find_worklist_items
from interfaces.hl7.charsets import decode_message
from interfaces.hl7.tokenizer import parse
from tests.corpus import CORPUS, corpus_path

FILES = sorted(p.name for p in (CORPUS / "hl7").glob("*.hl7")) if CORPUS.is_dir() else ["(corpus absent)"]

# file -> ACK code the default profile gives (SOURCES.md allows AE/AR where noted).
EXPECTED_ACK = {
    "adt_a01_v25_hapi_pam_broken_msh2_utf8.hl7": "AR",         # MSH-2 mangled
    "adt_a04_v251_nhapi_minimal_pid2_only.hl7": "AE",          # no PID-3
    "adt_a28_v25_nhapi_minimal_pid2_only.hl7": "AE",           # no PID-3
    "msh_only_v231_openmrs_msh9_missing_message_code.hl7": "AR",
    "orm_o01_v231_nhapi_lab_order_not_imaging.hl7": "AE",      # not an imaging order: no modality
    "orm_o01_v24_mirth_whitespace_padded_crlf.hl7": "AE",      # ORM without ORC/OBR
    "orm_o01_v231_hapi_utf8_slovenian_af.hl7": "AR",           # MSH-11 '1' (and ORC-1 AF unsupported)
    # ORC-1 XR / CR (filler-side codes): "ACK AE 'unsupported order control'" (SOURCES.md), code 103 (table 0119)
    "orm_o01_v22_hapi_xr_changed_as_requested_lf.hl7": "AE",
    "orm_o01_v22_hapi_cr_canceled_as_requested_lf.hl7": "AE",
    "orm_o01_v24_screenit_od_ca_trailing_pipes_lf.hl7": "AE",  # OD honoured, but the order is unknown
    "adt_a47_v251_dcm4che_change_patient_id.hl7": "AE",        # the prior identifier is unknown here
    # JJ1017 codes only, no modality field: needs a code table in the site's profile
    "omg_o19_v25_ssmix2_iso2022jp_xray_4_child_orders.hl7": "AE",
    "orm_o01_v231_openmrs_ca_cancel.hl7": "AE",                # cancel of an unknown order
    "orm_o01_v231_openmrs_xo_change.hl7": "AE",                # change of an unknown order
    "orm_o01_v23_nhapi_ca_italian_xray.hl7": "AE",             # cancel of an unknown order
    "orm_o01_v24_screenit_dc_trailing_space_lf.hl7": "AE",     # discontinue of an unknown order
    "orm_o01_v24_mirth_xo_crlf_nonhl7_dates.hl7": "AE",        # XO of an unknown order (no modality either)
    "orm_o01_v24_screenit_xo_sc_mammo_lf.hl7": "AE",           # XO of an unknown order
}
# Refused for MSH-11 (ERR code 202, HL7 table 0357): processing id not accepted.
# MSH-11 D (debugging) is applied like P by default (RIS_HL7_PROCESSING_IDS=P,D), as SOURCES.md says for the files
# that carry it; '1' is no processing id at all.
PROCESSING_ID_REFUSED = {"orm_o01_v231_hapi_utf8_slovenian_af.hl7"}
# Batches: each message is applied and answered; the answer is a batch of ACKs (HL7 v2.5.1 2.10.3).
BATCHES = {"batch_fhs_bhs_no_trailers_orm_v24_mirth_crlf.hl7": ["AE"],      # XO of an unknown order
           "batch_file_fhs_bhs_adt_a04_v25_pythonhl7.hl7": ["AA"],
           "siu_batch_s12_s14_s15_v23_mirth_no_bhs.hl7": ["AA", "AA", "AA"]}


def msas(ack: bytes) -> list[list[str]]:
    return [line.split(line[3]) for line in ack.decode("latin-1").split("\r") if line.startswith("MSA")]


def msa(ack: bytes) -> list[str]:
    [line] = msas(ack)
    return line


@pytest.mark.corpus
@pytest.mark.parametrize("name", FILES)
def test_every_corpus_message_is_stored_and_answered(intake, session_factory, name):
    raw = corpus_path("hl7", name).read_bytes()
    ack = intake.handle(raw, peer="test")
    if name in BATCHES:
        assert [m[1] for m in msas(ack)] == BATCHES[name]
        with unit_of_work(session_factory) as session:
            rows = session.scalars(select(InboundMessage).order_by(InboundMessage.id)).all()
        parent, children = rows[0], rows[1:]
        assert parent.raw == raw and parent.ack == ack and parent.message_type == "BATCH"
        assert [c.ack_code for c in children] == BATCHES[name]
        assert all(c.batch_fk == parent.id and c.ack.decode("latin-1").strip("\r") in ack.decode("latin-1")
                   for c in children)
        assert ack.startswith(b"FHS" if raw.lstrip().startswith(b"FHS") else b"BHS")
        return
    with unit_of_work(session_factory) as session:
        stored = session.scalars(select(InboundMessage)).one()
    assert stored.raw == raw
    code = stored.ack_code  # the application outcome; the reply may be an accept ACK (enhanced mode)
    header = parse(decode_message(raw).text) if code != "AR" or stored.message_type else None
    if header is not None and header.value("MSH", 15).strip() == "AL":  # enhanced mode: accept ACK
        assert msa(ack)[1] == ("CR" if code == "AR" else "CA")
    else:
        assert ack == stored.ack
    if name in EXPECTED_ACK:
        assert code == EXPECTED_ACK[name], stored.error
        if name in PROCESSING_ID_REFUSED:
            assert stored.error.startswith("MSH-11 gives processing id")
            assert re.search(rb"MSH\^1\^11[|^~].*202", stored.ack)      # ERR: MSH-11, code 202
    elif name == "oru_r01_v22_hapi_msa_in_oru_inline_obx.hl7":
        assert code == "AR"  # comment lines before MSH: not an HL7 message as it stands
    else:
        assert code == "AA", stored.error
    if stored.control_id:
        assert msa(ack)[2] == stored.control_id


@pytest.mark.corpus
def test_a24_is_acknowledged_without_action_and_its_training_id_keeps_it_out(intake, session_factory):
    """SOURCES.md: "A24 links 11111 and 22222: either record the link or ACK AA/CA without action". MSH-11 is T
    (training): checked and acknowledged, never applied; MSH-15 AL: the accept ACK CA answers."""
    ack = intake.handle(corpus_path("hl7", "adt_a24_v24_hapi_custom_delimiters_crlf.hl7").read_bytes())
    assert msa(ack)[1] == "CA"
    with unit_of_work(session_factory) as session:
        stored = session.scalars(select(InboundMessage)).one()
        assert (stored.status.value, stored.ack_code, stored.message_type) == ("PROCESSED", "AA", "ADT^A24")
        assert "acknowledged without action" in stored.warnings and "training" in stored.warnings
        assert session.scalars(select(Patient)).all() == []
    fields = parse(decode_message(ack).text)  # the sender's own delimiters ('^' fields)
    assert fields.value("MSA", 2) == "2003582144"


def item_for(read_factory, **keys):
    with unit_of_work(read_factory) as session:
        return find_worklist_items(session, WorklistQuery(**{k: Text(v) for k, v in keys.items()}))


IMAGING_ORDERS = {
    # file: (patient id, accession or None when the engine assigns it, RP id, SPS id, modality, study UID, start, AETs)
    "orm_o01_v231_dcm4che_ihe_obr18_zds.hl7":
        ("583295", "MOF5026", "RP1026", "SPS2032", "MR", "1.113654.3.13.1026", dt.datetime(2000, 7, 1, 9), ()),
    "orm_o01_v231_openmrs_nw_zds_routine.hl7":
        ("100-07", None, "2", "2", "CT", "1.2.826.0.1.3680043.8.2186.1.1.1", dt.datetime(2013, 8, 24, 17), ()),
    "orm_o01_v22_hapi_nw_no_filler_lf.hl7":
        ("N00829", None, None, None, "CT", None, dt.datetime(1994, 5, 3, 18), ()),
    "omi_o23_v251_dcm4che_ipc_two_station_aets.hl7":
        (None, "AccessionNumber", None, None, None, None, dt.datetime(2000, 8, 16, 15, 10), None),
    "omi_o23_v251_dcm4che_2021_ipc_protocol_code.hl7":
        (None, "ACC", None, None, None, "1.2.392.200036.9125.0.199402091242.1", None, ("MODALITY",)),
    "orm_o01_named_but_msh9_omi_o23_dcm4che_zds.hl7": (None, "AccessionNumber", None, None, None, None, None, None),
}


@pytest.mark.corpus
@pytest.mark.parametrize("name", sorted(IMAGING_ORDERS))
def test_imaging_orders_become_worklist_items(intake, read_factory, name):
    pid, accession, rp, sps, modality, study, start, aets = IMAGING_ORDERS[name]
    ack = intake.handle(corpus_path("hl7", name).read_bytes())
    assert msa(ack)[1] in ("AA", "CA")  # CA: the sender asked for an accept ACK (MSH-15 AL)
    with unit_of_work(read_factory) as session:
        [item] = find_worklist_items(session, WorklistQuery())
    if accession is None:
        assert item.accession_number.startswith("RIS")  # assigned by the engine as Order Filler
    else:
        assert item.accession_number == accession
    expected = {"patient_id": pid, "requested_procedure_id": rp, "sps_id": sps, "modality": modality,
                "study_instance_uid": study, "scheduled_start": start, "station_aets": aets}
    for attr, value in expected.items():
        if value is not None:
            assert getattr(item, attr) == value, attr
    assert item.modality and item.study_instance_uid


@pytest.mark.corpus
def test_two_station_aets_both_match(intake, read_factory):
    intake.handle(corpus_path("hl7", "omi_o23_v251_dcm4che_ipc_two_station_aets.hl7").read_bytes())
    [item] = item_for(read_factory)
    assert len(item.station_aets) == 2
    for aet in item.station_aets:
        assert [i.accession_number for i in item_for(read_factory, station_aet=aet)] == ["AccessionNumber"]


@pytest.mark.corpus
def test_whitespace_padded_ids_are_trimmed(intake, session_factory):
    intake.handle(corpus_path("hl7", "adt_a01_v23_mirth_lf_fictional.hl7").read_bytes())
    intake.handle(corpus_path("hl7", "adt_a04_v23_mirth_lf.hl7").read_bytes())  # same control id, other content
    with unit_of_work(session_factory) as session:
        [patient] = session.scalars(select(Patient)).all()
        assert (patient.patient_id, patient.name) == ("135769", "MOUSE^MICKEY")


@pytest.mark.corpus
def test_iso2022jp_patient_name(intake, session_factory):
    ack = intake.handle(corpus_path("hl7", "adt_a08_v25_ssmix2_iso2022jp_kanji_kana.hl7").read_bytes())
    assert msa(ack)[1] == "AA"
    with unit_of_work(session_factory) as session:
        patient = session.scalars(select(Patient)).one()
        assert patient.patient_id == "9999013"
        assert "患者" in patient.name


@pytest.mark.corpus
def test_latin1_name_and_legal_id(intake, session_factory):
    intake.handle(corpus_path("hl7", "adt_a31_v25_fr_pam_latin1_ins_vid_components.hl7").read_bytes())
    with unit_of_work(session_factory) as session:
        patient = session.scalars(select(Patient)).one()
        assert (patient.patient_id, patient.name) == ("123456789", "Lastname^Firstname")
        msg = session.scalars(select(InboundMessage)).one()
        assert msg.charset == "iso8859-1" and "1er étage" in msg.raw.decode(msg.charset)


@pytest.mark.corpus
def test_birth_date_is_never_shifted_by_an_offset(intake, session_factory):
    intake.handle(corpus_path("hl7", "adt_a31_v23_hapi_tz_offset_crlf_empty_pd1.hl7").read_bytes())
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(Patient)).one().birth_date == dt.date(1970, 10, 4)


# bugs/ --------------------------------------------------------------------------------------
@pytest.mark.corpus
def test_bug03_order_without_study_uid_gets_a_stable_derived_uid(intake, read_factory, settings):
    intake.handle(corpus_path("bugs", "bug03_omi_o23_ipc_without_study_uid.hl7").read_bytes())
    [item] = item_for(read_factory)
    assert item.accession_number == "ACC-5003"
    assert (item.requested_procedure_id, item.sps_id) == ("ACC-5003", "ACC-5003")
    assert item.study_instance_uid.startswith(settings.uid_root + ".")
    from app.uids import derived_uid
    assert item.study_instance_uid == derived_uid(settings.uid_root, "ACC-5003", "ACC-5003")


@pytest.mark.corpus
@pytest.mark.parametrize("name, accession", [("bug08_orm_with_70kb_of_notes.hl7", "ACC-5008"),
                                             ("bug16_orm_lf_only_msh_without_trailing_bar.hl7", "ACC-5016")])
def test_bug08_bug16_orders(intake, read_factory, name, accession):
    assert msa(intake.handle(corpus_path("bugs", name).read_bytes()))[1] == "AA"
    assert [i.accession_number for i in item_for(read_factory)] == [accession]


@pytest.mark.corpus
def test_bug18_msh7_offset_is_the_default_zone(intake, read_factory):
    # Scheduled start 20240331023000 without offset, MSH-7 +0100: 01:30 UTC, which is 03:30 in
    # Europe/Berlin on the night summer time starts (02:30 does not exist there).
    intake.handle(corpus_path("bugs", "bug18_orm_msh7_offset_field_without_offset.hl7").read_bytes())
    [item] = item_for(read_factory)
    assert item.scheduled_start == dt.datetime(2024, 3, 31, 3, 30)
    assert item.birth_date == dt.date(1980, 1, 1)


@pytest.mark.corpus
def test_bug28_reused_control_id_never_two_patients_with_one_id(intake, session_factory):
    for name in ("bug28_step1_a28_pid_a.hl7", "bug28_step2_a28_pid_b_same_control_id.hl7"):
        assert msa(intake.handle(corpus_path("bugs", name).read_bytes()))[1] == "AA"
    with unit_of_work(session_factory) as session:
        ids = sorted(session.scalars(select(Patient.patient_id)))
    assert len(ids) == len(set(ids)) == 2


def run_hl7(intake, *names: str) -> list[str]:
    return [msa(intake.handle(corpus_path(*name.split("/")).read_bytes()))[1] for name in names]


@pytest.mark.corpus
def test_bug01_merge_moves_open_worklist_items(intake, read_factory):
    assert run_hl7(intake, "bugs/bug01_step1_orm_nw_old_patient.hl7", "bugs/bug01_step2_adt_a40_merge.hl7") == ["AA", "AA"]
    assert [(i.accession_number, i.patient_id) for i in item_for(read_factory, patient_id="P-NEW-01")] == \
        [("ACC-5001", "P-NEW-01")]
    assert item_for(read_factory, patient_id="P-OLD-01") == []
    # replayed: idempotent
    assert run_hl7(intake, "bugs/bug01_step2_adt_a40_merge.hl7") == ["AA"]
    assert len(item_for(read_factory, patient_id="P-NEW-01")) == 1


@pytest.mark.corpus
def test_a40_with_two_pairs_merges_both(intake, session_factory):
    with unit_of_work(session_factory) as session:
        for pid in ("MR1", "MR2", "MR3", "MR4"):
            session.add(Patient(patient_id=pid, issuer="XYZ", name=f"P^{pid}", sex=""))
    assert run_hl7(intake, "hl7/adt_a40_v25_lfh_two_pid_mrg_pairs.hl7") == ["AA"]
    with unit_of_work(session_factory) as session:
        merged = {p.patient_id: p.merged_into.patient_id if p.merged_into else None
                  for p in session.scalars(select(Patient))}
    assert merged == {"MR1": None, "MR2": "MR1", "MR3": None, "MR4": "MR3"}


@pytest.mark.corpus
def test_bug28_change_to_an_existing_id_is_refused(intake, session_factory):
    codes = run_hl7(intake, "bugs/bug28_step1_a28_pid_a.hl7", "bugs/bug28_step2_a28_pid_b_same_control_id.hl7",
                    "bugs/bug28_step3_a47_change_a_to_existing_b.hl7")
    assert codes == ["AA", "AA", "AE"]
    with unit_of_work(session_factory) as session:
        ids = sorted(session.scalars(select(Patient.patient_id)))
        msg = session.scalars(select(InboundMessage).where(InboundMessage.control_id == "DUPID-3")).one()
    assert ids == ["PID-A-1028", "PID-B-1028"]
    assert "already belongs to another patient" in msg.error


@pytest.mark.corpus
def test_a34_trigger_from_msh9_not_evn(intake, session_factory):
    with unit_of_work(session_factory) as session:
        session.add(Patient(patient_id="456", issuer="", name="OLD^ONE", sex=""))
    assert run_hl7(intake, "hl7/adt_a34_v23_lfh_evn_says_a40_no_msh7.hl7") == ["AA"]
    with unit_of_work(session_factory) as session:
        old = session.scalars(select(Patient).where(Patient.patient_id == "456")).one()
        assert old.merged_into is not None and old.merged_into.patient_id == "123"


@pytest.mark.corpus
def test_siu_book_modify_cancel(intake, session_factory):
    from app.models import Appointment, AppointmentStatus

    assert [m[1] for m in msas(intake.handle(corpus_path("hl7", "siu_batch_s12_s14_s15_v23_mirth_no_bhs.hl7")
                                             .read_bytes()))] == ["AA", "AA", "AA"]
    with unit_of_work(session_factory) as session:
        appointment = session.scalars(select(Appointment)).one()
        assert (appointment.filler_appointment_id, appointment.status) == ("2196178", AppointmentStatus.CANCELLED)
        assert appointment.start == dt.datetime(2011, 6, 17, 8, 45)
        assert appointment.location == "OFFICE"


@pytest.mark.corpus
def test_siu_without_sch_uses_ais_and_hex_escapes(intake, session_factory):
    from app.models import Appointment

    assert run_hl7(intake, "hl7/siu_s12_v251_dcm4che_hex_escape_ais.hl7") == ["AA"]
    with unit_of_work(session_factory) as session:
        appointment = session.scalars(select(Appointment)).one()
        assert appointment.resource == "SEPTOPLASTIA (OPERAÇÃO ISOLADA)"
        assert (appointment.start, appointment.duration_minutes) == (dt.datetime(2020, 10, 23, 8, 30), 60.0)
        assert appointment.placer_order_number == "-38521669"


@pytest.mark.corpus
def test_oru_report_is_kept_for_its_order(intake, session_factory):
    from app.models import Report

    assert run_hl7(intake, "hl7/oru_r01_v251_dcm4che_sr_report.hl7") == ["AA"]
    with unit_of_work(session_factory) as session:
        report = session.scalars(select(Report)).one()
        assert report.accession_number == "AccessionNumber"
        assert report.study_instance_uid == "1.2.392.200036.9125.0.198811291108.7"
        assert report.text.startswith("The right kidney is slightly enlarged")
        assert report.order is None  # no such order here: kept unlinked
    assert not item_for(session_factory)  # a report never makes a worklist item


# bugs/ through the real intake (and over MLLP where the case is about framing) -------------------------------
BUG_FILES = sorted(p.name for p in (CORPUS / "bugs").glob("*.hl7")) if CORPUS.is_dir() else ["(corpus absent)"]
# each HL7 file of bugs/ on its own, on an empty engine: what is answered on the connection
BUG_ANSWERS = {"bug10_adt_a08_hd_with_component_in_msh4.hl7": "CA",        # MSH-15 AL, MSH-16 NE (see below)
               "bug28_step3_a47_change_a_to_existing_b.hl7": "AE"}        # alone: no patient A to change


@pytest.mark.corpus
@pytest.mark.parametrize("name", BUG_FILES)
def test_every_bugs_message_is_stored_and_answered(intake, session_factory, name):
    """Every HL7 case of bugs/ through the intake; the cases' own steps and values are the tests below and
    above (BUG-01, 03, 08, 16, 18, 28 earlier in this file)."""
    raw = corpus_path("bugs", name).read_bytes()
    ack = intake.handle(raw)
    assert msa(ack)[1] == BUG_ANSWERS.get(name, "AA")
    [row] = stored_rows(session_factory)
    assert row.raw == raw and row.control_id and msa(ack)[2] == row.control_id


def stored_rows(session_factory) -> list[InboundMessage]:
    with unit_of_work(session_factory) as session:
        return session.scalars(select(InboundMessage).order_by(InboundMessage.id)).all()


@pytest.mark.corpus
def test_bug10_ack_header_through_the_intake(intake, session_factory):
    """bugs/README.md asks for MSA|AA|000000944. The message says MSH-15 AL, MSH-16 NE: enhanced mode (HL7 v2.5.1
    2.9.3, table 0155) - an accept ACK always, an application ACK never. So the answer on the connection is the
    accept ACK CA (the standard wins over the README); the application outcome AA is recorded in the store. Every
    header rule of the case holds for the ACK that is sent."""
    ack = intake.handle(corpus_path("bugs", "bug10_adt_a08_hd_with_component_in_msh4.hl7").read_bytes())
    msh, msa = (segment.split("|") for segment in ack.decode("latin-1").rstrip("\r").split("\r"))
    assert msh[2:4] == ["RIS", "RADIOLOGY"]               # MSH-3/4: ours (RIS_HL7_APPLICATION/FACILITY)
    assert msh[4:6] == ["HISCOM-ADT", "COMZIS^MS1"]       # copied as structure, no \S\
    assert msh[6] != "200702201440" and msh[8] == "ACK"   # our time; v2.2: plain ACK
    assert msh[10:12] == ["P", "2.2"]
    assert msa == ["MSA", "CA", "000000944"]
    [row] = stored_rows(session_factory)
    assert (row.status.value, row.ack_code) == ("PROCESSED", "AA") and msh[9] not in ("", "000000944")
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(Patient.patient_id)).all() == ["P-1010"]


@pytest.mark.corpus
def test_bug12_ack_msh9_through_the_intake(intake, read_factory):
    ack = intake.handle(corpus_path("bugs", "bug12_omi_o23_with_structure_id.hl7").read_bytes())
    msh, msa = (segment.split("|") for segment in ack.decode("latin-1").rstrip("\r").split("\r")[:2])
    assert (msh[8], msh[11]) == ("ACK^O23^ACK", "2.5.1")
    assert msa == ["MSA", "AA", "B12-1"]
    [item] = item_for(read_factory)
    assert (item.accession_number, item.requested_procedure_id, item.sps_id, item.modality) == \
        ("ACC-5012", "RP-5012", "SPS-5012", "US")
    assert item.study_instance_uid == "1.2.826.0.1.3680043.10.999.12"


@pytest.mark.corpus
def test_bug13_escapes_through_the_intake(intake, session_factory, read_factory):
    assert msa(intake.handle(corpus_path("bugs", "bug13_escape_e_then_r.hl7").read_bytes()))[1] == "AA"
    assert [i.accession_number for i in item_for(read_factory)] == ["ACC-5013"]
    [row] = stored_rows(session_factory)
    assert row.warnings == ""
    stored = parse(decode_message(row.raw).text)  # what the analyst's views show of the kept message
    assert stored.value("NTE", 3) == "Path: \\R\\ and share \\\\srv\\scans"


@pytest.mark.corpus
def test_bug15_final_crlf_through_the_intake(intake, session_factory):
    assert msa(intake.handle(corpus_path("bugs", "bug15_adt_a04_cr_segments_crlf_at_end.hl7").read_bytes())) == \
        ["MSA", "AA", "B15-1"]
    [row] = stored_rows(session_factory)
    assert row.warnings == "" and row.error == ""
    with unit_of_work(session_factory) as session:
        assert [(p.patient_id, p.name) for p in session.scalars(select(Patient))] == [("P-1015", "TESTCRLF^XI")]


@pytest.mark.corpus
def test_bug19_timestamps_through_the_intake(intake, session_factory):
    ack = intake.handle(corpus_path("bugs", "bug19_adt_a08_dtm_offset_and_precision.hl7").read_bytes())
    assert msa(ack)[1:3] == ["AA", "B19-1"] and "ERR" not in ack.decode("latin-1")  # no unreadable-time warning
    [row] = stored_rows(session_factory)
    assert row.warnings == ""
    with unit_of_work(session_factory) as session:
        assert [(p.patient_id, p.birth_date) for p in session.scalars(select(Patient))] == \
            [("P-1019", dt.date(1966, 12, 1))]


@pytest.fixture
def mllp_intake(intake):
    from interfaces.mllp import MLLPServer

    server = MLLPServer(intake.handle_frame, "127.0.0.1", 0, ordering_key=intake.ordering_key)
    server.start()
    yield server
    server.stop()


@pytest.mark.corpus
def test_bug06_split_frame_over_mllp_is_one_message(mllp_intake, session_factory):
    import json
    import socket

    chunks = [bytes.fromhex(c) for c in
              json.loads(corpus_path("bugs", "bug06_mllp_split_chunks.json").read_text())["chunks_hex"]]
    with socket.create_connection(("127.0.0.1", mllp_intake.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in chunks:
            sock.sendall(chunk)
        reply = _one_reply(sock)
    assert b"MSA|AA|B06-1" in reply.payload
    [row] = stored_rows(session_factory)
    assert row.raw == b"".join(chunks)[1:-2] and row.ack_code == "AA"


def _one_reply(sock):
    """The one reply frame the engine sends back (bounded: at most 100 reads)."""
    from interfaces.mllp.framing import FrameReader

    reader, events = FrameReader(), []
    for _ in range(100):
        chunk = sock.recv(4096)
        if not chunk:
            break
        events.extend(reader.feed(chunk))
        if events:
            break
    [reply] = events
    return reply


@pytest.mark.corpus
def test_bug08_70kb_order_over_mllp_in_1kb_writes(mllp_intake, session_factory, read_factory):
    import socket

    from interfaces.mllp import frame

    raw = corpus_path("bugs", "bug08_orm_with_70kb_of_notes.hl7").read_bytes()
    data = frame(raw)
    with socket.create_connection(("127.0.0.1", mllp_intake.port), timeout=10) as sock:
        for start in range(0, len(data), 1024):
            sock.sendall(data[start:start + 1024])
        reply = _one_reply(sock)
    assert b"MSA|AA|" in reply.payload
    [row] = stored_rows(session_factory)
    assert row.raw == raw and row.size > 70_000
    assert [i.accession_number for i in item_for(read_factory)] == ["ACC-5008"]
