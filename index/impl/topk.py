"""Top-k selection with a deterministic tie-break.

Hamming scores tie all the time, so "the" top-k is only defined once ties are
broken: rank by score descending, then by key ascending. The result is
exactly the first ``k`` rows of a full stable sort by ``(-score, key)``, found
without sorting all ``n``.
"""

from __future__ import annotations

import numpy as np


def topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of one score vector.

    Args:
        scores: float ``(n,)``.
        ids: int64 ``(n,)`` keys, unique.
        k: how many to keep; more than ``n`` keeps ``n``.

    Returns:
        ``(scores, ids)`` of length ``min(k, n)``, best first.

    Example:
        >>> topk(np.array([1.0, 3.0, 3.0, 2.0]), np.array([10, 30, 20, 40]), 2)
        (array([3., 3.]), array([20, 30]))
    """
    n = scores.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return scores[:0], ids[:0]
    if k < n:
        # Everything scoring at least the k-th best is a candidate; ties at the
        # boundary are then settled by key in the small sort below.
        kth = np.partition(scores, n - k)[n - k]
        candidates = np.flatnonzero(scores >= kth)
    else:
        candidates = np.arange(n)
    order = np.lexsort((ids[candidates], -scores[candidates]))[:k]
    chosen = candidates[order]
    return scores[chosen], ids[chosen]


def merge_topk(
    scores: list[np.ndarray], ids: list[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (or per-segment) top-k lists of one query into one."""
    return topk(np.concatenate(scores), np.concatenate(ids), k)


def select_rows(
    scores: np.ndarray, rows: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per query of candidate ``(scores, rows)`` ``(nq, c)``; row -1 marks no candidate.

    Rows index ``ids`` (the tie-break); empty slots sort last. Used to merge
    the per-thread heaps of the scan kernels and to re-rank re-scored candidates.
    """
    nq, c = scores.shape
    valid = rows >= 0
    # Sort keys: query, then empty slots last, then score descending, then key ascending.
    cand_ids = np.where(valid, ids[np.maximum(rows, 0)], 0)
    query = np.repeat(np.arange(nq), c)
    order = np.lexsort((cand_ids.ravel(), -scores.ravel(), ~valid.ravel(), query))
    order = order.reshape(nq, c)[:, :k]
    return scores.ravel()[order], rows.ravel()[order]


def merge_heaps(
    heap_scores: np.ndarray, heap_rows: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the scan kernels' per-chunk heaps ``(C, nq, k)`` into ``(nq, k)`` best-first lists."""
    chunks, nq, width = heap_scores.shape
    scores = heap_scores.transpose(1, 0, 2).reshape(nq, chunks * width)
    rows = heap_rows.transpose(1, 0, 2).reshape(nq, chunks * width)
    return select_rows(scores, rows, ids, k)
