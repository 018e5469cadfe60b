"""A folder of mapping profiles: per-sender choice, inheritance, validation with file/line/key,
hot reload (a bad file keeps the last good profile), code tables, station rules, identifier policy.

Profiles and messages here are synthetic, written for these tests.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from app.db import unit_of_work
from app.models import InboundMessage, MessageStatus
from config.settings import REPO_ROOT
from mappings.profile import ProfileError, ProfileSet, parse_profile
from tests.mappings.fixtures import DEFAULT, SITE, folder_with, intake_for, order, rewrite
from tests.test_intake import err, hl7, segments

def stored(session_factory, ctrl_id: str) -> InboundMessage:
    with unit_of_work(session_factory) as session:
        row = session.scalars(select(InboundMessage).where(InboundMessage.control_id == ctrl_id)).one()
        session.expunge(row)
        return row


# Inheritance ---------------------------------------------------------------------------------
def test_a_profile_inherits_what_it_does_not_say(tmp_path):
    profiles = ProfileSet(folder_with(tmp_path, site_b=SITE), "default")
    site, default = profiles.get("site-b"), profiles.get("default")
    assert [str(s.path) for s in site.spec("order.accession_number").sources] == ["OBR-3.1"]
    assert site.spec("patient.id") == default.spec("patient.id")           # inherited
    assert site.messages == default.messages and site.order_controls == default.order_controls
    assert site.spec("step.scheduled_start") == default.spec("step.scheduled_start")
    assert site.chain == ("site_b.yaml", "default.yaml") and site.extends == "default"
    assert [str(s) for s in site.senders] == ["SITEB^NORTH"] and default.senders == ()


def test_deep_merge_keeps_the_base_keys_a_child_does_not_replace(tmp_path):
    child = """\
    name: child
    extends: default
    step:
      scheduled_start: {from: [TQ1-7]}
    """
    site = ProfileSet(folder_with(tmp_path, child=child)).get("child")
    spec = site.spec("step.scheduled_start")
    assert [str(s.path) for s in spec.sources] == ["TQ1-7"]
    assert (spec.transform, spec.otherwise) == ("datetime", "received")   # from the base's entry


def test_the_version_changes_when_a_base_changes(tmp_path):
    folder = folder_with(tmp_path, site_b=SITE)
    before = ProfileSet(folder).get("site-b").version
    rewrite(folder / "default.yaml", DEFAULT.read_text() + "\n# a comment in the base\n")
    assert ProfileSet(folder).get("site-b").version != before


@pytest.mark.parametrize("files, file, line, key, words", [
    ({"a": "name: a\nextends: b\n", "b": "name: b\nextends: a\n"}, "a.yaml", 2, "extends",
     "inheritance cycle: a -> b -> a"),
    ({"a": "name: a\nextends: a\n"}, "a.yaml", 2, "extends", "inheritance cycle: a -> a"),
    ({"a": "name: a\nextends: nowhere\n"}, "a.yaml", 2, "extends", "no base profile named 'nowhere'"),
])
def test_bad_inheritance_is_refused(tmp_path, files, file, line, key, words):
    with pytest.raises(ProfileError) as info:
        ProfileSet(folder_with(tmp_path, **files))
    assert (info.value.file, info.value.line, info.value.key) == (file, line, key)
    assert words in info.value.problem


def test_an_error_in_an_inherited_key_names_the_file_that_wrote_it(tmp_path):
    base = "name: base\nmessages: {ORM^O01: order}\npatient:\n  id: {from: [PID-3.1], as: shout}\n"
    child = "name: child\nextends: base\norder_controls: {NW: place}\n"
    profiles = ProfileSet(folder_with(tmp_path, base=base, child=child), strict=False)
    assert {(e.file, e.line, e.key) for e in profiles.problems} == {("base.yaml", 4, "patient.id.as")}


# Validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("change, line, key, words", [
    (("column: modality}]\n    as", "column: modalty}]\n    as"), 8, "step.modality.from.0.column",
     "table 'procedures' has no column 'modalty'"),
    (("table: procedures, column: modality", "table: procs, column: modality"), 8, "step.modality.from.0.table",
     "no table 'procs'"),
    (("modality: CT,", "modality: CAT,"), 14, "tables.procedures.CTH.modality", "not a DICOM modality"),
    (("[ORC-18.1,", "[ORC-18.1.1.1,"), 11, "step.station_aets.from.0.path", "not an HL7 field path"),
    (("    as: modality", "    as: lookup"), 9, "step.modality.as", "unknown transform 'lookup'"),
    (("when: {modality: US,", "when: {modality: US, ward: X,"), 17, "stations.0.when.ward", "unknown criterion"),
    (("senders: [SITEB^NORTH]", "senders: [SITEB^NORTH]\ncolour: red"), 4, "colour", "unknown key"),
    (("missing: skip", "missing: ignore"), 11, "step.station_aets.from.1.missing", "is not one of error, skip"),
])
def test_bad_site_profile_is_refused_with_file_line_and_key(tmp_path, change, line, key, words):
    text = SITE.replace(*change)
    assert text != SITE
    with pytest.raises(ProfileError) as info:
        ProfileSet(folder_with(tmp_path, site_b=text))
    err_ = info.value
    assert (err_.file, err_.line, err_.key) == ("site_b.yaml", line, key), str(err_)
    assert words in err_.problem


def test_parse_profile_checks_the_identifier_policy():
    text = "name: x\nidentifiers:\n  patient: {field: PID-3.1, authorities: [HOSP]}\n"
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "x.yaml")
    assert (info.value.line, info.value.key) == (3, "identifiers.patient.field")


def test_two_profiles_claiming_one_sender_are_reported(tmp_path):
    other = SITE.replace("name: site-b", "name: site-c")
    profiles = ProfileSet(folder_with(tmp_path, site_b=SITE, site_c=other), strict=False)
    [problem] = profiles.problems
    assert problem.key == "senders" and "SITEB^*" not in problem.problem and "SITEB^NORTH" in problem.problem


# Choosing by sender ---------------------------------------------------------------------------
def test_the_profile_is_chosen_by_sending_application_and_facility(tmp_path):
    app_only = "name: app-only\nextends: default\nsenders: [SITEB]\n"
    profiles = ProfileSet(folder_with(tmp_path, site_b=SITE, app_only=app_only), "default")
    assert profiles.for_sender("SITEB", "NORTH").name == "site-b"     # application and facility
    assert profiles.for_sender("SITEB", "SOUTH").name == "app-only"   # application alone
    assert profiles.for_sender("HIS", "HOSP").name == "default"       # nobody claims it


def test_intake_maps_each_message_with_its_senders_profile_and_records_it(settings, session_factory, tmp_path):
    intake = intake_for(settings, session_factory, folder_with(tmp_path, site_b=SITE))
    assert segments(intake.handle(order("S1", orc18="CT_ORC18")))["MSA"][1] == "AA"
    assert segments(intake.handle(order("S2", app="HIS", facility="HOSP", accession="B-200", code="X1^Knee^L",
                                        modality="MR")))["MSA"][1] == "AA"
    site = intake.profiles.get("site-b")
    assert stored(session_factory, "S1").profile == f"site-b@{site.version}"
    assert stored(session_factory, "S2").profile.startswith("default@")
    report = intake.trial(order("S3", accession="B-103"))
    [step] = report.commands[0].order.procedures[0].steps
    assert (step.modality, step.station_aets) == ("CT", ("CT_B1",))       # from the table, no ORC-18


# Hot reload ----------------------------------------------------------------------------------
def test_changes_are_picked_up_and_a_bad_file_keeps_the_last_good_profile(tmp_path, caplog):
    folder = folder_with(tmp_path, site_b=SITE)
    profiles = ProfileSet(folder, "default", check_interval=0.0)
    first = profiles.for_sender("SITEB", "NORTH")
    rewrite(folder / "site_b.yaml", SITE.replace("CT_B1", "CT_B2"))
    second = profiles.for_sender("SITEB", "NORTH")
    assert second.version != first.version and second.tables["procedures"]["CTH"]["station_aet"] == "CT_B2"
    assert not profiles.problems

    rewrite(folder / "site_b.yaml", SITE.replace("as: modality", "as: shout"))
    assert profiles.for_sender("SITEB", "NORTH") is second                # refused: the last good one stays
    [problem] = profiles.problems
    assert (problem.file, problem.key) == ("site_b.yaml", "step.modality.as")
    assert "refused" in caplog.text and "site_b.yaml" in caplog.text
    assert profiles.describe()["valid"] is False

    rewrite(folder / "site_b.yaml", SITE)
    assert profiles.for_sender("SITEB", "NORTH").version == first.version and not profiles.problems


def test_a_new_file_is_picked_up_and_a_removed_one_dropped(tmp_path):
    folder = folder_with(tmp_path)
    profiles = ProfileSet(folder, "default", check_interval=0.0)
    assert profiles.for_sender("SITEB", "NORTH").name == "default"
    rewrite(folder / "site_b.yaml", SITE)
    assert profiles.for_sender("SITEB", "NORTH").name == "site-b"
    (folder / "site_b.yaml").unlink()
    assert profiles.for_sender("SITEB", "NORTH").name == "default"


# Code tables at run time -----------------------------------------------------------------------
def test_a_code_missing_from_the_table_is_AE_naming_profile_table_and_code_and_reprocessable(
        settings, session_factory, tmp_path):
    folder = folder_with(tmp_path, site_b=SITE)
    intake = intake_for(settings, session_factory, folder)
    ack = intake.handle(order("T1", code="MRK^MR knee^L"))
    assert segments(ack)["MSA"][1] == "AE"
    location, code, text = err(ack)
    assert code == "103"                                                  # HL7 table 0357: table value not found
    assert location.startswith("OBR^1^4")
    assert text == "profile 'site-b': table 'procedures' has no entry 'MRK'"
    row = stored(session_factory, "T1")
    assert row.status is MessageStatus.ERROR

    fixed = SITE.replace("    USA:", "    MRK: {modality: MR, description: MR knee}\n    USA:")
    rewrite(folder / "site_b.yaml", fixed)
    result = intake.reprocess(row.id)
    assert (result.status, result.ack_code) == (MessageStatus.PROCESSED, "AA")
    assert stored(session_factory, "T1").profile == f"site-b@{intake.profiles.get('site-b').version}"


def test_station_rules_give_stations_the_message_does_not(settings, session_factory, tmp_path):
    intake = intake_for(settings, session_factory, folder_with(tmp_path, site_b=SITE))
    [step] = intake.trial(order("R1", code="USA^US abdomen^L")).commands[0].order.procedures[0].steps
    assert (step.station_aets, step.station_name) == (("US_B1",), "US-B")
    [step] = intake.trial(order("R2", code="USA^US abdomen^L", orc18="US_ORC")).commands[0].order.procedures[0].steps
    assert (step.station_aets, step.station_name) == (("US_ORC",), "US-B")   # the message's AE; the rule's name


# Identifier policy ---------------------------------------------------------------------------
POLICY = """\
name: ids
extends: default
senders: [IDS]
identifiers:
  patient:
    authorities: [HOSP, CITY]
    types: [MR]
    issuer: HOSP
