"""Metadata filters and keyword / hybrid modes on a sharded collection of vectors only (64-d)."""

from __future__ import annotations

import numpy as np
import pytest

from binsearch.collection.collection import Collection, CollectionError
from binsearch.collection.fusion import rrf
from binsearch.distributed import ShardedCollection

WORDS = ["apple", "banana", "cherry", "delta", "echo"]


def test_where_keyword_and_hybrid_across_shards(ray_cluster, tmp_path) -> None:
    rng = np.random.default_rng(5)
    n = 300
    x = rng.standard_normal((n, 64)).astype(np.float32)
    ids = [f"v{i}" for i in range(n)]
    docs = [
        {"text": f"{WORDS[i % 5]} {WORDS[(i * 7) % 5]}", "metadata": {"n": i, "odd": bool(i % 2)}}
        for i in range(n)
    ]
    sc = ShardedCollection.create(tmp_path / "s", shards=3, model=None, dim=64)
    one = Collection.create(tmp_path / "o", model=None, dim=64)
    try:
        first = sc.add(ids, embeddings=x, documents=docs)
        one.add(ids, embeddings=x, documents=docs, keys=first.keys)
        where = {"n": {"$lt": 150}, "odd": True}
        q = rng.standard_normal((5, 64)).astype(np.float32)
        got = sc.search(embeddings=q, k=10, where=where)
        want = one.search(embeddings=q, k=10, where=where)
        for g, w in zip(got, want, strict=True):
            assert g.ids == w.ids
            assert all(d["metadata"]["odd"] and d["metadata"]["n"] < 150 for d in g.documents())
        # Keyword: every hit holds the word and meets the filter.
        kw = sc.search(["cherry"], k=20, mode="keyword", where={"odd": False})[0]
        assert len(kw) == 20
        assert all("cherry" in d["text"] and not d["metadata"]["odd"] for d in kw.documents())
        # Hybrid: the reciprocal-rank fusion of the two sharded lists.
        hy = sc.search(["banana"], k=10, mode="hybrid", embeddings=q[:1], where=where)[0]
        sem = sc.search(embeddings=q[:1], k=100, where=where)[0]
        key = sc.search(["banana"], k=100, mode="keyword", where=where)[0]
        _, keys = rrf([sem.keys, key.keys], 10)
        assert hy.keys.tolist() == keys.tolist()
        with pytest.raises(CollectionError, match="no model"):
            sc.search(["banana"], k=3, mode="hybrid")
    finally:
        sc.close()
        one.close()
