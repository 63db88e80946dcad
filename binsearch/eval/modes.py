"""Keyword, semantic and hybrid ranking side by side on a BEIR dataset (``binsearch eval --mode``).

One collection of the corpus's own embeddings is built in a scratch directory
(``model=None``: the embeddings are given), with its keyword (FTS5) index; each
judged query is then ranked by BM25, by the float embeddings (exact cosine), by
the collection's codes, and by the reciprocal-rank fusion of BM25 with each.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from binsearch.codes.codecs import LEARNED_CODECS, make_codec
from binsearch.collection.collection import Collection
from binsearch.collection.corpus import CorpusError, read_corpus, read_queries
from binsearch.collection.fusion import depth, rrf
from binsearch.eval.metrics import ndcg_at_k
from binsearch.eval.quality import EvalData

#: Documents per add while building the scratch collection.
BATCH = 2000


def evaluate_modes(
    dataset: str | os.PathLike[str],
    data: EvalData,
    codec: str = "grid",
    bits: int = 2,
    k: int = 10,
) -> list[dict[str, Any]]:
    """nDCG@k of each ranking: ``[{"ranking", "ndcg@k"}]``, keyword, semantic, hybrid.

    ``codec``/``bits``: the collection's codes (a learned codec is fitted on the corpus).
    """
    dataset = Path(dataset)
    docs = {d.id: d for d in read_corpus(dataset, empty="keep")}
    queries = read_queries(dataset / "queries.jsonl")
    missing = [q for q in data.query_ids if q not in queries]
    if missing:
        raise CorpusError(f"{dataset}: query {missing[0]!r} has no text in queries.jsonl")
    texts = [queries[q] for q in data.query_ids]
    dim = data.corpus.shape[1]
    learned = {"train_on": data.corpus} if codec in LEARNED_CODECS else {}
    the_codec = make_codec(codec, dim, 1 if codec == "sign" else bits, **learned)
    n = depth(k)
    ids = data.doc_ids
    with tempfile.TemporaryDirectory() as tmp:
        c = Collection.create(Path(tmp) / "c", codec=the_codec, model=None, dim=dim, fsync=False)
        try:
            for start in range(0, len(ids), BATCH):
                part = ids[start : start + BATCH]
                c.add(
                    part,
                    embeddings=data.corpus[start : start + BATCH],
                    documents=[{"title": docs[i].title, "text": docs[i].text} for i in part],
                )
            keyword = [r.keys for r in c.search(texts, k=n, mode="keyword")]
            codes = [r.keys for r in c.search(embeddings=data.queries, k=n)]
        finally:
            c.close(snapshot=False)
    # Keys are row numbers (added in corpus order from key 0).
    scores = data.queries @ data.corpus.T
    floats = [np.argsort(-s, kind="stable")[:n] for s in scores]
    rankings = {
        "keyword (BM25, FTS5)": keyword,
        "semantic (float)": floats,
        f"semantic ({codec} {bits}-bit codes)": codes,
        "hybrid (float + BM25, RRF)": [
            rrf([f, w], k)[1] for f, w in zip(floats, keyword, strict=True)
        ],
        f"hybrid ({codec} {bits}-bit codes + BM25, RRF)": [
            rrf([s, w], k)[1] for s, w in zip(codes, keyword, strict=True)
        ],
    }
    rows = []
    for name, ranked in rankings.items():
        per_query = [
            ndcg_at_k([ids[int(j)] for j in r], data.qrels[q], k)
            for r, q in zip(ranked, data.query_ids, strict=True)
        ]
        rows.append({"ranking": name, f"ndcg@{k}": round(float(np.mean(per_query)), 4)})
    return rows


def format_modes(rows: list[dict[str, Any]], k: int = 10) -> str:
    """A markdown table of :func:`evaluate_modes` rows."""
    lines = [f"| ranking | nDCG@{k} |", "|---|---:|"]
    lines += [f"| {r['ranking']} | {r[f'ndcg@{k}']:.4f} |" for r in rows]
    return "\n".join(lines)


__all__ = ["evaluate_modes", "format_modes"]
