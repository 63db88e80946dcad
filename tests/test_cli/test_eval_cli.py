"""``binsearch eval`` on corpora without judgments: held-out queries, query files, the
recommendation (built by its own printed command), and one-line errors for wrong files."""

from __future__ import annotations

import csv
import json
import shlex

import numpy as np
import pytest

from binsearch import Collection
from binsearch.cli.main import main

MINILM = "embeddings/all-MiniLM-L6-v2"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, fragment):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def docs(bundled):
    rows = [json.loads(line) for line in (bundled / "corpus.jsonl").read_text().splitlines()]
    return [r for r in rows if r["text"].strip()][:60]


def write_corpus(path, docs):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "title", "text"])
            w.writerows([d["_id"], d["title"], d["text"]] for d in docs)
    else:
        path.write_text("".join(d["text"].replace("\n", " ") + "\n" for d in docs))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_a_bare_corpus_is_evaluated_on_held_out_documents(capsys, tmp_path, docs, suffix):
    corpus = tmp_path / f"docs{suffix}"
    write_corpus(corpus, docs)
    out = tmp_path / "report"
    code, stdout, err = run(
        capsys, "eval", corpus, "--codec", "sign,residual", "--bits", "1,2", "--target", "0.3",
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert "encoding 60 documents with all-MiniLM-L6-v2: about" in err
    assert "| float | 32 |" in stdout and "| residual | 2 |" in stdout
    report = json.loads((out / "results.json").read_text())
    assert report["setup"]["documents"].startswith("60 (54 searched)")  # 10 % held out
    rec = report["recommendation"]
    assert rec["codec"] is not None and f"binsearch index {corpus}" in rec["command"]
    assert "Recommended:" in stdout and (out / "quality.png").is_file()


def test_the_printed_command_builds_a_code_that_measures_as_estimated(capsys, tmp_path, bundled):
    emb = bundled / MINILM
    code, _, err = run(
        capsys, "eval", bundled, "--embeddings", emb, "--holdout", "200", "--holdout-query",
        "document", "--codec",
        "sign,residual", "--bits", "1,2,3", "--target", "0.75", "--out", tmp_path / "r",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "results.json").read_text())
    rec = report["recommendation"]
    assert rec["codec"] == "residual" and rec["command"].startswith(f"binsearch index {bundled}")
    argv = [a if a != "INDEX" else str(tmp_path / "index") for a in shlex.split(rec["command"])]
    code, _, err = run(capsys, *argv[1:])
    assert code == 0, err
    # The held-out rows of the eval (seed 0), searched in the built index without themselves.
    from binsearch.eval.holdout import holdout_rows

    x = np.load(emb / "corpus.npy")
    ids = json.loads((emb / "ids.json").read_text())["corpus_ids"]
    held = holdout_rows(len(x), 200, seed=0)
    recalls = []
    with Collection.open(tmp_path / "index", readonly=True) as c:
        results = c.search(embeddings=x[held], k=11)
        for row, result in zip(held, results, strict=True):
            got = [i for i in result.ids if i != ids[row]][:10]
            sims = x @ x[row]
            sims[row] = -np.inf
            truth = {ids[j] for j in np.argsort(-sims)[:10]}
            recalls.append(len(truth & set(got)) / 10)
    assert np.mean(recalls) >= rec["target"] - 0.01
    assert np.mean(recalls) == pytest.approx(rec["recall"], abs=0.03)


def test_queries_without_and_with_judgments(capsys, tmp_path, bundled):
    emb = bundled / MINILM
    code, stdout, err = run(
        capsys, "eval", "--embeddings", emb / "corpus.npy", "--queries", emb / "queries.npy",
        "--codec", "sign", "--out", tmp_path / "a",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "a" / "results.json").read_text())
    assert report["setup"]["queries"] == f"225 queries from {emb / 'queries.npy'}"
    assert report["setup"]["documents"].startswith("1,400 (1,400 searched)")
    assert "ndcg@10" not in report["rows"][0]
    assert "binsearch index CORPUS" in stdout or "No code" in stdout
    code, _, err = run(
        capsys, "eval", bundled, "--embeddings", emb, "--queries", bundled / "queries.jsonl",
        "--qrels", bundled / "qrels" / "test.tsv", "--codec", "sign", "--out", tmp_path / "b",
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    assert rows[0]["ndcg@10"] == pytest.approx(0.3679, abs=2e-3)  # texts encoded here


def test_wrong_files_get_one_line_saying_what_is_expected(capsys, tmp_path, bundled):
    emb = bundled / MINILM
    (tmp_path / "picture.png").write_bytes(b"\x89PNG")
    small = tmp_path / "small.txt"
    small.write_text("one document\nanother one\n")
    cases = [
        ([bundled / "qrels" / "test.tsv"], "holds relevance judgments"),
        ([emb / "corpus.npy"], "pass it as --embeddings"),
        ([emb], "pass it as --embeddings"),
        ([tmp_path / "picture.png"], "is not a corpus"),
        ([], "give a corpus"),
        ([small], "cannot hold out"),
        (
            ["--embeddings", emb, "--queries", bundled / "queries.jsonl", "--qrels",
             bundled / "corpus.jsonl"],
            "not judgments",
        ),
        (["--embeddings", emb, "--queries", bundled / "qrels" / "test.tsv"], "pass it as --qrels"),
        ([bundled / "corpus.jsonl", "--qrels", bundled / "qrels" / "test.tsv"], "goes with --queries"),
        (["--embeddings", tmp_path / "picture.png"], "--embeddings takes a .npy"),
        (["--embeddings", emb, "--holdout", "5", "--queries", emb / "queries.npy"], "exclude each other"),
    ]  # fmt: skip
    for argv, fragment in cases:
        code, _, err = run(capsys, "eval", *argv)
        one_line_error(code, err, fragment)
    with pytest.raises(SystemExit):
        main(["eval", str(small), "--target", "1.5"])
    assert "recall target" in capsys.readouterr().err
