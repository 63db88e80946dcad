"""Held-out documents queried by their titles (or opening words): the texts, and eval's wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from binsearch.collection.corpus import CorpusError, Document
from binsearch.eval.inputs import resolve
from binsearch.eval.query_text import OPENING_WORDS, held_out_texts, query_text

MINILM = "embeddings/all-MiniLM-L6-v2"


def test_query_text_is_the_opening_words_or_the_title():
    words = [f"w{i}" for i in range(30)]
    doc = Document("a", "A title", " ".join(words), None)
    assert query_text(doc) == " ".join(words[:OPENING_WORDS])
    assert query_text(doc, "title") == "A title"
    untitled = Document("b", "", " ".join(words), None)
    assert query_text(untitled, "title") == " ".join(words[:OPENING_WORDS])
    assert query_text(Document("c", "", "short one", None)) == "short one"
    assert query_text(Document("d", "only a title", "", None)) == "only a title"


def test_held_out_texts_follow_the_rows_of_non_empty_documents(tmp_path):
    docs = [
        {"_id": "0", "title": "zero", "text": ""},
        {"_id": "1", "title": "", "text": ""},  # empty: skipped, as eval encodes
        {"_id": "2", "title": "", "text": "two words"},
        {"_id": "3", "title": "three", "text": "t3"},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    # without ids, rows number the non-empty documents: 0 -> "0", 1 -> "2", 2 -> "3"
    assert held_out_texts(path, np.array([2, 1]), 3, kind="title") == ["three", "two words"]
    assert held_out_texts(path, np.array([2, 0]), 3) == ["t3", "zero"]
    # ... or all of them when that is the count of rows; the empty one has no text
    assert held_out_texts(path, np.array([3, 1]), 4, kind="title") == ["three", None]
    assert held_out_texts(path, np.array([1]), 5) is None  # no count matches
    # with ids, rows are matched by id
    assert held_out_texts(path, np.array([1, 0]), 3, ["3", "2", "0"]) == ["two words", "t3"]
    assert held_out_texts(path, np.array([1]), 3, ["0", "x", "3"]) is None  # an unknown id


def _resolve(tmp_path, corpus, embeddings, how):
    return resolve(
        corpus, embeddings, None, None, 40, 0, "all-MiniLM-L6-v2", 64, tmp_path,
        progress=False, holdout_query=how,
    )  # fmt: skip


@pytest.mark.parametrize("how", ["auto", "title"])
def test_eval_queries_by_opening_words_or_title_when_the_text_is_given(tmp_path, bundled, how):
    from binsearch.encoder.model import Encoder

    emb = bundled / MINILM
    inputs = _resolve(tmp_path, str(bundled), str(emb), how)
    said = "queried by their titles" if how == "title" else "queried by their first 12 words"
    assert said in inputs.setup["queries"]
    work = inputs.work
    ids = json.loads((emb / "ids.json").read_text())["corpus_ids"]
    docs = {json.loads(line)["_id"]: json.loads(line) for line in open(bundled / "corpus.jsonl")}
    picked = [docs[ids[r]] for r in work.excluded]
    assert all(d["text"].strip() for d in picked)  # (the seed-0 sample has no empty document)
    texts = [
        d["title"] if how == "title" else " ".join(d["text"].split()[:OPENING_WORDS])
        for d in picked
    ]
    want = Encoder("all-MiniLM-L6-v2").encode(texts)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.allclose(work.queries, want, atol=1e-5)
    # the held-out documents stay out of the searched corpus either way
    whole = _resolve(tmp_path, str(bundled), str(emb), "document").work
    assert np.array_equal(whole.excluded, work.excluded)
    x = np.load(emb / "corpus.npy")[whole.excluded]
    assert np.allclose(whole.queries, x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)


def test_without_text_the_documents_query_with_their_embeddings(tmp_path, bundled):
    emb = str(bundled / MINILM / "corpus.npy")
    assert "queried by their embeddings" in _resolve(tmp_path, None, emb, "auto").setup["queries"]
    for how in ("opening", "title"):
        with pytest.raises(CorpusError, match="needs the corpus's text"):
            _resolve(tmp_path, None, emb, how)
