"""The HTTP service over a sharded collection (``binsearch serve DIR --ray``), in-process."""

from __future__ import annotations

import time

import numpy as np
from fastapi.testclient import TestClient

from binsearch.distributed import ShardedCollection
from server.app import create_app
from server.settings import Settings

DIM = 32


def test_the_service_serves_a_sharded_collection_like_the_python_api(ray_cluster, tmp_path):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((120, DIM)).astype(np.float32)
    ids = [f"d{i}" for i in range(120)]
    with ShardedCollection.create(tmp_path / "s", shards=2, model=None, dim=DIM) as sc:
        sc.add(ids, embeddings=x, documents=[{"title": f"t{i}", "text": i} for i in ids])
        want = sc.search(embeddings=x[:3], k=5)
    app = create_app(Settings(collection_dir=tmp_path / "s", ray=True), exit_on_load_failure=False)
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.2)
        for q, expected in zip(x[:3], want, strict=True):
            got = client.post("/search", json={"vector": q.tolist(), "k": 5}).json()["results"]
            assert [h["id"] for h in got] == expected.ids
            assert np.allclose([h["score"] for h in got], expected.scores, atol=1e-5)
        stats = client.get("/stats").json()
        assert stats["documents"] == 120 and stats["shards"] == 2 and len(stats["per_shard"]) == 2
        assert sum(s["documents"] for s in stats["per_shard"]) == 120
        new = rng.standard_normal(DIM).tolist()
        body = {"documents": [{"id": "n1", "text": "new", "vector": new}]}
        assert client.post("/documents", json=body).status_code == 200
        assert client.get("/documents/n1").json()["text"] == "new"
        top = client.post("/search", json={"vector": new, "k": 1}).json()["results"]
        assert top[0]["id"] == "n1"
        assert client.delete("/documents/n1").status_code == 200
        assert client.get("/documents/n1").status_code == 404
