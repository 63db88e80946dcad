"""The keyword index (FTS5 BM25) against rank_bm25 on the same tokens; RRF by hand; migration."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from binsearch.collection.collection import Collection
from binsearch.collection.fusion import RRF_K, rrf
from binsearch.collection.keyword import K1, B, document_tokens, match_expression

rank_bm25 = pytest.importorskip("rank_bm25", reason="the test extra (rank_bm25) is not installed")

VOCAB = [f"w{i}x" for i in range(60)]


def corpus(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(VOCAB) + 1)  # Zipf-like: some words common, most rare
    p /= p.sum()
    docs = []
    for _ in range(n):
        title = " ".join(rng.choice(VOCAB, size=rng.integers(0, 4), p=p))
        text = " ".join(rng.choice(VOCAB, size=rng.integers(1, 30), p=p))
        docs.append({"title": title, "text": text})
    return docs


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    n, dim = 300, 16
    docs = corpus(n, 0)
    rng = np.random.default_rng(1)
    c = Collection.create(tmp_path_factory.mktemp("kw") / "c", model=None, dim=dim)
    c.add([f"d{i}" for i in range(n)], embeddings=rng.standard_normal((n, dim)), documents=docs)
    yield c, docs, rng.standard_normal((5, dim)).astype(np.float32)
    c.close()


def reference(c: Collection) -> tuple[object, list[int]]:
    """rank_bm25's BM25Okapi over the tokens FTS5 indexed (read from its vocabulary)."""
    db = sqlite3.connect(c.path / "documents.db")
    tokens = document_tokens(db)
    db.close()
    keys = sorted(tokens)
    return rank_bm25.BM25Okapi([tokens[k] for k in keys], k1=K1, b=B), keys


@pytest.mark.parametrize("seed", range(6))
def test_bm25_equals_rank_bm25_on_the_same_tokens(made, seed):
    c, _, _ = made
    ref, keys = reference(c)
    # Query terms in under half the documents (a positive idf: FTS5 and rank_bm25
    # floor a negative one differently); some repeated.
    df = {t: sum(t in doc for doc in ref.doc_freqs) for t in VOCAB}
    usable = sorted(t for t, d in df.items() if 0 < d < len(keys) / 2)
    rng = np.random.default_rng(seed)
    terms = list(rng.choice(usable, size=int(rng.integers(1, 5))))
    want = ref.get_scores(terms)
    hits = c.search([" ".join(terms)], k=20, mode="keyword")[0]
    assert len(hits) == min(20, int((want > 0).sum()))
    by_key = dict(zip(keys, want, strict=True))
    np.testing.assert_allclose(hits.scores, [by_key[int(k)] for k in hits.keys], rtol=1e-5)
    np.testing.assert_allclose(hits.scores, np.sort(want)[::-1][: len(hits)], rtol=1e-5)


def test_hybrid_is_rrf_of_the_two_lists(made):
    c, _, q = made
    text = "w9x w25x"
    got = c.search([text], k=10, mode="hybrid", embeddings=q[:1])[0]
    sem = c.search(embeddings=q[0], k=100)[0].keys.tolist()
    kw = c.search([text], k=100, mode="keyword")[0].keys.tolist()
    fused = {}
    for ranked in (sem, kw):
        for r, key in enumerate(ranked, start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + r)
    want = sorted(fused, key=lambda key: (-fused[key], key))[:10]
    assert got.keys.tolist() == want
    np.testing.assert_allclose(got.scores, [fused[k] for k in want], rtol=1e-6)


def test_rrf_hand_worked():
    # key 5: ranks 2 and 1 -> 1/62 + 1/61; key 9: rank 1 -> 1/61; key 4: rank 2 -> 1/62
    scores, keys = rrf([np.array([9, 5]), np.array([5, 4])], k=3)
    assert keys.tolist() == [5, 9, 4]
    np.testing.assert_allclose(scores, [1 / 62 + 1 / 61, 1 / 61, 1 / 62], rtol=1e-6)


def test_keyword_honours_filters_and_writes(made, tmp_path):
    c, docs, _ = made
    hits = c.search(["w5x"], k=300, mode="keyword", where={"$id": ["d1", "d2", "d3"]})[0]
    assert set(hits.ids) <= {"d1", "d2", "d3"}
    assert set(hits.ids) == {
        f"d{i}" for i in (1, 2, 3) if "w5x" in f"{docs[i]['title']} {docs[i]['text']}".split()
    }


def test_replace_delete_and_migration_keep_the_index_whole(tmp_path):
    path = tmp_path / "c"
    c = Collection.create(path, model=None, dim=8)
    x = np.eye(8, dtype=np.float32)
    c.add(["a", "b", "c"], embeddings=x[:3], texts=["red fox", "blue whale", "red whale"])
    c.add(["a"], embeddings=x[:1], texts=["green frog"])  # a replace drops "red fox"
    c.delete(["c"])
    assert c.search(["red"], k=5, mode="keyword")[0].ids == []
    assert c.search(["frog whale"], k=5, mode="keyword")[0].ids in (["a", "b"], ["b", "a"])
    before = c.search(["frog whale"], k=5, mode="keyword")[0]
    c.close()
    db = sqlite3.connect(path / "documents.db")
    db.execute("INSERT INTO keyword(keyword, rank) VALUES ('integrity-check', 1)")
    # An older database: no keyword index, schema version 0.
    db.executescript(
        "DROP TRIGGER keyword_insert; DROP TRIGGER keyword_delete; DROP TRIGGER keyword_update;"
        "DROP TABLE keyword; PRAGMA user_version = 0;"
    )
    db.close()
    with Collection.open(path) as c:
        assert c.store.keyword_built
        after = c.search(["frog whale"], k=5, mode="keyword")[0]
        assert after.ids == before.ids
        np.testing.assert_array_equal(after.scores, before.scores)


def test_match_expression_quotes_every_token():
    assert match_expression('NEAR("x" y) AND z*') == '"NEAR" OR "x" OR "y" OR "AND" OR "z"'
    assert match_expression("?!") is None
