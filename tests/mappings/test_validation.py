"""Validation at load: every mistake a profile can make is refused with its file, line and key, and the last good
version of the profile stays active.

Kinds: paths that cannot exist in the HL7 definitions of the profile's version (mappings.hl7_reference); [*] on a
value that holds one; transforms and ``otherwise`` that do not fit the kind of value; and every text the profile
writes into a DICOM attribute (table cells, defaults, station rules, the identifier issuer, the accession prefix)
checked against that attribute's VR and length (mappings.targets).
"""

from __future__ import annotations

import pytest

from mappings.profile import ProfileError, ProfileSet, parse_profile
from mappings import hl7_reference, targets
from tests.mappings.fixtures import SITE, folder_with, intake_for, order, rewrite
from tests.test_intake import segments

# A profile of its own (no base), so that every line number is this text's.
BASE = """\
name: site-v
messages: {ORM^O01: order}
order_controls: {NW: place, XO: update, CA: cancel, SC: status}
patient:
  id: {from: [PID-3.1], required: true}
order:
  accession_number: {from: [OBR-18]}
procedure:
  description: {from: [{path: OBR-4.1, table: procedures, column: description, missing: skip}, OBR-4.2]}
step:
  modality: {from: [OBR-24], as: modality, required: true}
  station_aets: {from: ['IPC-9[*]', {path: OBR-4.1, table: procedures, column: station_aet, missing: skip}]}
  station_name: {from: [IPC-7]}
  scheduled_start: {from: [TQ1-7], as: datetime, otherwise: received}
tables:
  procedures:
    CTH: {modality: CT, description: CT head, station_aet: CT_ROOM1, note: 'anything \\ goes here'}
stations:
  - when: {modality: US}
    aets: [US_1]
    name: US-ROOM
"""


def refused(text: str, file: str = "site-v.yaml") -> ProfileError:
    with pytest.raises(ProfileError) as info:
        parse_profile(text, file)
    return info.value


def test_the_base_of_these_cases_loads():
    profile = parse_profile(BASE, "site-v.yaml")
    assert profile.hl7_version == "2.5.1"
    # a column nothing reads fills no DICOM attribute: not checked
    assert profile.tables["procedures"]["CTH"]["note"] == "anything \\ goes here"


