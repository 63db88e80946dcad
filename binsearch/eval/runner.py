"""Every (codec, bits) of an evaluation, streamed: fit on a sample, code block by block, search.

For each code the searched corpus is read one block at a time
(:func:`binsearch.eval.sources.blocks`) and coded into an index, so only the
codes, the queries and one float block are in memory. Learned codecs fit on a
seeded sample of the searched rows (the grid codec uses at most 20,000 rows
whatever it is given). Each row of the result carries the recall of the float
top-k (mean and a bootstrap interval over queries), bits per vector, the
search time per query at the corpus's size, and, with judgments, nDCG@k and
Recall@100.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.eval.holdout import Workload, float_truth, overlap_per_query
from binsearch.eval.metrics import bootstrap_ci, ndcg_at_k, per_query, recall_at_k
from binsearch.eval.sources import BLOCK, block_count, blocks

RECALL_DEPTH = 100
FIT_ROWS = 50_000  # sample the learned codecs fit on
LONE_QUERIES = 20  # queries timed one at a time
PEERS = ("rabitq",)  # measured beside ours, not codecs `binsearch index` builds


@dataclass
class Run:
    """One code's ranking of every query and what it cost."""

    codec: str
    bits: int
    bits_per_vector: int
    ranked: np.ndarray  # int64 (nq, depth) source row numbers
    fit_s: float = 0.0
    build_s: float = 0.0
    search_ms: float = 0.0  # per query, all queries in one batch call
    lone_ms: float = 0.0  # median of single-query calls
    rescore: bool = False  # candidates re-ranked by the float query


def plan(codecs: Sequence[str], bits: Sequence[int]) -> list[tuple[str, int]]:
    """(codec, bits) pairs to run: ``sign`` only at 1 bit, each pair once, in order."""
    pairs = [(c, 1 if c == "sign" else b) for c in codecs for b in bits]
    return list(dict.fromkeys(pairs))


def fit_sample(work: Workload, rows: int = FIT_ROWS, seed: int = 0) -> np.ndarray:
    """Up to ``rows`` seeded searched rows in float, for the learned codecs to fit on."""
    searched = np.setdiff1d(np.arange(work.source.n, dtype=np.int64), work.excluded)
    if len(searched) > rows:
        searched = np.sort(np.random.default_rng(seed + 1).choice(searched, rows, replace=False))
    return work.source.take(searched)


def make_eval_codec(name: str, dim: int, bits: int, sample: np.ndarray, progress: bool) -> Any:
    """The codec ``binsearch index --codec name --bits bits`` would build, fitted on ``sample``."""
    from binsearch.codes.codecs import make_codec

    if name in ("grid", "rbe"):
        return make_codec(name, dim, bits, train_on=sample, progress=progress)
    return make_codec(name, dim, bits)


