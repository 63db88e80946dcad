"""Retrieval quality against bits per vector: the ``binsearch eval`` job.

The metrics themselves are defined in :mod:`binsearch.eval.metrics`; this module
loads a dataset, runs codecs (ours and the faiss RaBitQ peer) over it, and
writes tables and plots.

For a BEIR dataset and float embeddings of its corpus and queries, score exact
float search and every requested (codec, bits) over the judged test queries:

* ``float_recall@k``: overlap with the float model's own exact top-k;
* ``ndcg@k`` (with a bootstrap 95% interval over queries) and ``recall@100``
  against the relevance judgments;
* ``bits_per_vector``: every stored bit per document (codes, scales, norms).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.codes.codecs import make_codec
from binsearch.collection.coded_index import CodedIndex
from binsearch.collection.corpus import CorpusError, read_corpus, read_qrels, read_queries
from binsearch.eval.metrics import bootstrap_ci, ndcg_at_k, overlap_at_k, per_query, recall_at_k
from index import topk

RECALL_DEPTH = 100


@dataclass
class EvalData:
    """Judged test queries and the corpus, as float embeddings and id lists."""

    corpus: np.ndarray  # float32 (n, d), unit rows
    queries: np.ndarray  # float32 (nq, d), judged queries only
    doc_ids: list[str]
    query_ids: list[str]
    qrels: dict[str, dict[str, int]]


def load_embeddings(
    dataset: str | os.PathLike[str], embeddings: str | os.PathLike[str]
) -> EvalData:
    """Read precomputed ``corpus.npy``, ``queries.npy`` and ``ids.json`` for a dataset."""
    emb = Path(embeddings)
    for name in ("corpus.npy", "queries.npy", "ids.json"):
        if not (emb / name).is_file():
            raise CorpusError(f"{emb}: missing {name} (expected corpus.npy, queries.npy, ids.json)")
    ids = json.loads((emb / "ids.json").read_text())
    corpus = np.load(emb / "corpus.npy").astype(np.float32)
    queries = np.load(emb / "queries.npy").astype(np.float32)
    doc_ids, query_ids = list(map(str, ids["corpus_ids"])), list(map(str, ids["query_ids"]))
    if corpus.shape[0] != len(doc_ids) or queries.shape[0] != len(query_ids):
        raise CorpusError(f"{emb}: ids.json does not match the row counts of the .npy files")
    return _judged(corpus, queries, doc_ids, query_ids, read_qrels(dataset))


def encode_dataset(dataset: str | os.PathLike[str], encoder, batch_size: int = 64) -> EvalData:
    """Encode a BEIR dataset's corpus and judged queries with ``encoder``."""
    docs = read_corpus(dataset, empty="keep")
    queries = read_queries(dataset)
    qrels = read_qrels(dataset)
    judged = [q for q in queries if q in qrels]
    corpus = encoder.encode([d.content for d in docs], batch_size, progress=True)
    q_emb = encoder.encode([queries[q] for q in judged], batch_size, progress=True)
    return _judged(corpus, q_emb, [d.id for d in docs], judged, qrels)


def _judged(corpus, queries, doc_ids, query_ids, qrels) -> EvalData:
    keep = [i for i, q in enumerate(query_ids) if q in qrels]
    if not keep:
        raise CorpusError("no query has relevance judgments")
    if corpus.shape[1] != queries.shape[1]:
        raise CorpusError(f"corpus is {corpus.shape[1]}-d but queries are {queries.shape[1]}-d")
    return EvalData(corpus, queries[keep], doc_ids, [query_ids[i] for i in keep], qrels)