"""


@pytest.mark.parametrize("pid, expected", [
    ("N-1^^^NATION^NI~H-1^^^HOSP^MR", ("H-1", "HOSP")),
    ("C-1^^^CITY^MR~H-2^^^HOSP^MR", ("H-2", "HOSP")),          # authorities in order of preference
    ("C-2^^^CITY^MR~X-1^^^HOSP^PI", ("C-2", "CITY")),           # the HOSP one has the wrong type
])
def test_the_identifier_policy_chooses_the_pid3_repetition(settings, session_factory, tmp_path, pid, expected):
    intake = intake_for(settings, session_factory, folder_with(tmp_path, ids=POLICY))
    patient = intake.trial(order("I1", app="IDS", pid=pid, modality="CT")).commands[0].patient
    assert (patient.patient_id, patient.issuer) == expected


def test_no_repetition_for_the_policy_is_AE_at_pid3(settings, session_factory, tmp_path):
    intake = intake_for(settings, session_factory, folder_with(tmp_path, ids=POLICY))
    ack = intake.handle(order("I2", app="IDS", pid="N-9^^^NATION^NI", modality="CT"))
    assert segments(ack)["MSA"][1] == "AE"
    location, code, text = err(ack)
    assert location.startswith("PID^1^3") and code == "101"
    assert "no PID-3 repetition with assigning authority HOSP or CITY and identifier type MR" in text


def test_otherwise_first_takes_the_first_repetition_with_the_configured_issuer(settings, session_factory, tmp_path):
    text = POLICY + "    otherwise: first\n"
    intake = intake_for(settings, session_factory, folder_with(tmp_path, ids=text))
    patient = intake.trial(order("I3", app="IDS", pid="N-9~N-10", modality="CT")).commands[0].patient
    assert (patient.patient_id, patient.issuer) == ("N-9", "HOSP")


# Transforms, defaults, time zone, identifiers ---------------------------------------------------
def test_concat_default_trim_and_regex_sources(settings, session_factory, tmp_path):
    text = """\
    name: mix
    extends: default
    senders: [MIX]
    order:
      reason: {from: [{concat: [OBR-4.2, OBR-4.1], separator: ' / '}]}
      priority: {from: [OBR-5], default: R, as: trim}
    step:
      modality: {from: [OBR-24, {path: OBR-4.2, regex: '^([A-Z]{2}) '}], as: modality, required: true}
    """
    intake = intake_for(settings, session_factory, folder_with(tmp_path, mix=text))
    data = intake.trial(order("X1", app="MIX", code="A1^MR brain^L")).commands[0].order
    assert (data.reason, data.priority) == ("MR brain / A1", "R")
    assert data.procedures[0].steps[0].modality == "MR"


def test_the_profile_time_zone_applies_to_times_without_offset(settings, session_factory, tmp_path):
    text = "name: tz\nextends: default\nsenders: [TZ]\ntimezone: America/New_York\n"
    intake = intake_for(settings, session_factory, folder_with(tmp_path, tz=text), site_timezone="UTC")
    raw = order("Z1", app="TZ", start="20261204093000", modality="CT")
    [step] = intake.trial(raw).commands[0].order.procedures[0].steps
    assert step.scheduled_start == dt.datetime(2026, 12, 4, 14, 30)       # 09:30 in New York is 14:30 UTC
    offset = raw.replace(b"|20261203120000|", b"|20261203120000+0100|")
    [step] = intake.trial(offset).commands[0].order.procedures[0].steps
    assert step.scheduled_start == dt.datetime(2026, 12, 4, 8, 30)        # MSH-7's offset wins


def test_the_profile_uid_root_and_accession_prefix_generate_missing_identifiers(settings, session_factory, tmp_path):
    text = ("name: gen\nextends: default\nsenders: [GEN]\nuid_root: 1.2.826.0.1.3680043.10.9999\n"
            "accession_prefix: GEN\n")
    intake = intake_for(settings, session_factory, folder_with(tmp_path, gen=text))
    raw = order("G1", app="GEN", accession="", modality="CT")
    trial = intake.trial(raw)
    assert trial.result.ack_code == "AA", trial.result.error
    [item] = trial.worklist
    assert item.accession_number.startswith("GEN")
    assert item.study_instance_uid.startswith("1.2.826.0.1.3680043.10.9999.")


def test_the_shipped_example_profile_loads():
    example = ProfileSet(REPO_ROOT / "mappings").get("northwind")
    assert example.extends == "default" and [str(s) for s in example.senders] == ["NORTHWIND^NORTH"]
    assert set(example.tables["procedures"]["NW-CT-HEAD"]) >= {"modality", "description", "duration", "body_part",
                                                               "station_aet"}


def test_the_identifier_policy_also_reads_the_prior_identifier_of_a_merge(settings, session_factory, tmp_path):
    intake = intake_for(settings, session_factory, folder_with(tmp_path, ids=POLICY))
    raw = hl7("MSH|^~\\&|IDS|HOSP|RIS|RAD|20261203120000||ADT^A40|M1|P|2.5",
              "EVN|A40|20261203120000",
              "PID|||N-1^^^NATION^NI~H-1^^^HOSP^MR||MERGE^MIA",
              "MRG|N-2^^^NATION^NI~H-2^^^HOSP^MR")
    [command] = intake.trial(raw).commands
    assert (command.survivor.patient_id, command.merged.patient_id, command.merged.issuer) == ("H-1", "H-2", "HOSP")


@pytest.mark.parametrize("live, errors", [(True, 1), (False, 0)])
def test_a_candidate_set_reports_its_refusals_without_logging_errors(tmp_path, caplog, live, errors):
    """The engine's own set logs a refused file as an ERROR; a tool's candidate set (check, compare) answers with
    it and logs nothing as an error of the running engine (fresh-clone check)."""
    import logging

    folder = folder_with(tmp_path, broken="name: broken\nextends: default\nfields: {patient.id: {from: [PID-999]}}\n")
    with caplog.at_level(logging.DEBUG, logger="mappings"):
        profiles = ProfileSet(folder, "default", strict=False, live=live)
    assert [p.file for p in profiles.problems] == ["broken.yaml"]
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == errors
