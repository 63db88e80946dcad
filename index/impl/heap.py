"""Bounded heaps for fused top-k, as plain arrays (numba).

A heap of capacity ``k`` keeps the ``k`` best ``(score, row)`` pairs seen so far.
"Better" means a higher score, or an equal score and a smaller key
(``ids[row]``): the same order as a stable sort by ``(-score, key)``. The root
(slot 0) holds the *worst* kept pair, so a candidate is compared with one slot
and almost always rejected there -- the scan never materialises all scores.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def better(score_a: float, id_a: int, score_b: float, id_b: int) -> bool:
    """Whether ``(score_a, id_a)`` ranks before ``(score_b, id_b)``."""
    return score_a > score_b or (score_a == score_b and id_a < id_b)


@njit(cache=True, nogil=True)
def _sift_down(scores: np.ndarray, rows: np.ndarray, ids: np.ndarray, size: int) -> None:
    # Restore the heap property from the root after it was replaced.
    pos = 0
    s, r = scores[0], rows[0]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        # pick the worse child: it must move up towards the root
        if right < size and better(
            scores[child], ids[rows[child]], scores[right], ids[rows[right]]
        ):
            child = right
        if better(s, ids[r], scores[child], ids[rows[child]]):
            scores[pos] = scores[child]
            rows[pos] = rows[child]
            pos = child
        else:
            break
    scores[pos] = s
    rows[pos] = r


@njit(cache=True, nogil=True)
def _sift_up(scores: np.ndarray, rows: np.ndarray, ids: np.ndarray, pos: int) -> None:
    s, r = scores[pos], rows[pos]
    while pos > 0:
        parent = (pos - 1) // 2
        if better(scores[parent], ids[rows[parent]], s, ids[r]):
            scores[pos] = scores[parent]
            rows[pos] = rows[parent]
            pos = parent
        else:
            break
    scores[pos] = s
    rows[pos] = r


@njit(cache=True, inline="always")
def heap_push(
    scores: np.ndarray, rows: np.ndarray, ids: np.ndarray, size: int, score: float, row: int
) -> int:
    """Offer ``(score, row)`` to a heap holding ``size`` pairs; return the new size.

    Args:
        scores: float32 ``(k,)`` heap scores.
        rows: int64 ``(k,)`` heap rows (positions into ``ids``).
        ids: int64 ``(n,)`` keys, for the tie-break.
    """
    k = scores.shape[0]
    if size < k:
        scores[size] = score
        rows[size] = row
        _sift_up(scores, rows, ids, size)
        return size + 1
    if score > scores[0] or (score == scores[0] and ids[row] < ids[rows[0]]):
        scores[0] = score
        rows[0] = row
        _sift_down(scores, rows, ids, size)
    return size
