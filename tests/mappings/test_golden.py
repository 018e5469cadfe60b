"""Golden tests for every shipped mapping profile: a sample message in, the expected commands and
worklist items (as a modality would receive them) out.

Each ``golden/<profile>/<case>.hl7`` (synthetic messages written for these tests, LF line ends) is
run through the analyst's dry run (nothing is kept) against the shipped mapping folder; the profile
chosen by its sender, its ACK code and error, its commands and its worklist items must equal
``<case>.json``. After a deliberate mapping change, regenerate the expected files with
``RIS_GOLDEN_UPDATE=1`` and review the diff.
"""

from __future__ import annotations

import json
import os

import pytest
from sqlalchemy import func, select

from app.db import unit_of_work
from app.models import InboundMessage, Order
from config.settings import REPO_ROOT
from interfaces.hl7.intake import HL7Intake
from interfaces.mapping_tools import mapping_test
from mappings.profile import ProfileSet
from tests.mappings.fixtures import GOLDEN, golden_message

CASES = sorted(GOLDEN.glob("*/*.hl7"))


def outcome(report: dict) -> dict:
    """The parts of a mapping test a golden file fixes (not the ACK's time and control id)."""
    return {"profile": report["profile"]["name"], "ack_code": report["ack_code"], "error": report["error"],
            "commands": report["commands"], "worklist": report["worklist"]}


@pytest.fixture
def intake(settings, session_factory):
    return HL7Intake(settings, session_factory, ProfileSet(REPO_ROOT / "mappings", settings.mapping_profile))


def test_every_shipped_profile_has_golden_cases():
    shipped = set(ProfileSet(REPO_ROOT / "mappings").profiles)
    covered = {case.parent.name for case in CASES}
    assert shipped <= covered, f"profiles without golden cases: {sorted(shipped - covered)}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.parent.name}/{c.stem}")
def test_golden_case(intake, settings, session_factory, case):
    report = mapping_test(intake, settings, raw=golden_message(case))
    got = outcome(report)
    expected_file = case.with_suffix(".json")
    if os.environ.get("RIS_GOLDEN_UPDATE"):
        expected_file.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert got["profile"] == case.parent.name, "the sender's messages are mapped by the profile of their folder"
    assert got == json.loads(expected_file.read_text(encoding="utf-8"))
    with unit_of_work(session_factory) as session:   # a dry run: nothing kept
        assert session.scalar(select(func.count()).select_from(Order)) == 0
        assert session.scalar(select(func.count()).select_from(InboundMessage)) == 0
