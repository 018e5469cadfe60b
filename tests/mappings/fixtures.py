"""Shared test material for the mapping tests: a synthetic site profile, a mapping folder built
from the shipped default plus test profiles, synthetic order messages, and the golden cases."""

from __future__ import annotations

import dataclasses
import os
import shutil
import textwrap
from pathlib import Path

from config.settings import REPO_ROOT
from interfaces.hl7.intake import HL7Intake
from mappings.profile import ProfileSet
from tests.test_intake import hl7, seg

GOLDEN = Path(__file__).parent / "golden"
DEFAULT = REPO_ROOT / "mappings" / "default.yaml"

SITE = """\
name: site-b
extends: default
senders: [SITEB^NORTH]
order:
  accession_number: {from: [OBR-3.1]}
step:
  modality:
    from: [{path: OBR-4.1, table: procedures, column: modality}]
    as: modality
    required: true
  station_aets: {from: [ORC-18.1, {path: OBR-4.1, table: procedures, column: station_aet, missing: skip}]}
tables:
  procedures:
    CTH: {modality: CT, description: CT head, station_aet: CT_B1}
    USA: {modality: US, description: US abdomen}
stations:
  - when: {modality: US, sender: SITEB}
    aets: [US_B1]
    name: US-B
"""


def folder_with(tmp_path, **files: str):
    """A mapping folder: the shipped default plus ``files`` (name without .yaml -> text)."""
    folder = tmp_path / "mappings"
    folder.mkdir(exist_ok=True)
    shutil.copy(DEFAULT, folder / "default.yaml")
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(textwrap.dedent(text))
    return folder


def rewrite(path, text: str) -> None:
    """Write a new version of a file so that a change is seen even within one clock tick."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(textwrap.dedent(text))
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def order(ctrl_id: str, *, app="SITEB", facility="NORTH", code="CTH^CT head^L", accession="B-100", orc18="",
          pid="PAT-B^^^HOSP", msh7="20261203120000", start="20261204093000", modality="") -> bytes:
    """An ORM^O01 NW; the accession in OBR-3 (as site-b sends it), the modality (default profile) in OBR-24."""
    return hl7(
        f"MSH|^~\\&|{app}|{facility}|RIS|RAD|{msh7}||ORM^O01|{ctrl_id}|P|2.5.1",
        f"PID|||{pid}||SITE^BERTA||19800101|F",
        seg("ORC", {1: "NW", 2: f"PL-{ctrl_id}^HIS", 7: f"^^^{start}", 18: orc18}),
        seg("OBR", {1: "1", 2: f"PL-{ctrl_id}^HIS", 3: accession, 4: code, 24: modality}),
    )


def intake_for(settings, session_factory, folder, **overrides):
    settings = dataclasses.replace(settings, mappings_dir=str(folder), **overrides)
    return HL7Intake(settings, session_factory, ProfileSet(folder, "default", check_interval=0.0))


def golden_message(case: Path) -> bytes:
    """A golden case's message (stored with LF line ends) with the standard's CR segment ends."""
    return case.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r")
