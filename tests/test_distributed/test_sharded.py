"""ShardedCollection on a real two-node local Ray against one Collection holding the same documents."""

from __future__ import annotations

import numpy as np
import pytest

from binsearch.collection.collection import Collection, CollectionError
from binsearch.collection.ingest import index_corpus
from binsearch.distributed import ShardedCollection, ShardUnavailable, route, split
from binsearch.distributed.build import index_corpus_sharded


def _same(a: list, b: list, exact: bool = True) -> None:
    """Two result lists are identical: ids, keys and (bit-equal unless not ``exact``) scores."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.ids == y.ids
        np.testing.assert_array_equal(x.keys, y.keys)
        if exact:
            np.testing.assert_array_equal(x.scores, y.scores)
        else:
            np.testing.assert_allclose(x.scores, y.scores, rtol=1e-6)


@pytest.fixture(scope="module")
def scifact_pair(ray_cluster, scifact_embeddings, tmp_path_factory):
    """SciFact in 3 shards and in one collection, with the same global keys."""
    corpus, _ = scifact_embeddings
    root = tmp_path_factory.mktemp("scifact")
    ids = [f"doc{i}" for i in range(len(corpus))]
    sc = ShardedCollection.create(root / "sharded", shards=3, model=None, dim=384)
    res = sc.add(ids, embeddings=corpus, texts=[f"text {i}" for i in ids])
    assert (res.added, res.replaced) == (len(ids), 0)
    one = Collection.create(root / "one", model=None, dim=384)
    one.add(ids, embeddings=corpus, texts=[f"text {i}" for i in ids], keys=res.keys)
    yield sc, one, ids
    sc.close()
    one.close()


def test_equal_to_one_collection_on_scifact(scifact_pair, scifact_embeddings) -> None:
    sc, one, ids = scifact_pair
    _, queries = scifact_embeddings
    q = queries[:300]
    _same(sc.search(embeddings=q, k=10), one.search(embeddings=q, k=10))
    _same(sc.search(embeddings=q[:20], k=100), one.search(embeddings=q[:20], k=100))
    allowed = ids[::7]
    _same(
        sc.search(embeddings=q[:50], k=10, filter=allowed),
        one.search(embeddings=q[:50], k=10, filter=allowed),
    )
    # Rescoring: the global best 4k by code score, re-ranked by the float query. The
    # re-scores are a BLAS matrix-vector product whose last bit depends on how many
    # candidates it is given (one collection: 4k, a shard: its share), so scores agree
    # to float32 rounding and the ranking exactly.
    _same(
        sc.search(embeddings=q[:100], k=10, rescore=True),
        one.search(embeddings=q[:100], k=10, rescore=True),
        exact=False,
    )
    hits = sc.search(embeddings=q[:2], k=3)
    assert [d["id"] for d in hits[0].documents()] == hits[0].ids
    assert hits[0].documents()[0]["text"] == f"text {hits[0].ids[0]}"
    assert not hits[0].partial


def test_routing_stats_and_get(scifact_pair) -> None:
    sc, one, ids = scifact_pair
    stats = sc.stats()
    expected = np.bincount(route(ids, 3), minlength=3)
    assert [s["documents"] for s in stats["per_shard"]] == expected.tolist()
    assert stats["documents"] == len(sc) == len(ids)
    assert all(s["index_bytes"] > 0 and s["database_bytes"] > 0 for s in stats["per_shard"])
    # Each id lives on exactly the shard its hash names.
    for s, handle in enumerate(sc.handles):
        import ray

        mine = [i for i, o in zip(ids[:300], route(ids[:300], 3), strict=True) if o == s]
        others = [i for i, o in zip(ids[:300], route(ids[:300], 3), strict=True) if o != s]
        assert all(d is not None for d in ray.get(handle.get.remote(mine)))
        assert all(d is None for d in ray.get(handle.get.remote(others)))
    assert sc.get("doc5")["text"] == "text doc5"
    assert sc.get("nope") is None
    assert sc.ready()


def test_ties_on_random_codes_equal_one_collection(ray_cluster, tmp_path) -> None:
    rng = np.random.default_rng(7)
    base = rng.standard_normal((12, 64)).astype(np.float32)
    vectors = base[rng.integers(0, 12, 2000)]  # 12 distinct codes: ties everywhere
    ids = [f"t{i}" for i in range(2000)]
    keys = rng.permutation(50_000)[:2000].astype(np.int64)  # ties break by these, not by order
    sc = ShardedCollection.create(tmp_path / "s", shards=4, codec="sign", model=None, dim=64)
    one = Collection.create(tmp_path / "o", codec="sign", model=None, dim=64)
    try:
        sc.add(ids, embeddings=vectors, keys=keys)
        one.add(ids, embeddings=vectors, keys=keys)
        q = rng.standard_normal((40, 64)).astype(np.float32)
        got, want = sc.search(embeddings=q, k=50), one.search(embeddings=q, k=50)
        _same(got, want)
        assert any(len(np.unique(r.scores)) < len(r.scores) for r in got)  # there were ties
    finally:
        sc.close()
        one.close()


def test_replace_and_delete_across_shards(ray_cluster, tmp_path) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 32)).astype(np.float32)
    ids = [f"r{i}" for i in range(400)]
    sc = ShardedCollection.create(tmp_path / "s", shards=3, model=None, dim=32)
    one = Collection.create(tmp_path / "o", model=None, dim=32)
    try:
        first = sc.add(ids, embeddings=x, texts=["old"] * 400)
        one.add(ids, embeddings=x, texts=["old"] * 400, keys=first.keys)
        # Replace 100 ids (on every shard) with new vectors: still one live copy each.
        y = rng.standard_normal((100, 32)).astype(np.float32)
        res = sc.add(ids[::4], embeddings=y, texts=["new"] * 100)
        assert (res.added, res.replaced) == (0, 100)
        np.testing.assert_array_equal(res.keys, first.keys[::4])  # a replace keeps its key
        one.add(ids[::4], embeddings=y, texts=["new"] * 100)
        assert len(sc) == 400
        assert sc.get(ids[4])["text"] == "new" and sc.get(ids[1])["text"] == "old"
        top = sc.search(embeddings=y[:10], k=5)
        for i, r in enumerate(top):
            assert r.ids[0] == ids[4 * i] and len(set(r.ids)) == len(r.ids)
        # Delete across shards, some absent.
        gone = ids[1::4] + ["missing-1", "missing-2"]
        assert sc.delete(gone) == 100
        one.delete(gone)
        assert len(sc) == 300 and sc.get(ids[1]) is None
        hits = sc.search(embeddings=x[1::4][:20], k=400)
        assert not set(ids[1::4]) & {i for r in hits for i in r.ids}
        _same(hits, one.search(embeddings=x[1::4][:20], k=400))
        # Keys are never handed out twice, also after reopening.
        sc.close()
        # A shard held by another process: open refuses in one line, names the shard.
        held = Collection.open(tmp_path / "s" / "shard-001")
        with pytest.raises(CollectionError, match="shard-001 .*another process"):
            ShardedCollection.open(tmp_path / "s")
        held.close()
        sc = ShardedCollection.open(tmp_path / "s")
        later = sc.add(["fresh"], embeddings=x[:1])
        assert later.keys[0] > first.keys.max()
        assert len(sc) == 301
    finally:
        sc.close()
        one.close()


def test_split_and_build_rank_like_the_source(ray_cluster, scifact_embeddings, tmp_path) -> None:
    corpus, queries = scifact_embeddings
    corpus, q = corpus[:1500], queries[:100]
    ids = [f"s{i}" for i in range(len(corpus))]
    one = Collection.create(tmp_path / "one", model=None, dim=384)
    one.add(ids, embeddings=corpus, texts=ids)
    want = one.search(embeddings=q, k=10)
    one.close()
    sc = split(tmp_path / "one", tmp_path / "split", 2)
    try:
        _same(sc.search(embeddings=q, k=10), want)
        assert sc.get("s10")["text"] == "s10"
        assert sc.add(["new"], embeddings=corpus[:1]).keys[0] >= len(corpus)
    finally:
        sc.close()
    with pytest.raises(CollectionError, match="sharded collection"):
        Collection.open(tmp_path / "split")


def test_index_corpus_sharded_ranks_like_index_corpus(ray_cluster, bundled, tmp_path) -> None:
    # `binsearch index CORPUS --embeddings E --out DIR --shards 3` against the same without
    # --shards: keys in corpus order either way; each shard actor memory-maps corpus.npy.
    emb = bundled / "embeddings" / "all-MiniLM-L6-v2"
    one = index_corpus(bundled, tmp_path / "one", embeddings=emb, skip_empty=True, progress=False)
    sc = index_corpus_sharded(
        bundled, tmp_path / "sharded", 3, embeddings=emb, skip_empty=True, progress=False
    )
    try:
        q = np.load(emb / "queries.npy")[:50]
        _same(sc.search(embeddings=q, k=10), one.search(embeddings=q, k=10))
        assert len(sc) == len(one) > 1300
        doc = one.get("1")
        assert sc.get("1") == doc
    finally:
        sc.close()
        one.close()


def test_bad_input_is_a_one_line_error(scifact_pair) -> None:
    sc, _, _ = scifact_pair
    with pytest.raises(CollectionError, match=r"shape \(2, 384\)"):
        sc.search(embeddings=np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="query texts or query embeddings"):
        sc.search()
    with pytest.raises(ValueError, match="k must be"):
        sc.search(embeddings=np.ones((1, 384), np.float32), k=0)
    with pytest.raises(ValueError, match="unique"):
        sc.add(["a", "a"], embeddings=np.ones((2, 384), np.float32))
    with pytest.raises(ValueError, match="no model"):
        sc.search(["text query"])
    with pytest.raises(ValueError, match="not empty"):
        ShardedCollection.create(sc.path, shards=2, model=None, dim=384)
    assert ShardUnavailable([1], ["x"], 3).shards == [1]
