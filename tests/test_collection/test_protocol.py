"""The collection protocol against a numpy brute force, run on both implementations.

Every test here takes ``kind``: a local :class:`binsearch.Collection`, or a
2-shard :class:`binsearch.distributed.ShardedCollection` on a real local Ray.
The same calls must give the same answers (one collection's ranking: ties by
key), the same result types and the same one-line errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from binsearch import AddResult, Collection, CollectionError, SearchResult
from binsearch.codes.quantize import residual_binarize
from binsearch.collection.protocol import STATS_KEYS, CollectionProtocol

DIM = 32


@pytest.fixture(params=["local", "sharded"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "sharded":
        request.getfixturevalue("ray_cluster")
    return request.param


@pytest.fixture
def make(kind: str, tmp_path: Path) -> Callable[..., CollectionProtocol]:
    """``make(codec, bits, model=None, dim=DIM)``: a new empty collection of this kind."""
    made: list[CollectionProtocol] = []

    def create(codec: str = "residual", bits: int = 2, **options: Any) -> CollectionProtocol:
        options.setdefault("model", None)
        options.setdefault("dim", None if options["model"] else DIM)
        path = tmp_path / f"c{len(made)}"
        if kind == "local":
            c: CollectionProtocol = Collection.create(path, codec, bits, **options)
        else:
            from binsearch.distributed import ShardedCollection

            c = ShardedCollection.create(path, 2, codec, bits, **options)
        made.append(c)
        return c

    yield create
    for c in made:
        c.close()


def reopen(c: CollectionProtocol) -> CollectionProtocol:
    """Close without a snapshot (the journal alone must bring every write back) and open again."""
    path = c.path
    c.close(snapshot=False)
    if isinstance(c, Collection):
        return Collection.open(path)
    from binsearch.distributed import ShardedCollection

    return ShardedCollection.open(path)


def reference_values(x: np.ndarray, planes: int) -> np.ndarray:
    """Code values ``sum_p alpha_p sign_p`` of the residual codec, by the quantizer alone."""
    signs, scales = residual_binarize(x.astype(np.float32), planes, axis=-1)
    return np.einsum("pnd,pn->nd", signs.astype(np.float64), scales[:, :, 0].astype(np.float64))


def brute_force(docs: dict[str, tuple[int, np.ndarray]], query: np.ndarray, k: int, planes: int):
    """Top-k ids by cosine of code values; ties by key ascending, as the index breaks them."""
    ids = list(docs)
    keys = np.array([docs[i][0] for i in ids])
    values = reference_values(np.stack([docs[i][1] for i in ids]), planes)
    q = reference_values(query[None, :], planes)[0]
    scores = values @ q / (np.linalg.norm(values, axis=1) * np.linalg.norm(q))
    order = np.lexsort((keys, -np.round(scores, 5)))[:k]
    return [ids[j] for j in order], scores[order]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_add_replace_delete_against_brute_force(make) -> None:
    rng = np.random.default_rng(0)
    model: dict[str, tuple[int, np.ndarray]] = {}
    c = make("residual", 2)
    x = unit(rng, 300)
    ids = [f"d{i}" for i in range(300)]
    added = c.add(ids, x, texts=[f"text {i}" for i in ids])
    assert isinstance(added, AddResult) and (added.added, added.replaced) == (300, 0)
    assert added.keys.tolist() == list(range(300))
    model.update({i: (k, v) for k, (i, v) in enumerate(zip(ids, x, strict=True))})
    # Replace 20 (keys kept), delete 30, add 50 more.
    new = unit(rng, 20)
    replaced = c.add(ids[:20], new, texts=["new"] * 20)
    assert replaced.replaced == 20 and replaced.keys.tolist() == list(range(20))
    model.update({i: (model[i][0], v) for i, v in zip(ids[:20], new, strict=True)})
    assert c.delete(ids[100:130] + ["absent"]) == 30
    for i in ids[100:130]:
        del model[i]
    more = unit(rng, 50)
    c.add([f"e{i}" for i in range(50)], more)
    model.update({f"e{i}": (300 + i, v) for i, v in enumerate(more)})
    assert len(c) == len(model) == 320

    queries = unit(rng, 25)
    for again in (False, True):
        if again:
            c = reopen(c)
        results = c.search(embeddings=queries, k=10)
        assert all(isinstance(r, SearchResult) and not r.partial for r in results)
        for q, got in zip(queries, results, strict=True):
            want, scores = brute_force(model, q, 10, 2)
            assert np.allclose(got.scores, scores, atol=1e-4)
            # Equal scores may differ in the last bit between the kernels and numpy.
            assert sorted(got.ids) == sorted(want) or np.allclose(got.scores[-1], scores[-1])
            assert got.ids[0] == want[0]
    assert c.get("d0")["text"] == "new" and c.get("d100") is None
    assert [d and d["id"] for d in c.get_many(["d1", "d100", "e3"])] == ["d1", None, "e3"]
    c.close()


def test_filter_returns_only_allowed_ids_in_brute_force_order(make) -> None:
    rng = np.random.default_rng(1)
    x = unit(rng, 200)
    ids = [str(i) for i in range(200)]
    c = make("residual", 3)
    c.add(ids, x)
    allowed = ids[::7] + ["no-such-id"]
    q = unit(rng, 1)[0]
    got = c.search(embeddings=q[None, :], k=5, filter=allowed)[0]
    sub = {i: (int(i), x[int(i)]) for i in ids[::7]}
    want, _ = brute_force(sub, q, 5, 3)
    assert got.ids == want
    assert c.search(embeddings=q[None, :], k=5, filter=["no-such-id"])[0].ids == []
    assert c.search(embeddings=q[None, :], k=5, filter=[])[0].ids == []


def test_rescore_ranks_by_the_float_query_against_code_values(make) -> None:
    rng = np.random.default_rng(2)
    x = unit(rng, 100)
    c = make("residual", 2)
    c.add([str(i) for i in range(100)], x)
    q = unit(rng, 1)[0]
    got = c.search(embeddings=q[None, :], k=5, rescore=True)[0]
    values = reference_values(x, 2)
    cos = values @ q / np.linalg.norm(values, axis=1)
    assert np.allclose(got.scores, np.sort(cos)[::-1][: len(got)], atol=1e-4)
    assert got.ids == [str(i) for i in np.argsort(-cos, kind="stable")[:5]]


def test_sign_scores_are_cosines_of_the_codes(make) -> None:
    """One fixed plane: the score is ``<s(q), s(d)> / m``, the cosine of the +-1 vectors."""
    rng = np.random.default_rng(6)
    x = unit(rng, 50)
    c = make("sign", 1)
    c.add([str(i) for i in range(50)], x)
    q = unit(rng, 1)[0]
    got = c.search(embeddings=q[None, :], k=50)[0]
    signs = np.where(x >= 0, 1.0, -1.0)
    cos = signs @ np.where(q >= 0, 1.0, -1.0) / DIM
    assert np.allclose(got.scores, np.sort(cos)[::-1], atol=1e-6)


def test_documents_and_metadata_round_trip(make) -> None:
    c = make("sign", 1)
    doc = {"title": "T", "text": "body é \u2603", "metadata": {"tags": ["a"], "n": 1}}
    c.add(["x"], unit(np.random.default_rng(3), 1), documents=[doc])
    hit = c.search(embeddings=unit(np.random.default_rng(3), 1), k=1)[0]
    assert hit.ids == ["x"] and hit.documents() == [{"id": "x", **doc}]
    assert c.get("x") == {"id": "x", **doc}


def test_texts_are_embedded_by_the_collections_model(make) -> None:
    """Adding texts without embeddings embeds title + text with the model (both kinds)."""
    c = make("residual", 2, model="all-MiniLM-L6-v2")
    docs = [
        {"title": "Boundary layers", "text": "Laminar flow separates near the trailing edge."},
        {"title": "Baking", "text": "Bread rises when yeast ferments the dough."},
        {"title": "Orbits", "text": "A satellite in low earth orbit circles in ninety minutes."},
    ]
    assert c.add(["flow", "bread", "orbit"], documents=docs).added == 3
    hits = c.search(["how does yeast make bread rise"], k=3)[0]
    assert hits.ids[0] == "bread"
    expected = c.embed([f"{d['title']} {d['text']}" for d in docs])
    assert expected.shape == (3, 384)
    by_vector = c.search(embeddings=expected[2:3], k=1)[0]
    assert by_vector.ids == ["orbit"]


def test_stats_have_the_protocols_keys(make) -> None:
    c = make("residual", 2)
    c.add(["a", "b"], unit(np.random.default_rng(7), 2))
    stats = c.stats()
    assert set(STATS_KEYS) <= set(stats)
    assert stats["documents"] == 2 and stats["dim"] == DIM
    # two planes of one 64-bit word each (32 dims, padded: every stored bit counts), two scales
    assert stats["bits_per_vector"] == 2 * 64 + 2 * 32
    c.warm()
    assert c.ready()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.add(["a", "a"], np.ones((2, DIM))), "unique"),
        (lambda c: c.add(["a"], np.ones((1, DIM + 1))), f"(1, {DIM})"),
        (lambda c: c.add(["a"], np.zeros((1, DIM))), "all zeros"),
        (lambda c: c.add(["a"], np.full((1, DIM), np.nan)), "finite"),
        (lambda c: c.add(["a"], np.full((1, DIM), 1e300)), "finite"),
        (lambda c: c.add([" "], np.ones((1, DIM))), "non-blank"),
        (lambda c: c.add("ab", np.ones((2, DIM))), "not one string"),
        (lambda c: c.add(["a"], texts=["no model"]), "no model"),
        (lambda c: c.add(["a"], documents=[{"title": ""}]), "needs an embedding"),
        (lambda c: c.add(["a", "b"], np.ones((2, DIM)), keys=[3, 3]), "distinct"),
        (lambda c: c.search(embeddings=np.ones((1, DIM)), k=0), "positive"),
        (lambda c: c.search(embeddings=np.ones((2, 5))), f"(2, {DIM})"),
        (lambda c: c.search(), "one of them"),
        (lambda c: c.search(["text query"]), "no model"),
    ],
)
def test_bad_input_is_a_clear_error(make, call, message: str) -> None:
    c = make("residual", 2)
    with pytest.raises(CollectionError, match=re.escape(message)):
        call(c)
    assert len(c) == 0