@pytest.mark.parametrize("change, line, key, words", [
    # paths that cannot exist in HL7 v2.5.1
    (("[PID-3.1]", "[PID-99]"), 5, "patient.id.from.0.path", "PID has 39 fields in HL7 v2.5.1, so PID-99 cannot exist"),
    (("OBR-4.2]", "OBR-4.99]"), 9, "procedure.description.from.1.path",
     "OBR-4 (Universal Service Identifier, CE) has 6 components in HL7 v2.5.1"),
    (("[OBR-18]", "[XYZ-1]"), 7, "order.accession_number.from.0.path", "XYZ is not a segment of HL7 v2.5.1"),
    (("[OBR-18]", "[OBR-18.2]"), 7, "order.accession_number.from.0.path",
     "OBR-18 (Placer Field 1, ST) has no components"),
    (("[PID-3.1]", "[PID-3.4.9]"), 5, "patient.id.from.0.path", "has 3 subcomponents"),
    (("[IPC-7]", "[ZXY-1]"), 13, "step.station_name.from.0.path", "declare it with its number of fields under z_segments"),
    (("{path: OBR-4.1, table", "{path: OBR-51.1, table"), 9, "procedure.description.from.0.path",
     "OBR has 50 fields in HL7 v2.5.1, so OBR-51 cannot exist"),
    # [*] on a value that holds one (the accession would become "('ACC-1', 'ACC-2')")
    (("[OBR-18]", "['OBR-18[*]']"), 7, "order.accession_number.from.0",
     "OBR-18[*] reads every repetition ([*]), but order.accession_number holds one value"),
    # transforms and otherwise that do not fit the value
    (("{from: [OBR-18]}", "{from: [OBR-18], otherwise: received}"), 7, "order.accession_number.otherwise",
     "'received' is the time of receipt, and order.accession_number is not a time"),
    (("{from: [OBR-18]}", "{from: [OBR-18], as: datetime}"), 7, "order.accession_number.as",
     "order.accession_number holds a text; datetime gives a date and time"),
    (("{from: [TQ1-7], as: datetime", "{from: [TQ1-7], as: text"), 14, "step.scheduled_start.as",
     "step.scheduled_start holds a date and time; text gives a text (use datetime)"),
    (("{from: [IPC-7]}", "{from: [IPC-7], as: code}"), 13, "step.station_name.as", "holds a text; code gives a code"),
    # table cells, against the attribute of every value that reads their column
    (("station_aet: CT_ROOM1", "station_aet: CT_ROOM1_WITH_24_CHARS"), 17, "tables.procedures.CTH.station_aet",
     "'CT_ROOM1_WITH_24_CHARS' is 22 characters long; AE allows at most 16 (PS3.5 6.2) (ScheduledStationAETitle)"),
    (("modality: CT,", "modality: CAT,"), None, None, None),   # modality read from OBR-24 only: not a cell it reads
    (("description: CT head,", f"description: {'X' * 65},"), 17, "tables.procedures.CTH.description",
     "LO allows at most 64"),
    # a value's default
    (("{from: [IPC-7]}", "{from: [IPC-7], default: STATION_NAME_TOO_LONG}"), 13, "step.station_name.default",
     "SH allows at most 16"),
    (("{from: [OBR-24], as: modality", "{from: [OBR-24], default: CAT, as: modality"), 11, "step.modality.default",
     "'CAT' is not a DICOM modality (PS3.3 C.7.3.1.1.1): not a value for step.modality"),
    # station rules
    (("aets: [US_1]", "aets: [US_ROOM_NUMBER_ONE_OF_TWO]"), 20, "stations.0.aets.0", "AE allows at most 16"),
    (("name: US-ROOM", "name: US-ROOM-NORTH-WING"), 21, "stations.0.name", "SH allows at most 16"),
])
def test_a_mistake_is_refused_with_file_line_and_key(change, line, key, words):
    text = BASE.replace(*change)
    assert text != BASE
    if key is None:
        parse_profile(text, "site-v.yaml")
        return
    err = refused(text)
    assert (err.file, err.line, err.key) == ("site-v.yaml", line, key), str(err)
    if words:
        assert words in err.problem, err.problem
    assert str(err).startswith(f"site-v.yaml:{line}: {key}: ")


def test_a_table_cell_is_checked_against_every_value_that_reads_it():
    text = BASE.replace("note: 'anything \\ goes here'}\n", "note: 'anything \\ goes here'}\n"
                        "    MRK: {modality: mr, description: MR knee}\n")
    text = text.replace("  modality: {from: [OBR-24], as: modality, required: true}",
                        "  modality: {from: [OBR-24, {path: OBR-4.1, table: procedures, column: modality}],"
                        " as: modality, required: true}")
    # 'mr' is upper-cased by as: modality before it is checked, so it is a modality
    assert parse_profile(text, "site-v.yaml").tables["procedures"]["MRK"]["modality"] == "mr"
    err = refused(text.replace("modality: mr,", "modality: MRI,"))
    assert (err.line, err.key) == (18, "tables.procedures.MRK.modality")
    assert "'MRI' is not a DICOM modality" in err.problem


