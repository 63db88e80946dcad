"""Shared fixtures: where the bundled and the shared datasets live."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "binsearch" / "data" / "cranfield"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def bundled() -> Path:
    """The Cranfield copy shipped with the package (always present)."""
    return BUNDLED


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repo; tests that need it skip when it is absent."""
    if not (SHARED_DATA / "scifact" / "corpus.jsonl").is_file():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (they live beside the repo)")
    return SHARED_DATA
