"""Bulk encoding in two steps (tokenise, then the network), side by side on worker threads.

The reference is sentence-transformers' own ``encode`` of the same texts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from binsearch.collection.ingest import estimate_documents, index_corpus
from binsearch.encoder import Encoder
from binsearch.encoder.batches import Workers

TEXTS = [
    "a",
    "What is the effect of vitamin D on bone density?",
    "lift of a wing in a propeller slipstream",
    "Binary codes make semantic search cheap, and ÜNICODE ñ 日本語 too.",
    " ".join(["Long documents are truncated at the model's maximum sequence length."] * 40),
    "short",
    "boundary layer transition on a flat plate at supersonic speeds",
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(precision="fp32", backend="torch")


def reference(encoder: Encoder, texts: list[str]) -> np.ndarray:
    out = encoder.model.encode(texts, batch_size=3, normalize_embeddings=True)
    return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_two_steps_give_encodes_embeddings_in_the_texts_order(encoder, batch_size):
    tokens = encoder.tokenize_bulk(TEXTS, batch_size)
    done = []
    got = encoder.encode_tokenized(tokens, on_batch=done.append)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = np.sum(got * reference(encoder, TEXTS), axis=1)
    assert cos.min() > 0.99999, cos
    assert sum(done) == len(TEXTS) and len(done) == -(-len(TEXTS) // batch_size)


def test_workers_give_the_same_embeddings_and_restore_torchs_threads(encoder):
    tokens = encoder.tokenize_bulk(TEXTS, 2)
    alone = encoder.encode_tokenized(tokens)
    threads = torch.get_num_threads()
    with Workers(2) as workers:
        assert torch.get_num_threads() == 1
        done = []
        side_by_side = encoder.encode_tokenized(tokens, on_batch=done.append, workers=workers)
    assert torch.get_num_threads() == threads
    assert sum(done) == len(TEXTS)
    cos = np.sum(alone * side_by_side, axis=1)
    assert cos.min() > 0.99999, cos


def test_bf16_in_two_steps_matches_bf16_encode():
    enc = Encoder(precision="bf16", backend="torch")
    with Workers(2) as workers:
        got = enc.encode_tokenized(enc.tokenize_bulk(TEXTS, 4), workers=workers)
    cos = np.sum(got * enc.encode(TEXTS, 4), axis=1)
    assert cos.min() > 0.9999, cos
    assert enc.precision_used == "bf16"


def test_an_index_built_by_the_pipeline_finds_each_document_by_its_encode_embedding(
    tmp_path, bundled, encoder
):
    lines = (bundled / "corpus.jsonl").read_text().splitlines()[:40]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    rows = [json.loads(line) for line in lines]
    texts = [f"{r.get('title', '')} {r.get('text', '')}".strip() for r in rows]
    ids = [str(r["_id"]) for r in rows]
    with index_corpus(
        tmp_path / "c.jsonl", tmp_path / "out", batch_size=8, progress=False, skip_empty=True
    ) as c:
        assert len(c) == 40
        hits = c.search(embeddings=reference(encoder, texts), k=1)
        own = sum(h.ids == [i] for h, i in zip(hits, ids, strict=True))
        assert own >= 38, own  # 2-bit codes: a near-duplicate may outrank one or two
        assert c.get(ids[7])["text"] == rows[7]["text"]


def test_estimate_documents(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n{"text": "z"}')
    (tmp_path / "b.csv").write_text("id,text\n1,x\n2,y\n")
    (tmp_path / "c.txt").write_text("one\ntwo\n")
    (tmp_path / "empty.txt").write_text("")
    assert estimate_documents(tmp_path / "a.jsonl") == 3  # last line without newline
    assert estimate_documents(tmp_path / "b.csv") == 2
    assert estimate_documents(tmp_path / "c.txt") == 2
    assert estimate_documents(tmp_path / "empty.txt") is None
    assert estimate_documents(tmp_path / "missing.jsonl") is None


def test_onnx_lanes_give_the_same_embeddings_as_one_run():
    pytest.importorskip("onnxruntime")
    from binsearch.encoder.onnx_runtime import OnnxEncoder

    exported = Encoder(backend="onnx").onnx_encoder()
    if exported is None:
        pytest.skip("the ONNX export is not available here")
    one = OnnxEncoder(exported.directory, threads=2)
    lanes = OnnxEncoder(exported.directory, threads=2, lanes=2)
    assert lanes.lanes == 2
    for size in (1, 2, 5, 7):
        a, b = one.encode(TEXTS[:size], 8), lanes.encode(TEXTS[:size], 8)
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert OnnxEncoder(exported.directory, threads=1, lanes=4).lanes == 1  # never over threads
