"""Bad input gets a 4xx JSON error that says what was wrong; keys guard writes."""

from __future__ import annotations

import logging
import time

import pytest
from server_fakes import FAKE_DIM

from server.run import choose_host, is_loopback
from server.settings import Settings

GOOD = [0.1] * FAKE_DIM


def post_raw(client, path: str, raw: bytes):
    return client.post(path, content=raw, headers={"content-type": "application/json"})


CASES = [
    # (route, body, expected status, words the message must contain)
    ("/search", {"vector": [0.1] * 5}, 422, "5 values; this collection expects 32"),
    ("/search", {"query": "x", "k": 0}, 422, "body.k"),
    ("/search", {"query": "x", "k": 1001}, 422, "body.k"),
    ("/search", {"query": ""}, 422, "body.query"),
    ("/search", {"query": "   "}, 422, "blank"),
    ("/search", {"query": "x" * 2001}, 422, "body.query"),
    ("/search", {}, 422, "exactly one of"),
    ("/search", {"query": "x", "vector": GOOD}, 422, "exactly one of"),
    ("/search", {"query": "x", "colour": "red"}, 422, "colour"),
    ("/search", {"vector": GOOD, "filter": ["a/b"]}, 422, "filter"),
    ("/search/batch", {"queries": []}, 422, "queries"),
    ("/search/batch", {"queries": [{"query": "x"}] * 65}, 422, "queries"),
    ("/search/batch", {"queries": [{"query": "x"}, {"vector": [1.0]}]}, 422, "queries[1].vector"),
    ("/documents", {"documents": [{"id": "a"}]}, 422, "non-blank title or text"),
    ("/documents", {"documents": [{"id": "a", "text": "x" * 50_001}]}, 422, "text"),
    ("/documents", {"documents": [{"id": "a", "vector": [0.0] * FAKE_DIM}]}, 422, "all zeros"),
    ("/documents", {"documents": [{"id": "a", "vector": [1.0] * 3}]}, 422, "expects 32"),
    (
        "/documents",
        {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
        422,
        "unique",
    ),
    ("/documents", {"documents": []}, 422, "documents"),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), CASES)
def test_bad_input_is_a_4xx_json_error(client, path, body, status, words):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["status"] == status and words in error["message"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"vector": [NaN' + b", 0.1" * (FAKE_DIM - 1) + b"]}", 422),
        (b'{"vector": [Infinity' + b", 0.1" * (FAKE_DIM - 1) + b"]}", 422),
        (b'{"query": "x", "k": 3', 400),
        (b"not json at all", 400),
        (b"[1, 2]", 422),
    ],
)
def test_non_finite_and_malformed_json(client, raw, status):
    r = post_raw(client, "/search", raw)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_non_finite_metadata_is_refused(client):
    raw = b'{"documents": [{"id": "a", "text": "x", "metadata": {"v": [1, NaN]}}]}'
    r = post_raw(client, "/documents", raw)
    assert r.status_code == 422 and "NaN" in r.json()["error"]["message"]


def test_a_model_that_does_not_fit_the_index_fails_the_load(make_client, encoder, tmp_path):
    make_client().__exit__(None, None, None)  # a 32-d collection on disk
    encoder.dim = 7
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    app = create_app(Settings(collection_dir=tmp_path / "index"), encoder=encoder)
    with TestClient(app) as client:
        for _ in range(200):
            ready = client.get("/ready").json()
            if ready.get("error"):
                break
            time.sleep(0.05)
        assert "32-d codes" in ready["error"] and str(tmp_path) not in ready["error"]
        assert client.post("/search", json={"vector": GOOD}).status_code == 503


def test_body_over_the_limit_is_413(make_client):
    client = make_client(max_body_bytes=2048)
    r = client.post("/documents", json={"documents": [{"id": "a", "text": "x" * 5000}]})
    assert r.status_code == 413
    assert "larger than 2048 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit must hold while streaming too
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_ids_are_404(client):
    for method in (client.get, client.delete):
        r = method("/documents/nope")
        assert r.status_code == 404 and "nope" in r.json()["error"]["message"]


def test_writes_need_the_key_when_one_is_set(make_client):
    client = make_client(api_key="s3cret-key")
    doc = {"documents": [{"id": "a", "text": "hello"}]}
    assert client.post("/documents", json=doc).status_code == 401
    wrong = client.post("/documents", json=doc, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
    assert wrong.headers["www-authenticate"] == "Bearer"
    ok = client.post("/documents", json=doc, headers={"Authorization": "Bearer s3cret-key"})
    assert ok.status_code == 200
    assert client.delete("/documents/a").status_code == 401
    assert client.post("/snapshot").status_code == 401
    assert client.post("/snapshot", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert client.delete("/documents/a", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    # Reads stay open unless read_auth is on.
    assert client.post("/search", json={"query": "hello"}).status_code == 200
    assert client.get("/stats").status_code == 200


def test_reads_need_the_key_with_read_auth(make_client):
    client = make_client(api_key="k", read_auth=True)
    assert client.post("/search", json={"query": "hello"}).status_code == 401
    assert client.get("/stats").status_code == 401
    assert client.get("/documents/a").status_code == 401
    assert (
        client.post("/search", json={"query": "hello"}, headers={"X-API-Key": "k"}).status_code
        == 200
    )
    assert client.get("/health").status_code == 200  # liveness stays open


def test_without_a_key_only_loopback_is_bound(caplog):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    logger = logging.getLogger("binsearch.server")
    logger.addHandler(caplog.handler)  # the server's logger does not propagate to the root
    try:
        assert choose_host("0.0.0.0", Settings()) == "127.0.0.1"
    finally:
        logger.removeHandler(caplog.handler)
    assert "loopback only" in caplog.text
    assert choose_host("0.0.0.0", Settings(api_key="k")) == "0.0.0.0"
    assert choose_host("0.0.0.0", Settings(allow_remote=True)) == "0.0.0.0"
    assert choose_host("127.0.0.1", Settings()) == "127.0.0.1"


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BINSEARCH_COLLECTION_DIR", str(tmp_path))
    monkeypatch.setenv("BINSEARCH_API_KEY", "from-env")
    monkeypatch.setenv("BINSEARCH_READ_AUTH", "true")
    settings = Settings()
    assert settings.collection_dir == tmp_path and settings.read_auth
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "from-env"


def test_the_old_name_of_the_collection_directory_variable_still_works(monkeypatch, tmp_path):
    monkeypatch.delenv("BINSEARCH_COLLECTION_DIR", raising=False)
    monkeypatch.setenv("BINSEARCH_INDEX_DIR", str(tmp_path / "old"))
    assert Settings().collection_dir == tmp_path / "old"
    monkeypatch.setenv("BINSEARCH_COLLECTION_DIR", str(tmp_path / "new"))
    assert Settings().collection_dir == tmp_path / "new"
    assert Settings(collection_dir=tmp_path / "kw").collection_dir == tmp_path / "kw"
