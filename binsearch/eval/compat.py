"""Compatible queries across model versions: the four combinations of old/new queries and codes.

An old model wrote a collection's varwidth codes; a new model should search
them without re-indexing. :func:`evaluate_compat` fits varwidth codes for both
models at each width, learns the query maps both ways
(:func:`binsearch.codes.varwidth_compat.compatible_query_map`: ridge bridge,
then listwise on corpus rows and on queries outside the judged set) and scores
old/old, new/new, new-on-old and old-on-new through ``CodedIndex.topk``, the
path a collection serves, on the judged test queries only (no map trains on
them). Behind ``binsearch eval --mode compat``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from binsearch.codes.varwidth import VarWidthCodec
from binsearch.codes.varwidth_compat import CompatibleQueries, compatible_query_map
from binsearch.collection.coded_index import CodedIndex
from binsearch.collection.corpus import CorpusError
from binsearch.eval.metrics import ndcg_at_k, recall_at_k
from binsearch.eval.quality import EvalData, load_embeddings

COMBINATIONS = ("old/old", "new/new", "new-on-old", "old-on-new")


def unjudged_queries(
    emb_old: str | os.PathLike[str], emb_new: str | os.PathLike[str], judged: set[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Both models' embeddings of the queries in ``queries.npy`` outside ``judged``."""
    ids = json.loads((Path(emb_old) / "ids.json").read_text())["query_ids"]
    ids_new = json.loads((Path(emb_new) / "ids.json").read_text())["query_ids"]
    if list(map(str, ids)) != list(map(str, ids_new)):
        raise CorpusError("the two models' queries.npy hold different queries")
    rows = [i for i, q in enumerate(map(str, ids)) if q not in judged]
    old = np.load(Path(emb_old) / "queries.npy")[rows].astype(np.float32)
    new = np.load(Path(emb_new) / "queries.npy")[rows].astype(np.float32)
    return old, new


def _score(data: EvalData, ranked: np.ndarray, tops: dict[str, np.ndarray], k: int) -> dict:
    runs = [[data.doc_ids[j] for j in r] for r in ranked]
    pairs = list(zip(runs, data.query_ids, strict=True))
    out = {
        f"ndcg@{k}": float(np.mean([ndcg_at_k(r, data.qrels[q], k) for r, q in pairs])),
        "recall@100": float(np.mean([recall_at_k(r, data.qrels[q], 100) for r, q in pairs])),
    }
    for name, top in tops.items():
        hits = [len(set(a[:k]) & set(b)) / k for a, b in zip(ranked, top, strict=True)]
        out[f"float_recall@{k}_vs_{name}"] = float(np.mean(hits))
    return out


def evaluate_compat(
    dataset: str | os.PathLike[str],
    emb_old: str | os.PathLike[str],
    emb_new: str | os.PathLike[str],
    bits: list[int],
    k: int = 10,
    steps: int = 300,
    seed: int = 0,
) -> list[dict]:
    """Rows of the four combinations per bits/dim (see the module); float recall against both models.

    ``bits`` count per dimension of the old model: both models' codes store ``bits x d_old``.
    """
    old = load_embeddings(dataset, emb_old)
    new = load_embeddings(dataset, emb_new)
    if new.doc_ids != old.doc_ids or new.query_ids != old.query_ids:
        raise CorpusError("the two models' embeddings hold different documents or queries")
    q_old, q_new = unjudged_queries(emb_old, emb_new, set(old.query_ids))
    depth = max(k, 100)
    tops = {
        "old": np.argsort(-(old.queries @ old.corpus.T), axis=1)[:, :k],
        "new": np.argsort(-(new.queries @ new.corpus.T), axis=1)[:, :k],
    }
    rows = []
    for b in bits:
        budget = b * old.corpus.shape[1]  # both models' codes store the same bits
        codecs = {
            "old": VarWidthCodec.fit(old.corpus, budget),
            "new": VarWidthCodec.fit(new.corpus, budget),
        }
        data = {"old": old, "new": new}
        paired = {"old": q_old, "new": q_new}
        for combo in COMBINATIONS:
            query, docs = ("new", "old") if combo == "new-on-old" else ("old", "new")
            if "/" in combo:
                query = docs = combo.split("/")[0]
            codec = codecs[docs]
            index = CodedIndex.from_embeddings(data[docs].corpus, codec)
            if query != docs:
                qmap = compatible_query_map(
                    data[query].corpus,
                    data[docs].corpus,
                    codec,
                    steps=steps,
                    seed=seed,
                    pairs=(paired[query], paired[docs]) if len(q_old) else None,
                )
                index = CodedIndex(CompatibleQueries(codec, qmap), index.index)
            _, ranked = index.topk(data[query].queries, depth)
            row = {"combination": combo, "bits": b, "bits_per_vector": index.bits_per_vector}
            rows.append({**row, **_score(old, ranked, tops, k)})
    return rows


def format_compat(rows: list[dict], k: int = 10) -> str:
    """A markdown table of :func:`evaluate_compat`'s rows."""
    lines = [
        f"| bits/dim | combination | bits/vector | nDCG@{k} | Recall@100 "
        f"| float recall@{k} vs new model | vs old model |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['bits']} | {r['combination']} | {r['bits_per_vector']:,} | "
            f"{r[f'ndcg@{k}']:.4f} | {r['recall@100']:.3f} | "
            f"{r[f'float_recall@{k}_vs_new']:.3f} | {r[f'float_recall@{k}_vs_old']:.3f} |"
        )
    return "\n".join(lines)
