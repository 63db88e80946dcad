"""``binsearch index --model none`` (vectors of any width) and ``search --where / --mode``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from binsearch import Collection
from binsearch.cli.main import main

WORDS = ["wing", "flutter", "heat", "shock", "plate"]


@pytest.fixture(scope="module")
def vector_only(tmp_path_factory):
    """A 64-d collection of 40 documents with metadata, from a .jsonl and its own vectors."""
    work = tmp_path_factory.mktemp("vo")
    rows = [
        {
            "_id": f"d{i}",
            "title": WORDS[i % 5],
            "text": f"{WORDS[(i + 2) % 5]} tests",
            "metadata": {"year": 1950 + i, "lab": "nasa" if i % 3 == 0 else "rae"},
        }
        for i in range(40)
    ]
    (work / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    emb = work / "emb"
    emb.mkdir()
    x = np.random.default_rng(1).standard_normal((40, 64)).astype(np.float32)
    np.save(emb / "corpus.npy", x)
    (emb / "ids.json").write_text(json.dumps({"corpus_ids": [r["_id"] for r in rows]}))
    out = work / "c"
    code = main(
        [
            "index",
            str(work / "corpus.jsonl"),
            "--out",
            str(out),
            "--embeddings",
            str(emb),
            "--model",
            "none",
        ]
    )
    assert code == 0
    return out, x, rows


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_vector_only_collection_of_any_width(vector_only):
    out, x, rows = vector_only
    with Collection.open(out) as c:
        assert (c.dim, c.model_name, len(c)) == (64, None, 40)
        assert c.get("d4")["metadata"] == rows[4]["metadata"]
        hits = c.search(embeddings=x[7], k=3, where={"lab": "rae"})[0]
        assert "d7" in hits.ids and all(c.get(i)["metadata"]["lab"] == "rae" for i in hits.ids)
        with pytest.raises(ValueError, match="no model: pass embeddings"):
            c.search(["wing"], k=3)


def test_search_where_and_keyword_mode(capsys, vector_only):
    out, _, rows = vector_only
    code, stdout, _ = run(
        capsys,
        "search",
        str(out),
        "heat",
        "--mode",
        "keyword",
        "--json",
        "-k",
        "40",
        "--where",
        '{"year": {"$gte": 1970}, "lab": "nasa"}',
    )
    assert code == 0
    got = {h["id"] for h in json.loads(stdout)["results"]}
    want = {
        r["_id"]
        for r in rows
        if "heat" in f"{r['title']} {r['text']}"
        and r["metadata"]["year"] >= 1970
        and r["metadata"]["lab"] == "nasa"
    }
    assert got == want and want


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--where", "{year: 1}"], "--where is not JSON"),
        (["--where", '{"year": {"$near": 1}}'], "unknown operator '$near'"),
        (["--mode", "semantic"], "no model"),
    ],
)
def test_bad_where_or_mode_is_one_line(capsys, vector_only, argv, fragment):
    out, _, _ = vector_only
    code, _, err = run(capsys, "search", str(out), "heat", "--mode", "keyword", *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_model_none_needs_embeddings(capsys, tmp_path, bundled):
    code, _, err = run(
        capsys, "index", str(bundled), "--out", str(tmp_path / "x"), "--model", "none"
    )
    assert code == 2 and "--model none needs --embeddings" in err


def test_index_prepares_serving_once_per_machine(capsys, tmp_path, bundled, monkeypatch):
    """`binsearch index` leaves the encoder's ONNX export in the cache: `serve` finds it."""
    monkeypatch.setenv("BINSEARCH_CACHE", str(tmp_path / "cache"))
    code, _, err = run(
        capsys,
        "index",
        str(bundled),
        "--skip-empty",
        "--out",
        str(tmp_path / "c"),
        "--embeddings",
        str(bundled / "embeddings" / "all-MiniLM-L6-v2"),
    )
    assert code == 0 and "prepared the encoder's ONNX export" in err
    exports = list((tmp_path / "cache" / "encoders").glob("all-MiniLM-L6-v2-*/model.onnx"))
    assert len(exports) == 1
    code, _, err = run(
        capsys,
        "index",
        str(bundled),
        "--skip-empty",
        "--out",
        str(tmp_path / "d"),
        "--embeddings",
        str(bundled / "embeddings" / "all-MiniLM-L6-v2"),
        "--no-prepare",
    )
    assert code == 0 and "prepared" not in err


def test_eval_mode_hybrid_puts_the_three_side_by_side(capsys, bundled, tmp_path):
    code, out, _ = run(
        capsys,
        "eval",
        str(bundled),
        "--embeddings",
        str(bundled / "embeddings" / "all-MiniLM-L6-v2"),
        "--mode",
        "hybrid",
        "--codec",
        "residual",
        "--bits",
        "2",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 0
    rows = {
        r["ranking"]: r["ndcg@10"] for r in json.loads((tmp_path / "r" / "modes.json").read_text())
    }
    assert set(rows) == {
        "keyword (BM25, FTS5)",
        "semantic (float)",
        "semantic (residual 2-bit codes)",
        "hybrid (float + BM25, RRF)",
        "hybrid (residual 2-bit codes + BM25, RRF)",
    }
    # Cranfield: BM25 and MiniLM err on different queries; fusing them is better than either.
    assert rows["hybrid (float + BM25, RRF)"] > max(
        rows["keyword (BM25, FTS5)"], rows["semantic (float)"]
    )
    assert "| hybrid (float + BM25, RRF) |" in out
