"""Through the real encoder (all-MiniLM-L6-v2): text queries and text documents."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from server_fakes import wait_ready

from binsearch import Collection
from binsearch.collection.corpus import read_corpus
from binsearch.encoder.model import Encoder
from server.app import create_app
from server.settings import Settings

N_DOCS = 60
QUERY = "boundary layer on a flat plate"


@pytest.fixture(scope="module")
def model_client(tmp_path_factory, bundled):
    docs = read_corpus(bundled, empty="keep")[:N_DOCS]
    embeddings = np.load(bundled / "embeddings" / "all-MiniLM-L6-v2" / "corpus.npy")[:N_DOCS]
    path = tmp_path_factory.mktemp("model") / "index"
    encoder = Encoder()
    with Collection.create(path, "residual", 2, encoder=encoder) as collection:
        documents = [{"title": d.title, "text": d.text} for d in docs]
        collection.add([d.id for d in docs], embeddings, documents=documents)
        reference = collection.search([QUERY], 5)[0]  # before the server writes anything
    with TestClient(create_app(Settings(collection_dir=path))) as client:  # the index's own model
        wait_ready(client, timeout=120)
        yield client, (reference, encoder)


def test_text_query_ranks_like_the_python_api(model_client):
    client, (reference, encoder) = model_client
    got = client.post("/search", json={"query": QUERY, "k": 5}).json()["results"]
    assert [h["id"] for h in got] == reference.ids
    assert np.allclose([h["score"] for h in got], reference.scores, atol=1e-5)
    vector = encoder.encode([QUERY])[0]
    by_vector = client.post("/search", json={"vector": vector.tolist(), "k": 5}).json()["results"]
    assert by_vector == got  # the server encodes text exactly as the model does
    assert client.get("/ready").json()["model_loaded"] is True
    assert client.get("/stats").json()["model"] == "all-MiniLM-L6-v2"


def test_a_document_added_as_text_is_found_by_its_words(model_client):
    client, _ = model_client
    doc = {
        "id": "new-1",
        "title": "Icing of helicopter rotor blades",
        "text": "Ice accretion on rotor blades in cold clouds reduces lift.",
    }
    assert client.post("/documents", json={"documents": [doc]}).status_code == 200
    top = client.post("/search", json={"query": "ice on helicopter rotors", "k": 1}).json()
    assert top["results"][0]["id"] == "new-1" and top["timings"]["encode_ms"] > 0


def test_stats_names_the_precision_after_a_bulk_write(model_client, monkeypatch):
    """Up to 8 texts run on ONNX Runtime; a larger write runs the torch path, whose
    precision /stats then names (forced to bf16 here: no measuring in the test)."""
    client, _ = model_client
    store_encoder = client.app.state.store.encoder
    monkeypatch.setattr(store_encoder, "precision", "bf16")
    monkeypatch.setattr(store_encoder, "_fast", None)
    docs = [
        {"id": f"bulk-{i}", "title": f"Wing panel flutter case {i}", "text": "flutter of panels"}
        for i in range(12)
    ]
    assert client.post("/documents", json={"documents": docs}).status_code == 200
    assert client.get("/stats").json()["encoder_precision"] == "bf16"
