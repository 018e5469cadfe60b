"""Shared helpers for the HL7 tests: where the shared corpus lives and how to load a file from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from interfaces.hl7 import decode_message, parse, split_messages

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


def corpus_dir(*parts: str) -> Path:
    """A folder of ../shared/corpus; skips the calling test when the corpus is not present."""
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus not present: corpus tests skipped")
    return CORPUS.joinpath(*parts)


def corpus_text(folder: str, name: str) -> str:
    """Decoded text of one corpus file (decoding policy of interfaces.hl7.charsets)."""
    return decode_message((corpus_dir(folder) / name).read_bytes()).text


def corpus_message(folder: str, name: str):
    """The single message of a corpus file (files holding one message, possibly with junk around it)."""
    (text,) = split_messages(corpus_text(folder, name))
    return parse(text)


def hl7_files() -> list[str]:
    """Names of the corpus HL7 files, for parametrisation.

    When the corpus is absent one placeholder is returned, so the test runs once and skips via corpus_dir().
    """
    folder = CORPUS / "hl7"
    return sorted(p.name for p in folder.glob("*.hl7")) if folder.is_dir() else ["(corpus absent)"]