def _timed_search(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """Rankings of every query, ms per query in one batch call, median ms of lone calls.

    One batch call and one lone call run first, untimed: numba kernels compile
    (or load from cache) on first use.
    """
    search(queries[:2])
    search(queries[:1])
    started = time.perf_counter()
    ranked = search(queries)
    batch = (time.perf_counter() - started) / len(queries) * 1e3
    lone = []
    for q in queries[:LONE_QUERIES]:
        started = time.perf_counter()
        search(q[None])
        lone.append((time.perf_counter() - started) * 1e3)
    return ranked, batch, float(np.median(lone))


def run_index_codec(
    work: Workload,
    name: str,
    bits: int,
    depth: int,
    sample: np.ndarray,
    progress: bool,
    rescore: bool = False,
) -> list[Run]:
    """Fit, code the searched rows block by block into a :class:`CodedIndex`, search the queries.

    One run by code scores, and with ``rescore`` a second of the same index whose
    candidates (``RESCORE_FACTOR`` per result) are re-ranked by the float query
    against the stored code values, as ``Collection.search(..., rescore=True)`` does.
    """
    from binsearch.collection.coded_index import CodedIndex

    started = time.perf_counter()
    codec = make_eval_codec(name, work.source.dim, bits, sample, progress)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    coded = CodedIndex.new(codec)
    for rows, x in tqdm(
        blocks(work.source, work.excluded),
        total=block_count(work.source),
        desc=f"{name} {bits}-bit",
        unit="block",
        disable=not progress,
    ):
        coded.add(x, rows)
    build_s = time.perf_counter() - started
    bpv = coded.bits_per_vector
    ranked, batch, lone = _timed_search(lambda q: coded.topk(q, depth)[1], work.queries)
    runs = [Run(name, bits, bpv, ranked, fit_s, build_s, batch, lone)]
    if rescore:

        def reranked(q: np.ndarray) -> np.ndarray:
            out = np.full((len(q), depth), -1, np.int64)
            for i, (_, keys) in enumerate(coded.search(q, depth, rescore=True)):
                out[i, : len(keys)] = keys
            return out

        ranked, batch, lone = _timed_search(reranked, work.queries)
        runs.append(Run(name, bits, bpv, ranked, fit_s, build_s, batch, lone, rescore=True))
    return runs


def run_rabitq(work: Workload, bits: int, depth: int, sample: np.ndarray, progress: bool) -> Run:
    """The faiss peer: ``IndexRaBitQ`` (extended for ``bits > 1``), float queries, no rescoring.

    Bits per vector are faiss's ``code_size * 8`` (codes plus per-vector factors).
    """
    import faiss

    started = time.perf_counter()
    index = faiss.IndexRaBitQ(work.source.dim, faiss.METRIC_INNER_PRODUCT, int(bits))
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    keys = []
    for rows, x in tqdm(
        blocks(work.source, work.excluded),
        total=block_count(work.source),
        desc=f"rabitq {bits}-bit",
        unit="block",
        disable=not progress,
    ):
        index.add(np.ascontiguousarray(x))
        keys.append(rows)
    key_of = np.concatenate(keys)
    build_s = time.perf_counter() - started

    def search(q: np.ndarray) -> np.ndarray:
        _, pos = index.search(np.ascontiguousarray(q, dtype=np.float32), depth)
        return np.where(pos >= 0, key_of[np.maximum(pos, 0)], -1)

    ranked, batch, lone = _timed_search(search, work.queries)
    bpv = int(index.code_size * 8)
    return Run("rabitq", bits, bpv, ranked, fit_s, build_s, batch, lone)


def score(work: Workload, run: Run, truth: np.ndarray, k: int) -> tuple[dict[str, Any], np.ndarray]:
    """The report row of one run, and its per-query recall of the float top-``k``."""
    recall_k = overlap_per_query(run.ranked, truth, k)
    lo, hi = bootstrap_ci(recall_k)
    row: dict[str, Any] = {
        "codec": run.codec,
        "bits": run.bits,
        "bits_per_vector": run.bits_per_vector,
        f"float_recall@{k}": float(recall_k.mean()),
        f"float_recall@{k}_ci95": [lo, hi],
        f"float_recall@{RECALL_DEPTH}": float(
            overlap_per_query(run.ranked, truth, RECALL_DEPTH).mean()
        ),
        "search_ms_per_query": round(run.search_ms, 4),
        "lone_query_ms": round(run.lone_ms, 3),
        "fit_s": round(run.fit_s, 2),
        "build_s": round(run.build_s, 2),
        "rescore": run.rescore,
    }
    if work.qrels is not None and work.doc_ids is not None:
        ids = np.asarray(work.doc_ids)
        runs = {q: ids[r[r >= 0]].tolist() for q, r in zip(work.query_ids, run.ranked, strict=True)}
        ndcg = per_query(runs, work.qrels, ndcg_at_k, k)
        nlo, nhi = bootstrap_ci(ndcg)
        row[f"ndcg@{k}"] = float(ndcg.mean())
        row[f"ndcg@{k}_ci95"] = [nlo, nhi]
        row[f"recall@{RECALL_DEPTH}"] = float(
            per_query(runs, work.qrels, recall_at_k, RECALL_DEPTH).mean()
        )
    return row, recall_k


def evaluate(
    work: Workload,
    codecs: Sequence[str],
    bits: Sequence[int],
    k: int = 10,
    seed: int = 0,
    progress: bool = True,
    rescore: bool = False,
) -> tuple[list[dict[str, Any]], dict[tuple[str, int, bool], np.ndarray]]:
    """Rows (float first, then each code) and per-query recall@k of each code (by :func:`run_key`).

    The float row is the exact scan itself (recall 1 by definition), timed.
    With ``rescore``, every code of ours gets a second row re-ranked by the float query.
    """
    depth = max(k, RECALL_DEPTH)
    started = time.perf_counter()
    _, truth = float_truth(work, depth, BLOCK, progress)
    float_ms = (time.perf_counter() - started) / len(work.queries) * 1e3
    float_run = Run(
        "float", 32, 32 * work.source.dim, truth, search_ms=float_ms, lone_ms=float("nan")
    )
    rows, per_query_recall = [], {}
    row, _ = score(work, float_run, truth, k)
    row["lone_query_ms"] = None
    rows.append(row)
    pairs = plan(codecs, bits)
    sample = fit_sample(work, seed=seed) if any(c != "sign" for c, _ in pairs) else None
    for name, b in pairs:
        if name == "rabitq":
            runs = [run_rabitq(work, b, depth, sample, progress)]
        else:
            runs = run_index_codec(work, name, b, depth, sample, progress, rescore)
        for run in runs:
            row, recall_k = score(work, run, truth, k)
            rows.append(row)
            per_query_recall[run_key(row)] = recall_k
    return rows, per_query_recall


def run_key(row: dict[str, Any]) -> tuple[str, int, bool]:
    """``(codec, bits, rescored)``: a row's key in the per-query recall mapping."""
    return (row["codec"], int(row["bits"]), bool(row.get("rescore", False)))
