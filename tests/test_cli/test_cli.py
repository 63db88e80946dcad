"""The command line: help, reports, and one-line errors for every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from binsearch import Collection
from binsearch.cli.main import main
from binsearch.collection.collection import COLLECTION_FORMAT_VERSION

MINILM = "embeddings/all-MiniLM-L6-v2"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, fragment):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [[], ["index"], ["search"], ["eval"], ["demo"]])
def test_help_explains_every_command(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: binsearch" in out and len(out.splitlines()) > 5


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, bundled):
    """A collection of the first 200 bundled documents, from precomputed embeddings (no encoder)."""
    work = tmp_path_factory.mktemp("index")
    lines = (bundled / "corpus.jsonl").read_text().splitlines()[:200]
    (work / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    out = work / "collection"
    code = main(
        [
            "index",
            str(work / "corpus.jsonl"),
            "--out",
            str(out),
            "--embeddings",
            str(bundled / MINILM),
        ]
    )
    assert code == 0
    return out


def test_index_with_embeddings_matches_rows_by_id(capsys, tmp_path, bundled, small_index):
    # The collection's codes are the codec's codes of each document's own row.
    emb = np.load(bundled / MINILM / "corpus.npy")
    ids = json.loads((bundled / MINILM / "ids.json").read_text())["corpus_ids"]
    with Collection.open(small_index, readonly=True) as c:
        for doc_id in ("1", "57", "200"):
            hit = c.search(embeddings=emb[ids.index(doc_id)][None, :], k=1)[0]
            assert hit.ids == [doc_id]
    (tmp_path / "foreign.jsonl").write_text('{"_id": "not-in-ids", "text": "x"}\n')
    code, _, err = run(
        capsys,
        "index",
        str(tmp_path / "foreign.jsonl"),
        "--out",
        str(tmp_path / "o"),
        "--embeddings",
        str(bundled / MINILM),
    )
    assert_one_line_error(code, err, "has no row in")


def test_eval_writes_the_report(capsys, tmp_path, bundled):
    out = tmp_path / "report"
    code, stdout, _ = run(
        capsys,
        "eval",
        str(bundled),
        "--embeddings",
        str(bundled / MINILM),
        "--codec",
        "sign,residual,grid,rabitq",
        "--bits",
        "1,2",
        "--out",
        str(out),
    )
    assert code == 0
    assert "| float | 32 |" in stdout
    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    assert [(r["codec"], r["bits"]) for r in rows] == [
        ("float", 32),
        ("sign", 1),
        ("residual", 1),
        ("residual", 2),
        ("grid", 1),
        ("grid", 2),
        ("rabitq", 1),
        ("rabitq", 2),
    ]
    for row in rows:
        assert {
            "codec",
            "bits",
            "bits_per_vector",
            "float_recall@10",
            "float_recall@100",
            "search_ms_per_query",
            "ndcg@10",
            "recall@100",
        } <= set(row)
    assert rows[0]["ndcg@10"] == pytest.approx(0.3679, abs=5e-5)  # the judged queries, as before
    assert report["recommendation"]["target"] == 0.95
    assert (out / "report.md").read_text().startswith("# cranfield")
    assert (out / "quality.png").read_bytes()[:4] == b"\x89PNG"


def test_collection_directory_is_self_describing(small_index):
    manifest = json.loads((small_index / "collection.json").read_text())
    assert (
        manifest["format_version"] == COLLECTION_FORMAT_VERSION
        and manifest["model"] == "all-MiniLM-L6-v2"
    )
    assert manifest["codec"] == {"codec": "residual", "dim": 384, "planes": 2, "refit": False}
    index_manifest = json.loads((small_index / "index" / "manifest.json").read_text())
    assert index_manifest["count"] == 200
    with Collection.open(small_index, readonly=True) as c:
        assert len(c) == 200 and c.get("1")["title"].startswith("experimental investigation")


def test_bad_inputs_give_one_line_errors(capsys, tmp_path, bundled, small_index):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "dup.jsonl").write_text('{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n')
    cases = [
        (["index", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")], "no such file"),
        (["index", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o")], "corpus is empty"),
        (
            ["index", str(tmp_path / "dup.jsonl"), "--out", str(tmp_path / "o")],
            "duplicate document id",
        ),
        (
            ["index", str(bundled), "--out", str(tmp_path / "o"), "--model", str(tmp_path)],
            "model directory",
        ),
        (
            ["index", str(bundled), "--out", str(tmp_path / "o"), "--codec", "sign", "--bits", "2"],
            "1 bit per dimension",
        ),
        (["search", str(tmp_path), "query"], "is not a binsearch collection"),
        (["search", str(small_index), "   "], "query is empty"),
        (["eval", str(tmp_path)], "without corpus.jsonl"),
        (["eval", str(bundled), "--embeddings", str(tmp_path)], "missing corpus.npy"),
    ]
    for argv, fragment in cases:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, fragment)


def test_wrong_format_version_and_wrong_model(capsys, tmp_path, small_index):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(small_index, other)
    manifest = json.loads((other / "collection.json").read_text())
    manifest["model"] = "some-other-model"
    (other / "collection.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, "search", str(other), "wing")
    assert_one_line_error(code, err, "some-other-model")

    code, _, err = run(capsys, "search", str(other), "wing", "--model", "all-MiniLM-L6-v2")
    assert_one_line_error(code, err, "was built with model 'some-other-model'")

    manifest["format_version"] = 99
    (other / "collection.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, "search", str(other), "wing")
    assert_one_line_error(code, err, "collection format 99")


def test_an_old_collection_directory_is_refused_with_the_command_that_converts_it(capsys, tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "documents.jsonl").write_text("")
    code, _, err = run(capsys, "search", str(tmp_path), "wing")
    assert_one_line_error(code, err, "binsearch upgrade")


def test_k_must_be_positive(capsys, small_index):
    with pytest.raises(SystemExit) as exit_:
        main(["search", str(small_index), "wing", "-k", "0"])
    assert exit_.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_query_of_the_wrong_dimension(capsys, tmp_path, bundled):
    emb = tmp_path / "emb"
    emb.mkdir()
    for name in ("corpus.npy", "ids.json"):
        (emb / name).write_bytes((bundled / MINILM / name).read_bytes())
    np.save(emb / "queries.npy", np.ones((225, 8), dtype=np.float32))
    code, _, err = run(capsys, "eval", str(bundled), "--embeddings", str(emb))
    assert_one_line_error(code, err, "384-d but queries are 8-d")
