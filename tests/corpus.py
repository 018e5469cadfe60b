"""Where the shared corpus is (../shared/corpus next to the repository), and a skip when it is absent.

Corpus files are referenced, never copied into the repository (some come from GPL/AGPL projects).
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


def corpus_path(*parts: str) -> Path:
    """The path of a corpus file; skips the test with a message when ../shared/corpus is absent."""
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus not present: corpus tests skipped (CI always has it)")
    path = CORPUS.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"corpus file missing: {path}")
    return path
