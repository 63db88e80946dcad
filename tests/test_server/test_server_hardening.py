"""Issue 15, items 8, 9, 10, 12 and 13: what the service refuses, and how it fails.

A key that is blank, or read-auth without a key, stops the server at start;
input that could be stored but never read back, or that overflows float32, or
that holds lone surrogates, is a 422 at the door; a 500 keeps the connection
and is logged as one JSON line; the OpenAPI schema says what the server
enforces.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError
from server_fakes import FAKE_DIM, WordHashEncoder, wait_ready

import server.run
import server.store
from binsearch.cli.main import main
from server.app import create_app
from server.models import DocumentIn, SearchRequest
from server.settings import Settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DOC = {"documents": [{"id": "a", "text": "hello world"}]}


def post_raw(client: TestClient, path: str, raw: str):
    return client.post(path, content=raw.encode(), headers={"content-type": "application/json"})


# ------------------------------------------------------------- item 8: keys


@pytest.mark.parametrize("key", ["", " ", "\t \n"])
def test_a_blank_api_key_is_a_configuration_error(key):
    with pytest.raises(ValidationError, match="BINSEARCH_API_KEY is blank"):
        Settings(api_key=key)


def test_read_auth_without_a_key_is_a_configuration_error():
    with pytest.raises(ValidationError, match="BINSEARCH_READ_AUTH"):
        Settings(read_auth=True)
    assert Settings(read_auth=True, api_key="k").read_auth


@pytest.fixture
def uvicorn_calls(monkeypatch, tmp_path):
    """Make ``serve`` record what it would run instead of starting uvicorn."""
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    # Not in this test process: serve() would make warnings and excepthooks log JSON.
    monkeypatch.setattr(server.run, "_log_uncaught_as_json", lambda: None, raising=False)
    # serve() writes BINSEARCH_* variables: register each with monkeypatch (set, then
    # delete) so that whatever serve() leaves is undone afterwards.
    for name in ("COLLECTION_DIR", "API_KEY", "READ_AUTH", "ALLOW_REMOTE"):
        monkeypatch.setenv(f"BINSEARCH_{name}", "")
        monkeypatch.delenv(f"BINSEARCH_{name}")
    return calls


@pytest.mark.parametrize(
    ("env", "flags", "words"),
    [
        ({"BINSEARCH_API_KEY": ""}, ["--host", "0.0.0.0"], "BINSEARCH_API_KEY is blank"),
        ({"BINSEARCH_API_KEY": "   "}, ["--host", "0.0.0.0", "--allow-remote"], "is blank"),
        ({"BINSEARCH_API_KEY": ""}, [], "BINSEARCH_API_KEY is blank"),
        ({"BINSEARCH_READ_AUTH": "true"}, [], "BINSEARCH_READ_AUTH=true needs BINSEARCH_API_KEY"),
    ],
)
def test_serve_refuses_to_start_with_one_line(
    env, flags, words, uvicorn_calls, monkeypatch, tmp_path, capsys
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["serve", str(tmp_path / "index"), *flags])
    err = capsys.readouterr().err.strip()
    assert uvicorn_calls == [], "the server started"
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and words in err, err


def test_a_remote_host_needs_a_real_key_or_allow_remote(uvicorn_calls, monkeypatch, tmp_path):
    index = str(tmp_path / "index")
    assert main(["serve", index, "--host", "0.0.0.0"]) == 0
    assert main(["serve", index, "--host", "0.0.0.0", "--allow-remote"]) == 0
    monkeypatch.delenv("BINSEARCH_ALLOW_REMOTE")
    monkeypatch.setenv("BINSEARCH_API_KEY", "s3cret")
    assert main(["serve", index, "--host", "0.0.0.0"]) == 0
    assert [c["host"] for c in uvicorn_calls] == ["127.0.0.1", "0.0.0.0", "0.0.0.0"]


def test_an_empty_key_header_is_never_accepted(tmp_path, encoder):
    # Even a blank key that slipped past the settings' check must not open the door.
    for key in ("", "s3cret"):
        settings = Settings.model_construct(collection_dir=tmp_path / key, api_key=SecretStr(key))
        with TestClient(create_app(settings, encoder=encoder)) as client:
            wait_ready(client)
            for headers in ({}, {"X-API-Key": ""}, {"Authorization": "Bearer "}):
                assert client.post("/documents", json=DOC, headers=headers).status_code == 401
                assert client.post("/snapshot", headers=headers).status_code == 401
                assert client.delete("/documents/a", headers=headers).status_code == 401


# ------------------------------------------------------ item 9: metadata bounds


@pytest.mark.parametrize("opener", ["{", "["])
def test_metadata_at_the_depth_limit_is_stored_and_read_back(client, opener):
    from server.models import MAX_METADATA_DEPTH

    # The metadata object is level 1; inside it, MAX - 1 more containers.
    inner = ('{"a": ' if opener == "{" else "[") * (MAX_METADATA_DEPTH - 1)
    inner += "1" + ("}" if opener == "{" else "]") * (MAX_METADATA_DEPTH - 1)
    meta = '{"m": ' + inner + "}"
    r = post_raw(
        client, "/documents", f'{{"documents": [{{"id": "d", "text": "x", "metadata": {meta}}}]}}'
    )
    assert r.status_code == 200, r.text
    got = client.get("/documents/d")
    assert got.status_code == 200 and got.json()["metadata"] == json.loads(meta)


@pytest.mark.parametrize("depth", [33, 300, 600, 900, 100_000])
def test_metadata_nested_too_deep_is_422(client, depth):
    meta = '{"a": ' * depth + "1" + "}" * depth
    r = post_raw(
        client, "/documents", f'{{"documents": [{{"id": "d", "text": "x", "metadata": {meta}}}]}}'
    )
    assert r.status_code == 422, r.text[:300]
    assert "nested" in r.json()["error"]["message"]
    assert client.get("/documents/d").status_code == 404


def test_metadata_over_the_size_limit_is_422(client):
    from server.models import MAX_METADATA_BYTES

    ok = {
        "documents": [{"id": "a", "text": "x", "metadata": {"s": "y" * (MAX_METADATA_BYTES // 2)}}]
    }
    assert client.post("/documents", json=ok).status_code == 200
    big = {"documents": [{"id": "b", "text": "x", "metadata": {"s": "y" * MAX_METADATA_BYTES}}]}
    r = client.post("/documents", json=big)
    assert r.status_code == 422 and "bytes" in r.json()["error"]["message"], r.text[:300]


# ------------------------------------------- item 10: float32 range, surrogates


OVERFLOWING = [[1e300] + [0.1] * (FAKE_DIM - 1), [3e38] * FAKE_DIM, [-3.4e38] * FAKE_DIM]


@pytest.mark.parametrize("vector", OVERFLOWING, ids=["1e300", "3e38", "-3.4e38"])
def test_vectors_that_overflow_float32_are_422(client, vector):
    bodies = [
        ("/documents", {"documents": [{"id": "a", "vector": vector}]}),
        ("/search", {"vector": vector}),
        ("/search/batch", {"queries": [{"query": "x"}, {"vector": vector}]}),
    ]
    for path, body in bodies:
        r = client.post(path, json=body)
        assert r.status_code == 422, (path, r.text[:300])
        assert "float32" in r.json()["error"]["message"], r.text[:300]


def test_tiny_vectors_rank_like_their_direction(client):
    rng = np.random.default_rng(0)
    docs = [{"id": f"d{i}", "vector": rng.standard_normal(FAKE_DIM).tolist()} for i in range(20)]
    assert client.post("/documents", json={"documents": docs}).status_code == 200
    query = rng.standard_normal(FAKE_DIM)
    plain = client.post("/search", json={"vector": query.tolist(), "k": 5}).json()["results"]
    tiny = client.post("/search", json={"vector": (query * 1e-30).tolist(), "k": 5})
    assert tiny.status_code == 200
    assert [h["id"] for h in tiny.json()["results"]] == [h["id"] for h in plain]
    np.testing.assert_allclose(
        [h["score"] for h in tiny.json()["results"]], [h["score"] for h in plain], rtol=1e-5
    )
    # A tiny document vector is a direction too, not "all zeros".
    r = client.post(
        "/documents", json={"documents": [{"id": "t", "vector": (query * 1e-30).tolist()}]}
    )
    assert r.status_code == 200, r.text
    top = client.post("/search", json={"vector": query.tolist(), "k": 1}).json()["results"][0]
    assert top["id"] == "t" and top["score"] > 0.9


def test_an_all_zero_query_vector_is_422(client):
    assert client.post("/documents", json=DOC).status_code == 200
    for body in ({"vector": [0.0] * FAKE_DIM}, {"vector": [1e-50] * FAKE_DIM}):
        r = client.post("/search", json=body)
        assert r.status_code == 422 and "cosine" in r.json()["error"]["message"], r.text
    r = client.post("/search/batch", json={"queries": [{"vector": [-0.0] * FAKE_DIM}]})
    assert r.status_code == 422 and "cosine" in r.json()["error"]["message"]


SURROGATES = [
    ("/documents", r'{"documents": [{"id": "a", "text": "x", "metadata": {"k": "\ud800"}}]}'),
    ("/documents", r'{"documents": [{"id": "a", "text": "x", "metadata": {"\udc00": 1}}]}'),
    ("/documents", r'{"documents": [{"id": "a", "text": "x", "metadata": {"k": ["\udfff"]}}]}'),
    ("/documents", r'{"documents": [{"id": "a", "text": "x \ud800"}]}'),
    ("/documents", r'{"documents": [{"id": "a", "title": "\ud800", "text": "x"}]}'),
    ("/documents", r'{"documents": [{"id": "\ud800", "text": "x"}]}'),
    ("/search", r'{"query": "x \ud800"}'),
    ("/search", r'{"query": "x", "filter": ["\ud800"]}'),
]


@pytest.mark.parametrize(("path", "raw"), SURROGATES)
def test_lone_surrogates_are_422(client, path, raw):
    r = post_raw(client, path, raw)
    assert r.status_code == 422, r.text[:300]
    assert client.get("/documents/a").status_code == 404


# --------------------------------------------- item 12: 500s, keep-alive, logs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_500_keeps_the_connection_and_every_log_line_is_json(tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in [n for n in env if n.startswith("BINSEARCH_")]:
        del env[name]
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "serve_with_fakes.py"), str(tmp_path / "index"), str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        deadline = time.monotonic() + 60
        while True:
            try:
                conn.request("GET", "/ready")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    break
            except OSError:
                conn.close()
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.1)
        for _ in range(5):
            sock = conn.sock
            conn.request("GET", "/boom")
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 500 and body["error"]["message"].count("\n") == 0
            assert "close" not in (response.getheader("connection") or "")
            # The next request on the same connection works.
            conn.request("GET", "/health")
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
            assert conn.sock is sock, "the connection was reopened"
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    lines = [line for line in (out + err).splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    assert all(isinstance(r, dict) and "level" in r and "ts" in r for r in records)
    failures = [r for r in records if "a bug in a route" in r.get("exception", "")]
    assert len(failures) == 5 and "RuntimeError" in failures[0]["exception"]
    assert any(r.get("event") == "request" and r.get("status") == 500 for r in records)
    assert any("Uvicorn running" in r.get("message", "") for r in records)
    assert any("a library's warning" in r.get("message", "") for r in records)


# ---------------------------------------------------------- item 13: schema


def _validator(client: TestClient, name: str) -> jsonschema.Draft202012Validator:
    components = client.get("/openapi.json").json()["components"]
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": components}
    )


def _server_accepts(model, body: dict) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


def test_the_schema_says_exactly_one_of_query_and_vector(client):
    schema = _validator(client, "SearchRequest")
    for body, valid in [
        ({"query": "x"}, True),
        ({"vector": [0.5]}, True),
        ({}, False),
        ({"k": 3}, False),
        ({"query": "x", "vector": [0.5]}, False),
        ({"query": "   "}, False),
        ({"query": "\u3000\x1c"}, False),
    ]:
        assert schema.is_valid(body) == valid == _server_accepts(SearchRequest, body), body


def test_the_schema_says_a_document_needs_title_text_or_vector(client):
    schema = _validator(client, "DocumentIn")
    for body, valid in [
        ({"id": "a", "title": "x"}, True),
        ({"id": "a", "text": "x"}, True),
        ({"id": "a", "title": " ", "text": "x"}, True),
        ({"id": "a", "vector": [0.5]}, True),
        ({"id": "a"}, False),
        ({"id": "a", "title": " ", "text": "\n"}, False),
        ({"id": "..", "text": "x"}, False),
        ({"id": ".", "text": "x"}, False),
        ({"id": "...", "text": "x"}, True),
        ({"id": ".a", "text": "x"}, True),
    ]:
        assert schema.is_valid(body) == valid == _server_accepts(DocumentIn, body), body


def test_the_schema_whitespace_is_pythons():
    from server.models import WHITESPACE

    assert WHITESPACE == "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())


# The app's own schema, read without starting it (building the app touches no disk).
_SCHEMA = create_app(Settings(collection_dir=Path("unused")), encoder=WordHashEncoder()).openapi()
WHITESPACE_HEAVY = st.text(
    alphabet=st.sampled_from(" \t\n\x0b\x0c\r\x1c\x1f\x85\xa0\u2000\u3000\ufeffab./\x00"),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(title=WHITESPACE_HEAVY, text=WHITESPACE_HEAVY, doc_id=WHITESPACE_HEAVY)
def test_schema_and_server_agree_on_blank_text_and_ids(title, text, doc_id):
    components = _SCHEMA["components"]
    doc = {"id": doc_id, "title": title, "text": text}
    schema = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/DocumentIn", "components": components}
    )
    assert schema.is_valid(doc) == _server_accepts(DocumentIn, doc)
    schema = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/SearchRequest", "components": components}
    )
    for query in ({"query": text}, {"query": "x", "filter": [doc_id]}):
        assert schema.is_valid(query) == _server_accepts(SearchRequest, query), query


def test_options_on_a_document_lists_get_and_delete(client):
    r = client.options("/documents/doc-42")
    assert r.status_code == 204, r.text
    assert set(re.split(r",\s*", r.headers["allow"])) == {"GET", "DELETE", "OPTIONS"}
    r = client.put("/documents/doc-42", json=DOC)
    assert r.status_code == 405 and {"GET", "DELETE"} <= set(re.split(r",\s*", r.headers["allow"]))
    r = client.options("/documents")
    assert r.status_code == 204 and "POST" in r.headers["allow"]


@pytest.mark.parametrize("doc_id", [".", ".."])
def test_ids_a_normalising_client_cannot_reach_are_refused(client, doc_id):
    r = client.post("/documents", json={"documents": [{"id": doc_id, "text": "x"}]})
    assert r.status_code == 422 and "documents.0.id" in r.json()["error"]["message"], r.text
    for fine in ("...", ".a", "a.", "a..b"):
        ok = client.post("/documents", json={"documents": [{"id": fine, "text": "x"}]})
        assert ok.status_code == 200, ok.text
        assert client.get(f"/documents/{fine}").json()["id"] == fine


# ------------------------------------------------- 503s: no absolute paths


def test_503_messages_do_not_show_absolute_paths(tmp_path, monkeypatch, encoder):
    where = str(tmp_path / "secret-place" / "index")
    message = f"cannot open {where}: [Errno 13] Permission denied: '{where}/CURRENT.json'"

    def not_ready(self):
        raise server.store.NotReady(message)

    monkeypatch.setattr(server.store.Store, "state", property(not_ready))
    monkeypatch.setattr(server.store.Store, "ready", property(lambda self: False))
    # No lifespan: the store never loads; its error is what a failed load leaves.
    client = TestClient(create_app(Settings(collection_dir=tmp_path / "idx"), encoder=encoder))
    client.app.state.store.load_error = message
    for r in (
        client.get("/ready"),
        client.post("/search", json={"vector": [0.1] * FAKE_DIM}),
        client.get("/documents/a"),
        client.get("/stats"),
    ):
        assert r.status_code == 503, r.text
        assert str(tmp_path) not in r.text and "secret-place" not in r.text, r.text
        assert "Permission denied" in r.text
