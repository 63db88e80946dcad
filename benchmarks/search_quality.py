"""Keyword, semantic and hybrid ranking on BEIR SciFact and Cranfield, with BM25 peers, in one run.

For each dataset (BEIR layout with precomputed all-MiniLM-L6-v2 embeddings under
``embeddings/all-MiniLM-L6-v2``) it builds one collection of the corpus's own
vectors (``model=None``: no encoder runs) and reports nDCG@10 over the test
queries of:

* keyword: the collection's FTS5 BM25 (``mode="keyword"``); the peers
  ``rank_bm25.BM25Okapi`` and ``bm25s`` (Lucene idf) on the very tokens FTS5
  indexed (read back from its vocabulary), with the same ``k1 = 1.2, b = 0.75``;
* semantic: the float MiniLM embeddings (exact cosine, numpy) and the collection's
  2-bit codes (``grid``, learned on the corpus; and ``residual``);
* hybrid: reciprocal-rank fusion (k = 60, 100 candidates per list) of keyword and
  float semantic, and the collection's own ``mode="hybrid"`` on the codes.

Writes ``results/search/quality.json`` and ``report.md`` (no timings: it needs no lock;
``benchmarks/search_latency.py`` writes the timed figures, ``latency.md``).

    python benchmarks/search_quality.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from binsearch.codes.codecs import make_codec
from binsearch.collection.collection import Collection
from binsearch.collection.corpus import read_corpus, read_qrels, read_queries
from binsearch.collection.fusion import HYBRID_DEPTH, RRF_K, rrf
from binsearch.collection.keyword import K1, TOKENIZER, B, document_tokens
from binsearch.eval.metrics import ndcg_at_k

DEPTH = HYBRID_DEPTH


def load(folder: Path) -> dict[str, Any]:
    emb = folder / "embeddings" / "all-MiniLM-L6-v2"
    meta = json.loads((emb / "ids.json").read_text())
    docs = {d.id: d for d in read_corpus(folder, empty="keep")}
    qrels = read_qrels(folder, "test")
    queries = read_queries(folder / "queries.jsonl")
    qrow = {q: i for i, q in enumerate(meta["query_ids"])}
    qids = [q for q in qrels if q in queries and q in qrow]
    return {
        "ids": [str(i) for i in meta["corpus_ids"]],
        "docs": docs,
        "corpus": np.load(emb / "corpus.npy"),
        "qids": qids,
        "qtexts": [queries[q] for q in qids],
        "qvecs": np.load(emb / "queries.npy")[[qrow[q] for q in qids]],
        "qrels": qrels,
    }


def build(path: Path, data: dict[str, Any], codec: Any) -> Collection:
    c = Collection.create(path, codec=codec, model=None, dim=data["corpus"].shape[1])
    ids = data["ids"]
    documents = [{"title": data["docs"][i].title, "text": data["docs"][i].text} for i in ids]
    for start in range(0, len(ids), 2000):
        stop = start + 2000
        c.add(
            ids[start:stop], embeddings=data["corpus"][start:stop], documents=documents[start:stop]
        )
    return c


def query_tokens(texts: list[str]) -> list[list[str]]:
    """Query texts cut and stemmed by the same FTS5 tokenizer (in a scratch table)."""
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE VIRTUAL TABLE q USING fts5(text, tokenize='{TOKENIZER}')")
    db.executemany("INSERT INTO q(rowid, text) VALUES (?, ?)", enumerate(texts))
    db.execute("CREATE VIRTUAL TABLE v USING fts5vocab(q, instance)")
    out: list[list[tuple[int, str]]] = [[] for _ in texts]
    for term, doc, offset in db.execute("SELECT term, doc, offset FROM v"):
        out[int(doc)].append((int(offset), term))
    return [[t for _, t in sorted(o)] for o in out]


def peers(c: Collection, data: dict[str, Any]) -> dict[str, list[list[str]]]:
    import bm25s
    import rank_bm25

    db = sqlite3.connect(c.path / "documents.db")
    tokens = document_tokens(db)
    db.close()
    keys = sorted(tokens)
    key_id = dict(zip(keys, c.store.rows(keys).values(), strict=True))
    names = [key_id[k]["id"] for k in keys]
    corpus_tokens = [tokens[k] for k in keys]
    qtok = query_tokens(data["qtexts"])
    okapi = rank_bm25.BM25Okapi(corpus_tokens, k1=K1, b=B)
    ranked_okapi = []
    for q in qtok:
        s = okapi.get_scores(q)
        ranked_okapi.append([names[j] for j in np.argsort(-s, kind="stable")[:DEPTH]])
    model = bm25s.BM25(k1=K1, b=B)
    model.index(corpus_tokens, show_progress=False)
    ranked_bm25s = []
    for q in qtok:
        s = model.get_scores(q)
        ranked_bm25s.append([names[j] for j in np.argsort(-s, kind="stable")[:DEPTH]])
    return {"rank_bm25 (same tokens)": ranked_okapi, "bm25s (same tokens)": ranked_bm25s}


def mean_ndcg(ranked: list[list[str]], data: dict[str, Any]) -> float:
    return float(
        np.mean(
            [ndcg_at_k(r, data["qrels"][q], 10) for r, q in zip(ranked, data["qids"], strict=True)]
        )
    )


def run_dataset(name: str, folder: Path, work: Path) -> dict[str, Any]:
    data = load(folder)
    out: dict[str, Any] = {"documents": len(data["ids"]), "queries": len(data["qids"])}
    ids = data["ids"]
    sims = data["qvecs"] @ data["corpus"].T
    float_sem = [[ids[j] for j in np.argsort(-s, kind="stable")[:DEPTH]] for s in sims]
    ndcg: dict[str, float] = {"semantic (float MiniLM)": mean_ndcg(float_sem, data)}
    grid = make_codec("grid", data["corpus"].shape[1], 2, train_on=data["corpus"])
    for label, codec in (("grid 2-bit", grid), ("residual 2-bit", "residual")):
        started = time.perf_counter()
        c = build(work / f"{name}-{label.split()[0]}", data, codec)
        build_s = time.perf_counter() - started
        try:
            kw = [r.ids for r in c.search(data["qtexts"], k=DEPTH, mode="keyword")]
            if label.startswith("grid"):
                ndcg["keyword: FTS5 BM25 (binsearch)"] = mean_ndcg(kw, data)
                for peer, ranked in peers(c, data).items():
                    ndcg[f"keyword: {peer}"] = mean_ndcg(ranked, data)
                # Hybrid on float: the same fusion as mode="hybrid", over the float list.
                key_of = {doc_id: i for i, doc_id in enumerate(ids)}
                fused = []
                for s, k in zip(float_sem, kw, strict=True):
                    _, keys = rrf(
                        [np.array([key_of[i] for i in s]), np.array([key_of[i] for i in k])], 10
                    )
                    fused.append([ids[j] for j in keys])
                ndcg["hybrid (float MiniLM + FTS5, RRF)"] = mean_ndcg(fused, data)
                out["build_seconds"] = round(build_s, 2)
            sem = [r.ids for r in c.search(embeddings=data["qvecs"], k=10)]
            ndcg[f"semantic ({label} codes)"] = mean_ndcg(sem, data)
            hyb = c.search(data["qtexts"], k=10, embeddings=data["qvecs"], mode="hybrid")
            ndcg[f"hybrid ({label} codes + FTS5, RRF)"] = mean_ndcg([r.ids for r in hyb], data)
        finally:
            c.close(snapshot=False)
    out["ndcg@10"] = {k: round(v, 4) for k, v in ndcg.items()}
    best_single = max(ndcg["keyword: FTS5 BM25 (binsearch)"], ndcg["semantic (float MiniLM)"])
    out["hybrid_gain_over_best_single"] = round(
        ndcg["hybrid (float MiniLM + FTS5, RRF)"] - best_single, 4
    )
    out["hybrid_codes_minus_float"] = round(
        ndcg["hybrid (grid 2-bit codes + FTS5, RRF)"] - ndcg["hybrid (float MiniLM + FTS5, RRF)"], 4
    )
    out["fts5_minus_rank_bm25"] = round(
        ndcg["keyword: FTS5 BM25 (binsearch)"] - ndcg["keyword: rank_bm25 (same tokens)"], 4
    )
    return out


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Keyword, semantic and hybrid search: nDCG@10",
        "",
        f"Machine: {results['machine']}; load average {results['load']}.",
        f"BM25: FTS5 `bm25()`, k1 = {K1}, b = {B}, tokenizer `{TOKENIZER}`; hybrid: RRF "
        f"(k = {RRF_K}), {DEPTH} candidates per list. Peers run on the tokens FTS5 indexed.",
        "",
    ]
    names = list(next(iter(results["datasets"].values()))["ndcg@10"])
    sets = list(results["datasets"])
    lines += ["| ranking | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
    for n in names:
        row = [f"{results['datasets'][s]['ndcg@10'][n]:.4f}" for s in sets]
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    lines += ["", "| measure | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
    for m in (
        "hybrid_gain_over_best_single",
        "hybrid_codes_minus_float",
        "fts5_minus_rank_bm25",
        "build_seconds",
        "documents",
        "queries",
    ):
        lines.append(f"| {m} | " + " | ".join(str(results["datasets"][s][m]) for s in sets) + " |")
    lines += [
        "",
        "Timed figures (filtered-search latency, writes with the keyword index): "
        "[latency.md](latency.md); first start of a 1M collection on a new machine: "
        "[first_start.md](first_start.md).",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder holding scifact/ and cranfield/ (BEIR)")
    ap.add_argument("--datasets", default="scifact,cranfield")
    ap.add_argument("--out", default="results/search")
    args = ap.parse_args()
    import platform

    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "command": "python benchmarks/search_quality.py --data ../shared/data "
        f"--datasets {args.datasets}",
        "datasets": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            results["datasets"][name] = run_dataset(name, Path(args.data) / name, Path(tmp))
            print(name, json.dumps(results["datasets"][name], indent=1), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
