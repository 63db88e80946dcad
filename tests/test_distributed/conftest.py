"""One real local Ray for the whole package: a ``ray.cluster_utils.Cluster`` of two nodes.

Starting Ray costs seconds, so it starts once (session scope) and every test
shares it; each test makes its own sharded collection in its own directory.
Shard actors are spread over both nodes (they share this machine's disk).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [distributed] extra (ray) is not installed")

SCIFACT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "scifact"
SCIFACT_MINILM = SCIFACT / "embeddings" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def scifact_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """SciFact MiniLM corpus ``(5183, 384)`` and query ``(1109, 384)`` float32 embeddings."""
    corpus = SCIFACT_MINILM / "corpus.npy"
    if not corpus.is_file():
        pytest.skip(f"SciFact embeddings not found at {corpus} (shared data beside the repo)")
    return np.load(corpus), np.load(SCIFACT_MINILM / "queries.npy")