@pytest.mark.parametrize("cell, words", [
    ("body_part: head", "'head' is not a code string: upper-case letters, digits, space and '_'"),
    ("body_part: LOWER_LEG_WITH_17CH", "CS allows at most 16"),
    ("duration: soon", "'soon' is not a duration: minutes from 1 to 1440"),
    ("duration: 0", "is not a duration"),
    ("protocol: P1", "a code needs its value, meaning and coding scheme: VALUE^MEANING^SCHEME"),
    ("protocol: 'P1^Routine^99X~P2^Thin slices'", "'P2^Thin slices': a code needs"),
    ("protocol: 'P1^Routine^SCHEME_LONGER_THAN_16'", "coding scheme designator 'SCHEME_LONGER_THAN_16'"),
    ("protocol: 'PROTOCOL-CODE-0017^Routine^99X'", "code value 'PROTOCOL-CODE-0017' is 18 characters long; SH allows"),
])
def test_new_capability_columns_are_checked_against_their_attribute(cell, words):
    column = cell.split(":")[0]
    reader = {"body_part": "procedure:\n  body_part: {from: [{path: OBR-4.1, table: procedures, column: body_part}]}\n",
              "duration": "step:\n  expected_duration: {from: [{path: OBR-4.1, table: procedures, column: duration}],"
                          " as: minutes}\n",
              "protocol": "step:\n  protocol_codes: {from: [{path: OBR-4.1, table: procedures, column: protocol}],"
                          " as: code}\n"}[column]
    text = (f"name: site-w\nmessages: {{ORM^O01: order}}\ntables:\n  procedures:\n    CTH: {{{cell}}}\n{reader}")
    err = refused(text, "site-w.yaml")
    assert (err.file, err.line, err.key) == ("site-w.yaml", 5, f"tables.procedures.CTH.{column}"), str(err)
    assert words in err.problem, err.problem


@pytest.mark.parametrize("text, line, key, words", [
    ("name: x\nhl7_version: '2.9'\n", 2, "hl7_version", "'2.9' is not an HL7 v2 version with known definitions"),
    ("name: x\nz_segments: {ABC: 1}\n", 2, "z_segments.ABC", "a Z-segment name"),
    ("name: x\nz_segments: {ZDS: 0}\n", 2, "z_segments.ZDS", "the number of fields"),
    ("name: x\nz_segments: {ZDS: 1}\nprocedure:\n  study_instance_uid: {from: [ZDS-2]}\n", 4,
     "procedure.study_instance_uid.from.0.path", "ZDS is declared with 1 field (z_segments), so ZDS-2 cannot exist"),
    ("name: x\nidentifiers:\n  patient: {field: PID-99, authorities: [H]}\n", 3, "identifiers.patient.field",
     "PID-99 cannot exist"),
    ("name: x\nidentifiers:\n  patient: {authorities: [H], issuer: 'A\\B'}\n", 3, "identifiers.patient.issuer",
     "contains a backslash"),
    ("name: x\naccession_prefix: 'R\\'\n", 2, "accession_prefix", "contains a backslash"),
    ("name: x\nmessages: {ORM^O01: order}\norder_controls: {NW: place}\nstep_statuses: {NWHD: HELD}\n", 4,
     "step_statuses.NWHD", "written ORDER-CONTROL^ORDER-STATUS"),
    ("name: x\nmessages: {ORM^O01: order}\norder_controls: {NW: place}\nstep_statuses: {'ZZ^HD': HELD}\n", 4,
     "step_statuses.ZZ^HD", "order control 'ZZ' is not in order_controls"),
    ("name: x\nmessages: {ORM^O01: order}\norder_controls: {CA: cancel}\nstep_statuses: {'CA^CA': HELD}\n", 4,
     "step_statuses.CA^CA", "order control CA is 'cancel', which sets the steps' status itself"),
    ("name: x\nmessages: {ORM^O01: order}\norder_controls: {SC: status}\nstep_statuses: {'SC^CM': COMPLETED}\n", 4,
     "step_statuses.SC^CM", "'COMPLETED' is not one of ARRIVED, HELD, READY, SCHEDULED"),
    ("name: x\nperson_names: {types: [legal]}\n", 2, "person_names.types", "not a name type code"),
    ("name: x\nperson_names: {prefix: drop}\n", 2, "person_names.prefix", "'drop' is not one of keep, omit"),
    ("name: x\nperson_names: {order: family}\n", 2, "person_names.order", "unknown key"),
    ("name: x\ncharset: {default: klingon}\n", 2, "charset.default", "'klingon' is not a character set"),
    ("name: x\ncharset: {default: rot13}\n", 2, "charset.default", "'rot13' is not a character set"),
    ("name: x\ncharset: {mismatch: guess}\n", 2, "charset.mismatch", "'guess' is not one of prefer-utf8, declared"),
    ("name: x\ncharset: {codec: latin-1}\n", 2, "charset.codec", "unknown key"),
])
def test_policies_and_declarations_are_refused_with_line_and_key(text, line, key, words):
    err = refused(text, "x.yaml")
    assert (err.file, err.line, err.key) == ("x.yaml", line, key), str(err)
    assert words in err.problem, err.problem


