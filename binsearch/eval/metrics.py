"""Retrieval metrics, each defined next to its code: pure functions of rankings.

The ``binsearch eval`` job that runs codecs over a dataset and reports these
metrics is :mod:`binsearch.eval.quality`; this module only defines them.

Runs are ranked lists of document ids per query (best first); judgments are
``{query_id: {doc_id: gain}}`` with positive gains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def ndcg_at_k(ranked: Sequence[str], gains: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k with the standard exponential gain.

    ``DCG@k = sum_{i=1..k} (2^rel_i - 1) / log2(i + 1)``, divided by the DCG of
    the ideal ordering of all judged documents.
    """
    dcg = sum((2.0 ** gains.get(d, 0) - 1.0) / np.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum((2.0**g - 1.0) / np.log2(i + 2) for i, g in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], gains: Mapping[str, int], k: int = 100) -> float:
    """Fraction of the relevant documents found in the first ``k``."""
    relevant = {d for d, g in gains.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def overlap_at_k(ranked: np.ndarray, reference: np.ndarray, k: int = 10) -> float:
    """Mean ``|top_k(run) ∩ top_k(reference)| / k`` over queries.

    With the exact float ranking as reference this is "recall of the float
    model's own top-k", the fidelity of a code to the embedding it encodes.
    Both arguments are ``(nq, >= k)`` arrays of ids.
    """
    hits = [
        len(set(a[:k].tolist()) & set(b[:k].tolist()))
        for a, b in zip(ranked, reference, strict=True)
    ]
    return float(np.mean(hits) / k)


def per_query(
    runs: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], metric, k: int
) -> np.ndarray:
    """A metric for each judged query of ``runs``, in ``runs`` order."""
    return np.array([metric(runs[q], qrels[q], k) for q in runs], dtype=np.float64)


def bootstrap_ci(
    values: np.ndarray, level: float = 0.95, samples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-query values."""
    rng = np.random.default_rng(seed)
    n = len(values)
    means = values[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
