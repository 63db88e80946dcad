"""The whole path with the real encoder: text in, an index on disk, ranked results out."""

from __future__ import annotations

import json

from binsearch.cli.main import main
from binsearch.collection.corpus import read_corpus


def test_a_title_retrieves_its_own_document_first(tmp_path, capsys, bundled):
    docs = read_corpus(bundled, empty="skip")[:40]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs)
    )
    out = tmp_path / "idx"
    assert main(["index", str(corpus), "--out", str(out), "--bits", "2"]) == 0
    capsys.readouterr()
    for doc in docs[::8]:
        assert main(["search", str(out), doc.title, "-k", "3", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["results"][0]["id"] == doc.id, doc.title
        assert len(result["results"]) == 3
        scores = [r["score"] for r in result["results"]]
        assert scores == sorted(scores, reverse=True)
