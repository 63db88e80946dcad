"""Corpus, query and qrels readers on small files, malformed ones included."""

from __future__ import annotations

import json

import pytest

from binsearch.collection.corpus import CorpusError, read_corpus, read_qrels, read_queries


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_with_both_id_spellings(tmp_path):
    rows = [{"_id": "a", "title": "T", "text": "x"}, {"id": 7, "text": "y"}, {"text": "z"}]
    f = write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = read_corpus(f)
    assert [d.id for d in docs] == ["a", "7", "3"]
    assert docs[0].content == "T x" and docs[1].content == "y"


def test_beir_folder(tmp_path):
    write(tmp_path / "corpus.jsonl", json.dumps({"_id": "1", "title": "", "text": "hello"}) + "\n")
    assert read_corpus(tmp_path)[0].text == "hello"


def test_bundled_corpus_has_two_empty_abstracts(bundled):
    with pytest.raises(CorpusError, match="has no text"):
        read_corpus(bundled)
    assert len(read_corpus(bundled, empty="keep")) == 1400
    assert len(read_corpus(bundled, empty="skip")) == 1398


@pytest.mark.parametrize("suffix,sep", [(".csv", ","), (".tsv", "\t")])
def test_tables(tmp_path, suffix, sep):
    f = write(
        tmp_path / f"c{suffix}", f"ID{sep}Title{sep}Text\nd1{sep}A{sep}first\n{sep}{sep}second\n"
    )
    docs = read_corpus(f)
    assert [(d.id, d.title, d.text) for d in docs] == [("d1", "A", "first"), ("2", "", "second")]


def test_txt_one_document_per_line(tmp_path):
    docs = read_corpus(write(tmp_path / "c.txt", "alpha\n\n  beta  \n"))
    assert [(d.id, d.text) for d in docs] == [("1", "alpha"), ("3", "beta")]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("c.jsonl", '{"_id": "1", "text": "ok"}\n{not json\n', r"c.jsonl:2: invalid JSON"),
        ("c.jsonl", '["a list"]\n', "expected a JSON object"),
        (
            "c.jsonl",
            '{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n',
            "duplicate document id '1'",
        ),
        (
            "c.jsonl",
            '{"_id": "1", "title": "", "text": "  "}\n',
            r"c.jsonl:1: document '1' has no text",
        ),
        ("c.jsonl", '{"_id": "1", "text": 5}\n', "must be strings"),
        ("c.jsonl", "\n\n", "the corpus is empty"),
        ("c.csv", "id,body\n1,x\n", "no 'text' column"),
        ("c.txt", "", "the corpus is empty"),
        ("c.pdf", "x", "unsupported corpus type"),
    ],
)
def test_malformed_corpora_are_refused_with_location(tmp_path, name, content, message):
    with pytest.raises(CorpusError, match=message):
        read_corpus(write(tmp_path / name, content))


def test_missing_and_non_utf8(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(tmp_path / "nope.jsonl")
    with pytest.raises(CorpusError, match="without corpus.jsonl"):
        read_corpus(tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_corpus(tmp_path / "bad.txt")


def test_empty_documents_can_be_skipped(tmp_path):
    f = write(tmp_path / "c.jsonl", '{"_id": "1", "text": ""}\n{"_id": "2", "text": "x"}\n')
    assert [d.id for d in read_corpus(f, empty="skip")] == ["2"]


def test_queries_and_qrels(tmp_path, bundled):
    queries = read_queries(bundled)
    qrels = read_qrels(bundled)
    assert len(queries) == 225 and len(qrels) == 225
    assert sum(len(v) for v in qrels.values()) == 1612
    write(tmp_path / "q.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t0\nq1\td2\t2\nq2\td1\t1\n")
    assert read_qrels(tmp_path / "q.tsv") == {"q1": {"d2": 2}, "q2": {"d1": 1}}
    write(tmp_path / "bad.tsv", "q1\td1\n")
    with pytest.raises(CorpusError, match="bad.tsv:1"):
        read_qrels(tmp_path / "bad.tsv")