def test_paths_are_checked_against_the_profiles_own_hl7_version():
    # TQ1 and IPC came with HL7 v2.5: a profile for a v2.3.1 sender cannot read them
    err = refused("name: old\nhl7_version: 2.3.1\nstep:\n  scheduled_start: {from: [ORC-7.4, TQ1-7], as: datetime}\n")
    assert (err.line, err.key) == (4, "step.scheduled_start.from.1.path")
    assert "TQ1 is not a segment of HL7 v2.3.1" in err.problem
    assert parse_profile("name: old\nhl7_version: 2.3.1\nstep:\n  scheduled_start: {from: [ORC-7.4], as: datetime}\n")


def test_a_mistake_inherited_from_a_base_names_the_base_file(tmp_path):
    base = BASE.replace("station_aet: CT_ROOM1", "station_aet: CT_ROOM1_WITH_24_CHARS")
    child = "name: child\nextends: site-v\nsenders: [CHILD]\n"
    profiles = ProfileSet(folder_with(tmp_path, site_v=base, child=child), "default", strict=False)
    assert {(e.file, e.line, e.key) for e in profiles.problems} == {("site_v.yaml", 17,
                                                                     "tables.procedures.CTH.station_aet")}
    assert "child" not in profiles.profiles and "site-v" not in profiles.profiles


def test_the_last_good_profile_stays_active_when_a_change_is_refused(settings, session_factory, tmp_path):
    folder = folder_with(tmp_path, site_b=SITE)
    intake = intake_for(settings, session_factory, folder)
    good = intake.profiles.get("site-b").version
    for bad in (SITE.replace("[ORC-18.1,", "[PID-99,"),                              # a field that cannot exist
                SITE.replace("station_aet: CT_B1", "station_aet: CT_B1_IS_TOO_LONG_AE"),   # not an AE title
                SITE.replace("{from: [OBR-3.1]}", "{from: ['OBR-3[*]']}")):               # [*] for one value
        rewrite(folder / "site_b.yaml", bad)
        problems = intake.profiles.reload()
        assert [p.file for p in problems] == ["site_b.yaml"] and problems[0].line
        assert intake.profiles.get("site-b").version == good
        ack = intake.handle(order(f"LG-{len(bad)}", accession=f"B-{len(bad)}"))
        assert segments(ack)["MSA"][1] == "AA"
    rewrite(folder / "site_b.yaml", SITE.replace("CT_B1", "CT_B2"))
    assert intake.profiles.reload() == []
    assert intake.profiles.get("site-b").version != good


def test_the_reference_knows_fields_components_and_subcomponents():
    assert hl7_reference.check_path("PID", 3, 4, 1) is None
    assert hl7_reference.check_path("PID", 39, 1, 1) is None
    assert "cannot exist" in hl7_reference.check_path("PID", 40, 1, 1)
    assert hl7_reference.check_path("ZDS", 1, 3, 1, z_segments={"ZDS": 1}) is None   # components unknown: allowed
    assert hl7_reference.segment("OBR")[3].name == "Universal Service Identifier"


@pytest.mark.parametrize("key, text, ok", [
    ("step.station_aets", "CT_ROOM1", True), ("step.station_aets", " ", False), ("step.station_aets", "CT\\1", False),
    ("step.station_aets", "ÄRZTE", False), ("procedure.body_part", "HEAD", True), ("procedure.body_part", "Head", False),
    ("procedure.study_instance_uid", "1.2.840.10008", True), ("procedure.study_instance_uid", "1.02.3", False),
    ("patient.name", "DOE^JOHN=ドウ^ジョン", True), ("patient.name", "A^B^C^D^E^F", False),
    ("step.protocol_codes", "P1^Routine^99X~P2^Thin^99X", True), ("step.expected_duration", "1.5 h", True),
    ("step.expected_duration", "25 h", False), ("visit.location", "anything\\goes", True),
])
def test_the_one_value_check(key, text, ok):
    assert (targets.problem(key, text) is None) is ok
