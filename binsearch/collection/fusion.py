"""Fusion of two ranked lists (semantic and keyword) into one: reciprocal-rank fusion.

``score(d) = Σ_lists 1 / (RRF_K + rank_list(d))`` with ranks from 1 and
``RRF_K = 60`` (Cormack, Clarke and Büttcher, SIGIR 2009); a document absent
from a list adds nothing for it. Each list is cut at the same depth first
(:data:`HYBRID_DEPTH`, or ``k`` if larger). RRF needs no score calibration: a
cosine and a BM25 score live on different scales, their ranks do not.

>>> scores, keys = rrf([np.array([3, 1]), np.array([1, 7])], k=3)
>>> keys.tolist()
[1, 3, 7]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RRF_K = 60
#: Candidates taken from each list before fusing.
HYBRID_DEPTH = 100


def rrf(lists: Sequence[np.ndarray], k: int, rrf_k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` keys of ranked int64 key lists (best first) by reciprocal-rank fusion.

    Returns float32 fused scores and int64 keys, best first, ties by key ascending.
    """
    fused: dict[int, float] = {}
    for keys in lists:
        for rank, key in enumerate(np.asarray(keys, dtype=np.int64).tolist(), start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (rrf_k + rank)
    if not fused:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    keys = np.fromiter(fused.keys(), dtype=np.int64, count=len(fused))
    scores = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
    order = np.lexsort((keys, -scores))[:k]
    return scores[order].astype(np.float32), keys[order]


def depth(k: int) -> int:
    """How many candidates each list gives for a fused top-``k``."""
    return max(int(k), HYBRID_DEPTH)


__all__ = ["HYBRID_DEPTH", "RRF_K", "depth", "rrf"]
