"""Shared fixtures: where the bundled and the shared datasets live, and one local Ray."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """One real local Ray for the whole session: a ``ray.cluster_utils.Cluster`` of two nodes.

    Starting Ray costs seconds, so it starts once, on first use, and every test
    shares it; each test makes its own sharded collection in its own directory.
    """
    ray = pytest.importorskip("ray", reason="the [distributed] extra (ray) is not installed")
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
