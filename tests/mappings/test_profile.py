"""Mapping profiles: the shipped default loads; a bad file is refused with file, line and key."""

from __future__ import annotations

import pytest

from config.settings import REPO_ROOT
from mappings.paths import FieldPath, PathError
from mappings.profile import ProfileError, ProfileSet, load_profile, parse_profile

GOOD = """
name: site-a
messages: {ORM^O01: order}
order_controls: {NW: place}
patient:
  id: {from: [PID-3.1], required: true}
step:
  modality: {from: [OBR-24], as: upper, required: true}
"""


def test_default_profile_loads_with_a_version():
    profile = load_profile(REPO_ROOT / "mappings" / "default.yaml")
    assert profile.name == "default"
    assert len(profile.version) == 12
    assert profile.messages["ORM^O01"] == "order"
    assert [str(s.path) for s in profile.spec("order.accession_number").sources] == ["IPC-1", "OBR-18"]
    assert profile.spec("step.station_aets").sources[0].path.rep is None


def test_profile_set_finds_profiles_by_name():
    assert "default" in ProfileSet(REPO_ROOT / "mappings").profiles


def test_version_changes_with_content():
    assert parse_profile(GOOD).version != parse_profile(GOOD + "\n# changed\n").version


@pytest.mark.parametrize("text, line, key, words", [
    (GOOD + "colour: blue\n", 9, "colour", "unknown key"),
    (GOOD.replace("PID-3.1", "PID-X"), 6, "patient.id.from.0.path", "not an HL7 field path"),
    (GOOD.replace("as: upper", "as: shout"), 8, "step.modality.as", "unknown transform 'shout'"),
    (GOOD.replace("NW: place", "NW: explode"), 4, "order_controls.NW", "is not one of"),
    (GOOD.replace("modality:", "modalty:"), 8, "step.modalty", "unknown value"),
    (GOOD.replace("ORM^O01", "ORM-O01"), 3, "messages.ORM-O01", "CODE^EVENT"),
    ("name: x\npatient: [1, 2\n", 3, "(syntax)", ""),
])
def test_bad_profile_is_refused_with_line_and_key(text, line, key, words):
    with pytest.raises(ProfileError) as info:
        parse_profile(text, "site-a.yaml")
    err = info.value
    assert (err.file, err.line, err.key) == ("site-a.yaml", line, key)
    assert words in err.problem
    assert str(err).startswith(f"site-a.yaml:{line}: {key}: ")


@pytest.mark.parametrize("text, parsed", [
    ("PID-3", ("PID", 3, 1, 1, 1)),
    ("PID-3[2].1", ("PID", 3, 2, 1, 1)),
    ("PID-3.4.1", ("PID", 3, 1, 4, 1)),
    ("IPC-9[*]", ("IPC", 9, None, 1, 1)),
    ("ZDS-1.1", ("ZDS", 1, 1, 1, 1)),
])
def test_field_paths_follow_the_standard_numbering(text, parsed):
    p = FieldPath.parse(text)
    assert (p.segment, p.field, p.rep, p.comp, p.sub) == parsed


@pytest.mark.parametrize("text", ["PID", "PID-0", "pid-3", "PID-3.", "PID-3[0]", "PID-3.1.1.1", "PI-3"])
def test_impossible_paths_are_refused(text):
    with pytest.raises(PathError):
        FieldPath.parse(text)
