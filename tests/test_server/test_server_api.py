"""The HTTP API against independent references: numpy cosine over code values, a dict of live docs."""

from __future__ import annotations

import numpy as np
import pytest
from server_fakes import FAKE_DIM

from binsearch.codes.codecs import make_codec
from index import code_values


def reference_scores(query: np.ndarray, docs: dict[str, np.ndarray], bits: int = 2) -> dict:
    """Cosine of code values, the obvious way: id -> score."""
    codec = make_codec("residual", FAKE_DIM, bits)
    ids = sorted(docs)
    values = {}
    for name, x in [("q", query[None, :])] + [(i, docs[i][None, :]) for i in ids]:
        codes = codec.encode(x.astype(np.float32))
        values[name] = code_values(codes.words, codec.m, codes.scales)[0]
    q = values["q"]
    return {i: float(values[i] @ q / (np.linalg.norm(values[i]) * np.linalg.norm(q))) for i in ids}


def check_topk(results: list[dict], ref: dict[str, float], k: int) -> None:
    """Same scores as the reference top-k; every id scores what the reference says (ties may swap)."""
    expected = sorted(ref.values(), reverse=True)[:k]
    got = [r["score"] for r in results]
    assert len(got) == len(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert len({r["id"] for r in results}) == len(results)
    for r in results:
        assert r["score"] == pytest.approx(ref[r["id"]], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_search_matches_reference_through_writes_replaces_and_deletes(make_client, seed):
    # snapshot_every=7 spreads documents over saved segments, the tail and tombstoned
    # (replaced or deleted) rows, which is what the merge of segments must get right.
    client = make_client(snapshot_every=7)
    rng = np.random.default_rng(seed)
    live: dict[str, np.ndarray] = {}
    for step in range(12):
        batch = {}
        for _ in range(5):
            doc_id = f"d{rng.integers(0, 30)}"
            batch[doc_id] = rng.standard_normal(FAKE_DIM).astype(np.float32)
        body = {
            "documents": [
                {"id": i, "title": f"t {i}", "vector": v.tolist()} for i, v in batch.items()
            ]
        }
        r = client.post("/documents", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["added"] + r.json()["replaced"] == len(batch)
        assert r.json()["replaced"] == len(set(batch) & set(live))
        live.update(batch)
        if step % 3 == 2:
            victim = sorted(live)[int(rng.integers(0, len(live)))]
            assert client.delete(f"/documents/{victim}").status_code == 200
            del live[victim]
        query = rng.standard_normal(FAKE_DIM).astype(np.float32)
        for k in (1, 5, 100):
            r = client.post("/search", json={"vector": query.tolist(), "k": k})
            assert r.status_code == 200, r.text
            check_topk(r.json()["results"], reference_scores(query, live), k)
    allow = sorted(live)[::3] + ["never-written"]
    r = client.post("/search", json={"vector": query.tolist(), "k": 4, "filter": allow})
    ref = reference_scores(query, {i: live[i] for i in allow if i in live})
    check_topk(r.json()["results"], ref, 4)
    nothing = client.post("/search", json={"vector": query.tolist(), "filter": ["never-written"]})
    assert nothing.status_code == 200 and nothing.json()["results"] == []
    assert client.get("/stats").json()["documents"] == len(live)


def test_text_documents_round_trip_and_rank_by_shared_words(client, encoder):
    docs = [
        {"id": "wing", "title": "flutter of swept wings", "text": "wind tunnel tests"},
        {"id": "heat", "title": "heat transfer", "text": "blunt body hypersonic flow"},
        {
            "id": "plate",
            "title": "boundary layer",
            "text": "flat plate transition",
            "metadata": {"y": 1},
        },
    ]
    r = client.post("/documents", json={"documents": docs})
    assert r.json() == {**r.json(), "ids": ["wing", "heat", "plate"], "added": 3, "replaced": 0}
    got = client.get("/documents/plate").json()
    assert got == {
        "id": "plate",
        "title": "boundary layer",
        "text": "flat plate transition",
        "metadata": {"y": 1},
    }
    r = client.post(
        "/search", json={"query": "hypersonic heat transfer", "k": 3, "with_text": True}
    )
    body = r.json()
    assert body["results"][0]["id"] == "heat"
    assert body["results"][0]["text"] == "blunt body hypersonic flow"
    assert body["timings"]["encode_ms"] >= 0 and body["timings"]["total_ms"] >= 0
    no_text = client.post("/search", json={"query": "heat", "k": 1}).json()["results"][0]
    assert "text" not in no_text and no_text["title"] == "heat transfer"
    # Replacing keeps one document per id, with the new content.
    client.post("/documents", json={"documents": [{"id": "heat", "text": "flat plate"}]})
    assert client.get("/stats").json()["documents"] == 3
    assert client.get("/documents/heat").json()["title"] == ""


def test_batch_answers_each_query_like_single_search(client):
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((20, FAKE_DIM))
    client.post(
        "/documents",
        json={"documents": [{"id": str(i), "vector": v.tolist()} for i, v in enumerate(vectors)]},
    )
    queries = [
        {"vector": rng.standard_normal(FAKE_DIM).tolist(), "k": 3},
        {"query": "anything at all", "k": 2},
        {"vector": vectors[4].tolist(), "k": 5, "rescore": True},
    ]
    batch = client.post("/search/batch", json={"queries": queries}).json()["responses"]
    for q, answer in zip(queries, batch, strict=True):
        single = client.post("/search", json=q).json()
        assert [h["id"] for h in answer["results"]] == [h["id"] for h in single["results"]]


def test_rescore_ranks_by_float_query_against_code_values(client):
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((40, FAKE_DIM)).astype(np.float32)
    client.post(
        "/documents",
        json={"documents": [{"id": str(i), "vector": v.tolist()} for i, v in enumerate(vectors)]},
    )
    query = rng.standard_normal(FAKE_DIM).astype(np.float32)
    codec = make_codec("residual", FAKE_DIM, 2)
    codes = codec.encode(vectors)
    values = code_values(codes.words, codec.m, codes.scales)
    float_scores = values @ query / (np.linalg.norm(values, axis=1) * np.linalg.norm(query))
    code_top = client.post("/search", json={"vector": query.tolist(), "k": 20}).json()["results"]
    candidates = [int(h["id"]) for h in code_top]  # rescoring re-ranks the 4k code candidates
    r = client.post("/search", json={"vector": query.tolist(), "k": 5, "rescore": True}).json()
    expected = sorted((float_scores[i] for i in candidates), reverse=True)[:5]
    np.testing.assert_allclose([h["score"] for h in r["results"]], expected, rtol=1e-4)


def test_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="search-form"' in r.text and "fetch(" in r.text


def test_openapi_has_an_example_on_every_model(client):
    schema = client.get("/openapi.json").json()
    missing = [
        name
        for name, model in schema["components"]["schemas"].items()
        if name not in ("ErrorDetail", "ValidationError", "HTTPValidationError")
        and "examples" not in model
    ]
    assert not missing, f"models without examples: {missing}"


def test_health_answers_while_an_encode_is_stuck(make_client, encoder):
    import threading

    release = threading.Event()
    entered = threading.Event()
    original = encoder.encode

    def slow_encode(texts, batch_size=64):
        entered.set()
        release.wait(10)
        return original(texts, batch_size)

    client = make_client()
    encoder.encode = slow_encode
    writer = threading.Thread(
        target=client.post,
        args=("/documents",),
        kwargs={"json": {"documents": [{"id": "x", "text": "a"}]}},
    )
    writer.start()
    try:
        assert entered.wait(10)
        assert client.get("/health").json() == {"status": "ok"}
        # Reads go on too, from the state before the write.
        assert client.get("/documents/x").status_code == 404
    finally:
        release.set()
        writer.join(10)
    assert client.get("/documents/x").status_code == 200
