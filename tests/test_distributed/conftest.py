"""Fixtures of the sharded suites; the session's Ray cluster (``ray_cluster``) is in tests/conftest.py.

Shard actors are spread over both nodes (they share this machine's disk).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [distributed] extra (ray) is not installed")

SCIFACT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "scifact"
SCIFACT_MINILM = SCIFACT / "embeddings" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def scifact_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """SciFact MiniLM corpus ``(5183, 384)`` and query ``(1109, 384)`` float32 embeddings."""
    corpus = SCIFACT_MINILM / "corpus.npy"
    if not corpus.is_file():
        pytest.skip(f"SciFact embeddings not found at {corpus} (shared data beside the repo)")
    return np.load(corpus), np.load(SCIFACT_MINILM / "queries.npy")
