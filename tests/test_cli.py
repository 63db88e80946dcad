"""The command line: help, reports, and one-line errors for every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from binsearch.cli import main
from binsearch.corpus import read_corpus
from binsearch.encoder import Encoder
from binsearch.pipeline import build_index
from index import FORMAT_VERSION

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
    """An index of the first 200 bundled documents, from precomputed embeddings (no encoder)."""
    docs = read_corpus(bundled, empty="keep")[:200]
    emb = np.load(bundled / MINILM / "corpus.npy")[:200]
    out = tmp_path_factory.mktemp("index")
    build_index(docs, out, Encoder(), "residual", 2, embeddings=emb, progress=False)
    return out


def test_eval_writes_the_report(capsys, tmp_path, bundled):
    out = tmp_path / "report"
    code, stdout, _ = run(
        capsys,
        "eval",
        str(bundled),
        "--embeddings",
        str(bundled / MINILM),
        "--bits",
        "1,2",
        "--out",
        str(out),
    )
    assert code == 0
    assert "| float | 32 |" in stdout
    rows = json.loads((out / "results.json").read_text())
    assert [(r["codec"], r["bits"]) for r in rows] == [
        ("float", 32),
        ("sign", 1),
        ("residual", 1),
        ("residual", 2),
    ]
    for row in rows:
        assert {
            "codec",
            "bits",
            "bits_per_vector",
            "float_recall@10",
            "ndcg@10",
            "recall@100",
        } <= set(row)
    assert (out / "report.md").read_text().startswith("# cranfield")
    assert (out / "quality.png").read_bytes()[:4] == b"\x89PNG"


def test_index_directory_is_self_describing(small_index):
    manifest = json.loads((small_index / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["count"] == 200
    assert manifest["meta"]["model"] == "all-MiniLM-L6-v2"
    assert manifest["meta"]["codec"] == {
        "codec": "residual",
        "dim": 384,
        "planes": 2,
        "refit": False,
    }
    lines = (small_index / "documents.jsonl").read_text().splitlines()
    assert len(lines) == 200 and json.loads(lines[0])["id"] == "1"


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
        (["search", str(tmp_path), "query"], "is not an index directory"),
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
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["meta"]["model"] = "some-other-model"
    (other / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, "search", str(other), "wing")
    assert_one_line_error(code, err, "some-other-model")

    code, _, err = run(capsys, "search", str(other), "wing", "--model", "all-MiniLM-L6-v2")
    assert_one_line_error(code, err, "was built with model 'some-other-model'")

    manifest["format_version"] = 99
    (other / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, "search", str(other), "wing")
    assert_one_line_error(code, err, "format version 99")


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
