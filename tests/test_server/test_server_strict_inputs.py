"""Issue 23, fault 7 (the service's share): strict JSON types and C1 control characters in ids.

``k: true`` was taken as k=1 and ``vector: ["1", ...]`` or ``[true, ...]`` as
numbers; an id holding U+0085 (a C1 control character) was stored although the
docs forbid control characters. Each is now a 422 naming the field.
"""

from __future__ import annotations

import pytest
from server_fakes import FAKE_DIM


def vector(first: object = 1.0) -> list[object]:
    return [first] + [0.5] * (FAKE_DIM - 1)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"vector": vector(), "k": True}, "k"),
        ({"vector": vector(), "k": "3"}, "k"),
        ({"vector": vector(), "k": 2.0}, "k"),
        ({"vector": vector("1")}, "vector"),
        ({"vector": vector(True)}, "vector"),
        ({"query": "x", "rescore": "yes"}, "rescore"),
    ],
)
def test_loose_json_types_are_refused_in_search(client, body, field):
    response = client.post("/search", json=body)
    assert response.status_code == 422, response.text
    assert field in response.text


@pytest.mark.parametrize(
    "doc",
    [
        {"id": "a", "vector": vector("1")},
        {"id": "a", "vector": vector(False)},
        {"id": 5, "text": "five"},
        {"id": "a", "text": 5},
    ],
)
def test_loose_json_types_are_refused_in_writes(client, doc):
    response = client.post("/documents", json={"documents": [doc]})
    assert response.status_code == 422, response.text
    assert client.get("/stats").json()["documents"] == 0


def test_plain_numbers_still_work(client):
    ok = client.post("/documents", json={"documents": [{"id": "a", "vector": [1] * FAKE_DIM}]})
    assert ok.status_code == 200, ok.text
    found = client.post("/search", json={"vector": vector(1), "k": 1})
    assert found.status_code == 200 and found.json()["results"][0]["id"] == "a"


@pytest.mark.parametrize("char", ["\x85", "\x80", "\x9f", "\x00", "\x7f"])
def test_control_characters_in_an_id_are_refused(client, char):
    doc = {"id": f"a{char}b", "text": "some text"}
    response = client.post("/documents", json={"documents": [doc]})
    assert response.status_code == 422, response.text
    assert client.get("/stats").json()["documents"] == 0


def test_non_control_characters_beyond_ascii_are_fine(client):
    doc = {"id": "caf\u00e9-\u00a0-\u4e2d", "text": "some text"}
    assert client.post("/documents", json={"documents": [doc]}).status_code == 200
