"""``where`` filters and keyword / hybrid modes over HTTP, against the collection's own answers."""

from __future__ import annotations

import numpy as np
from server_fakes import FAKE_DIM

from binsearch.collection.fusion import rrf

DOCS = [
    {"id": "a", "title": "heat transfer", "text": "blunt body", "metadata": {"year": 1958}},
    {"id": "b", "title": "boundary layer", "text": "flat plate heat", "metadata": {"year": 1962}},
    {"id": "c", "title": "swept wings", "text": "flutter", "metadata": {"year": 1965, "x": True}},
    {"id": "d", "title": "heat heat", "text": "heat", "metadata": {"year": "1970"}},
]


def test_where_keyword_and_hybrid(client) -> None:
    assert client.post("/documents", json={"documents": DOCS}).status_code == 200
    q = {"query": "heat flutter", "k": 4}
    r = client.post("/search", json={**q, "where": {"year": {"$gte": 1960}}})
    assert r.status_code == 200, r.text
    assert {h["id"] for h in r.json()["results"]} == {"b", "c"}  # "1970" is a string
    last = client.get("/stats").json()["last_filter"]
    assert last["fields"] == ["year"] and last["matched"] == 2 and last["scan"] == "rows"
    assert client.get("/stats").json()["startup"]["ready_after_s"] > 0
    kw = client.post("/search", json={**q, "mode": "keyword"}).json()["results"]
    # "heat" is in 3 of 4 documents: its idf is floored (1e-6), "flutter" decides.
    assert [h["id"] for h in kw][:1] == ["c"] and {h["id"] for h in kw} == {"a", "b", "c", "d"}
    kw_f = client.post("/search", json={**q, "mode": "keyword", "where": {"x": True}}).json()
    assert [h["id"] for h in kw_f["results"]] == ["c"]
    sem = client.post("/search", json={**q, "k": 100}).json()["results"]
    hy = client.post("/search", json={**q, "mode": "hybrid"}).json()["results"]
    key = {h["id"]: i for i, h in enumerate(DOCS)}
    _, keys = rrf([np.array([key[h["id"]] for h in sem]), np.array([key[h["id"]] for h in kw])], 4)
    assert [h["id"] for h in hy] == [DOCS[int(k)]["id"] for k in keys]
    vec = np.ones(FAKE_DIM).tolist()
    both = client.post("/search", json={**q, "vector": vec, "mode": "hybrid"})
    assert both.status_code == 200, both.text


def test_bad_filters_and_modes_are_422_in_one_line(client) -> None:
    bad = [
        {"query": "x", "where": {"year": {"$regex": "19"}}},
        {"query": "x", "where": {"year": {"$gt": "soon"}}},
        {"query": "x", "where": {"$or": []}},
        {"vector": [0.5] * FAKE_DIM, "mode": "keyword"},
        {"query": "x", "mode": "fuzzy"},
    ]
    for body in bad:
        r = client.post("/search", json=body)
        assert r.status_code == 422, (body, r.text)
        assert "\n" not in r.json()["detail"] if isinstance(r.json().get("detail"), str) else True
    msg = client.post("/search", json=bad[0]).text
    assert "$regex" in msg