def float_topk(corpus: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k (rows are unit length), ties by row number."""
    ids = np.arange(corpus.shape[0], dtype=np.int64)
    scores = queries @ corpus.T
    out = [topk(row, ids, k) for row in scores]
    return np.stack([s for s, _ in out]), np.stack([i for _, i in out])


def score_run(data: EvalData, ranked_rows: np.ndarray, float_rows: np.ndarray, k: int) -> dict:
    """Metrics of one ranking ``(nq, >= RECALL_DEPTH)`` of corpus row numbers."""
    doc_ids = np.asarray(data.doc_ids)
    runs = {q: doc_ids[row].tolist() for q, row in zip(data.query_ids, ranked_rows, strict=True)}
    ndcg = per_query(runs, data.qrels, ndcg_at_k, k)
    lo, hi = bootstrap_ci(ndcg)
    return {
        f"float_recall@{k}": overlap_at_k(ranked_rows, float_rows, k),
        f"ndcg@{k}": float(ndcg.mean()),
        f"ndcg@{k}_ci95": [lo, hi],
        f"recall@{RECALL_DEPTH}": float(
            per_query(runs, data.qrels, recall_at_k, RECALL_DEPTH).mean()
        ),
    }


def evaluate_codecs(
    data: EvalData, codecs: Sequence[str], bits: Sequence[int], k: int = 10, progress: bool = True
) -> list[dict[str, Any]]:
    """One row for exact float search, then one per (codec, bits)."""
    depth = max(k, RECALL_DEPTH)
    _, float_rows = float_topk(data.corpus, data.queries, depth)
    dim = data.corpus.shape[1]
    rows = [
        {
            "codec": "float",
            "bits": 32,
            "bits_per_vector": 32 * dim,
            **score_run(data, float_rows, float_rows, k),
        }
    ]
    plan = [(c, b) for c in codecs for b in bits if not (c == "sign" and b != 1)]
    for name, b in tqdm(plan, desc="codecs", disable=not progress):
        if name == "rabitq":
            ranked, bpv = rabitq_search(data.corpus, data.queries, b, depth)
        else:
            # Learned codecs train on the corpus's own embeddings, as `binsearch index` does.
            options: dict[str, Any] = {}
            if name == "rbe":
                options = {"train_on": data.corpus, "progress": progress}
            elif name in ("grid", "varwidth"):
                options = {"train_on": data.corpus, "progress": progress}
            codec = make_codec(name, dim, b, **options)
            coded = CodedIndex.from_embeddings(data.corpus, codec)
            _, ranked = coded.topk(data.queries, depth)
            bpv = coded.bits_per_vector
        rows.append(
            {
                "codec": name,
                "bits": b,
                "bits_per_vector": bpv,
                **score_run(data, ranked, float_rows, k),
            }
        )
    return rows


def rabitq_search(
    corpus: np.ndarray, queries: np.ndarray, bits: int, k: int
) -> tuple[np.ndarray, int]:
    """The faiss RaBitQ peer: ``(ranked rows int64 (nq, k), stored bits per vector)``.

    ``faiss.IndexRaBitQ(d, METRIC_INNER_PRODUCT, bits)`` (extended RaBitQ for
    ``bits > 1``) trained and filled with ``corpus``, searched with float
    ``queries``, no rescoring. Bits per vector are faiss's ``code_size * 8``:
    the codes plus RaBitQ's per-vector factors.
    """
    import faiss

    corpus = np.ascontiguousarray(corpus, dtype=np.float32)
    index = faiss.IndexRaBitQ(corpus.shape[1], faiss.METRIC_INNER_PRODUCT, int(bits))
    index.train(corpus)
    index.add(corpus)
    _, ranked = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return ranked.astype(np.int64), int(index.code_size * 8)


def format_table(rows: Sequence[dict[str, Any]], k: int = 10) -> str:
    """A markdown table of eval rows."""
    head = f"| codec | bits | bits/vector | float recall@{k} | nDCG@{k} (95% CI) | Recall@{RECALL_DEPTH} |"
    lines = [head, "|---|---:|---:|---:|---|---:|"]
    for r in rows:
        lo, hi = r[f"ndcg@{k}_ci95"]
        lines.append(
            f"| {r['codec']} | {r['bits']} | {r['bits_per_vector']:,} | {r[f'float_recall@{k}']:.3f} "
            f"| {r[f'ndcg@{k}']:.4f} ({lo:.3f}–{hi:.3f}) | {r[f'recall@{RECALL_DEPTH}']:.3f} |"
        )
    return "\n".join(lines)


def write_report(
    rows: Sequence[dict[str, Any]], out: str | os.PathLike[str], title: str, k: int = 10
) -> None:
    """``results.json``, ``report.md`` and ``quality.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(list(rows), indent=2) + "\n")
    (out / "report.md").write_text(
        f"# {title}\n\n{format_table(rows, k)}\n\n![quality vs bits](quality.png)\n"
    )
    plot_quality(rows, out / "quality.png", title, k)


def plot_quality(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str, k: int = 10
) -> None:
    """nDCG@k and float recall@k against bits per vector, one line per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric in zip(axes, (f"ndcg@{k}", f"float_recall@{k}"), strict=True):
        for codec in dict.fromkeys(r["codec"] for r in rows):
            pts = sorted((r["bits_per_vector"], r[metric]) for r in rows if r["codec"] == codec)
            if codec == "float":
                ax.axhline(
                    pts[0][1], color="black", linestyle="--", label=f"float ({pts[0][0]:,} bits)"
                )
            else:
                ax.plot(*zip(*pts, strict=True), marker="o", label=codec)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per vector (all stored bits)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
