"""Site profiles against real senders' messages from ../shared/corpus/hl7 (skipped with a message
when ../shared is absent): the shipped example profile, and a code-table profile for a JAHIS /
SS-MIX2 sender whose orders carry only JJ1017 procedure codes (no modality field at all).

The profiles written here are synthetic test profiles; the corpus files are read in place.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from sqlalchemy import select

from app.db import unit_of_work
from app.models import InboundMessage, MessageStatus
from config.settings import REPO_ROOT
from interfaces.hl7.intake import HL7Intake
from mappings.profile import ProfileSet
from tests.corpus import corpus_path
from tests.mappings.fixtures import folder_with, rewrite
from tests.test_intake import err, segments

# The SS-MIX2 sample's JJ1017 codes (the parent order and its four child orders), as an analyst
# would list them for a site that sends them.
JJ1017 = """\
name: ssmix2-jj1017
extends: default
senders: [HIS123^SEND]
step:
  modality:
    from: [{path: OBR-4.1, table: jj1017, column: modality}]
    as: modality
    required: true
  station_aets: {from: [{path: OBR-4.1, table: jj1017, column: station_aet, missing: skip}]}
tables:
  jj1017:
    '1000000000000000': {modality: CR, description: X-ray, station_aet: CR_ROOM1}
    '10000002000102000000010000000000': {modality: CR, description: Chest AP standing}
    '10000002000106000000010000000000': {modality: CR, description: Chest LAT standing}
    '10000002500102000000010000000000': {modality: CR, description: Abdomen AP standing}
    '10000002500602000000010000000000': {modality: CR, description: Abdomen decubitus}
"""


@pytest.fixture
def shipped(settings, session_factory):
    # D (debugging, MSH-11 of the 1994 HAPI samples) applied like P, so that the mapping is what is tested
    return HL7Intake(dataclasses.replace(settings, hl7_processing_ids=("P", "D")), session_factory,
                     ProfileSet(REPO_ROOT / "mappings", "default"))


def test_jj1017_codes_give_the_modality_through_a_code_table(settings, session_factory, tmp_path):
    raw = corpus_path("hl7", "omg_o19_v25_ssmix2_iso2022jp_xray_4_child_orders.hl7").read_bytes()
    folder = folder_with(tmp_path, ssmix2=JJ1017)
    intake = HL7Intake(dataclasses.replace(settings, mappings_dir=str(folder)), session_factory,
                       ProfileSet(folder, "default"))
    trial = intake.trial(raw)
    assert trial.profile.name == "ssmix2-jj1017"
    assert trial.result.ack_code == "AA", trial.result.error
    [command] = trial.commands                   # one order: the children (ORC CH, ORC-8 parent) belong to it
    assert command.order.ref.placer_order_number == "000201101200100"
    procedures = command.order.procedures
    # SOURCES.md: four requested procedures under the parent order (the parent's OBR describes the whole)
    assert [p.code_value for p in procedures] == ["10000002000102000000010000000000",
                                                  "10000002000106000000010000000000",
                                                  "10000002500102000000010000000000",
                                                  "10000002500602000000010000000000"]
    assert {step.modality for proc in procedures for step in proc.steps} == {"CR"}
    assert [proc.steps[0].station_aets for proc in procedures] == [(), (), (), ()]
    assert len(trial.worklist) == 4
    # the default profile cannot map it (corpus expectation "needs a code table in the site's profile")
    assert intake.trial(raw, profile_name="default").result.ack_code == "AE"


def test_the_example_profile_reads_ipc_fields_of_a_dcm4che_omi(shipped):
    raw = corpus_path("hl7", "omi_o23_v251_dcm4che_ipc_two_station_aets.hl7").read_bytes()
    trial = shipped.trial(raw, profile_name="northwind")
    assert trial.result.ack_code == "AA", trial.result.error
    [item] = trial.worklist
    assert (item.accession_number, item.modality) == ("AccessionNumber", "CT")
    assert item.station_aets == ("ScheduledStationAET1", "ScheduledStationAET2")
    assert item.patient_id == "PID_1"            # no NWH identifier: the first repetition (otherwise: first)


@pytest.mark.parametrize("name, code", [
    ("orm_o01_v231_dcm4che_ihe_obr18_zds.hl7", "P1"),
    ("orm_o01_v22_hapi_nw_no_filler_lf.hl7", "38067"),
])
def test_the_example_profile_names_codes_its_table_lacks(shipped, name, code):
    trial = shipped.trial(corpus_path("hl7", name).read_bytes(), profile_name="northwind")
    assert trial.result.ack_code == "AE"
    assert trial.result.error == f"profile 'northwind': table 'procedures' has no entry '{code}'"


def test_a_corpus_order_refused_for_a_missing_code_is_applied_once_the_table_has_it(settings, session_factory,
                                                                                     tmp_path):
    raw = corpus_path("hl7", "orm_o01_v231_dcm4che_ihe_obr18_zds.hl7").read_bytes()
    folder = folder_with(tmp_path)
    site = (REPO_ROOT / "mappings" / "northwind.yaml").read_text().replace("NORTHWIND^NORTH", "MESA_OF^XYZ_RADIOLOGY")
    shutil.copy(REPO_ROOT / "mappings" / "default.yaml", folder / "default.yaml")
    rewrite(folder / "northwind.yaml", site)
    intake = HL7Intake(dataclasses.replace(settings, mappings_dir=str(folder)), session_factory,
                       ProfileSet(folder, "default", check_interval=0.0))
    ack = intake.handle(raw)
    assert segments(ack)["MSA"][1] == "AE"
    assert err(ack)[1:] == ("103", "profile 'northwind': table 'procedures' has no entry 'P1'")

    rewrite(folder / "northwind.yaml", site.replace(
        "  procedures:\n", "  procedures:\n    P1: {modality: MR, description: Procedure 1, station_aet: MR_P1}\n"))
    with unit_of_work(session_factory) as session:
        message_id = session.scalars(select(InboundMessage.id)).one()
    result = intake.reprocess(message_id)
    assert (result.status, result.ack_code) == (MessageStatus.PROCESSED, "AA")
