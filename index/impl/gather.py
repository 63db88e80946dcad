"""Selective allow-lists: score only the allowed rows, not every row under a mask.

A filter that matches 1 % of a million documents leaves a masked scan still
reading (and scoring) every code. When the allow-list is small against the
index, :func:`gathered_topk` looks each allowed key up instead (a binary search
in each sealed segment's sorted ids, a dict lookup in the tail), scores just
those rows with all planes (:func:`score_listed`: :func:`index.impl.kernels.pair_score`,
the scan's own arithmetic, so the scores are the scan's bit for bit) and keeps the best ``k``,
ties by key. :func:`allow_masks` builds the masked scan's per-segment masks the
same way, without a pass of :func:`numpy.isin` over every stored id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from index.impl.kernels import pair_score

if TYPE_CHECKING:
    from index.code_store import CodeStore
    from index.segments import Segment, State

#: Allowed keys per searchable row up to which :func:`gathered_topk` beats a masked
#: scan (a gathered row costs a lookup and a random read, several scanned rows' time).
GATHER_FRACTION = 1 / 16
#: The tail's id -> row map is a Python dict: beyond this many keys, ``numpy.isin``.
TAIL_LOOKUPS = 4096


@njit(cache=True, nogil=True)
def score_listed(
    db: np.ndarray,
    db_weights: np.ndarray,
    weight_stride: int,
    queries: np.ndarray,
    query_weights: np.ndarray,
    m: int,
    norms: np.ndarray,
    rows: np.ndarray,
    out: np.ndarray,
) -> None:
    """Scores of the document ``rows`` (int64 ``(c,)``) for every query into ``out`` ``(nq, c)``.

    Arguments as :func:`index.impl.kernels.score_rows`, with one row list for all
    queries. On one thread: a few thousand rows take well under a millisecond,
    less than waking the pool of a parallel kernel on a busy machine.
    """
    nq, q_planes = queries.shape[0], queries.shape[1]
    n_planes, nw = db.shape[1], db.shape[2]
    use_norms = norms.shape[0] > 0
    for t in range(rows.shape[0]):
        i = rows[t]
        row = i * weight_stride
        for j in range(nq):
            s = pair_score(
                queries, j, query_weights, q_planes, db, i, db_weights, row, n_planes, nw, m
            )
            if use_norms:
                s = s / norms[i]
            out[j, t] = s


def segment_rows(seg: Segment, allow: np.ndarray) -> np.ndarray:
    """Live rows of ``seg`` holding a key of ``allow`` (int64, unique sorted keys), ascending."""
    if not seg.n or not allow.shape[0]:
        return np.empty(0, dtype=np.int64)
    if seg.core.tail_rows is not None and allow.shape[0] > TAIL_LOOKUPS:
        keep = np.isin(seg.ids, allow)
        if seg.alive is not None:
            keep &= seg.alive.view(bool)
        return np.flatnonzero(keep)
    rows = seg.rows_of(allow)
    rows = rows[rows >= 0]
    rows.sort()
    return rows


def allow_masks(state: State, allow: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """Per segment: uint8 mask of the live rows whose key is in ``allow``, and its count."""
    masks, counts = [], []
    for seg in state.segments:
        rows = segment_rows(seg, allow)
        keep = np.zeros(seg.n, dtype=np.uint8)
        keep[rows] = 1
        masks.append(keep)
        counts.append(int(rows.shape[0]))
    return masks, counts


def unique_keys(allow_keys: np.ndarray) -> np.ndarray:
    """``allow_keys`` as sorted unique int64 keys."""
    allow = np.asarray(allow_keys, dtype=np.int64).reshape(-1)
    if allow.shape[0] > 1 and not bool(np.all(allow[1:] > allow[:-1])):
        allow = np.unique(allow)
    return allow


def gathered_topk(
    ix: CodeStore,
    state: State,
    allow: np.ndarray,
    queries: np.ndarray,
    query_weights: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Top-``k`` of the live rows whose keys are in ``allow`` (sorted unique int64).

    Exact scores with all planes, best first, ties by key: what a full scan with
    the allow-list as its mask returns. ``None`` when the allowed rows are too
    many for gathering to pay (:data:`GATHER_FRACTION` of the searchable rows).
    """
    n_live = state.n_live
    if allow.shape[0] > max(k, GATHER_FRACTION * n_live):
        return None
    nq = queries.shape[0]
    parts_scores, parts_ids = [], []
    for seg in state.segments:
        rows = segment_rows(seg, allow)
        if not rows.shape[0]:
            continue
        out = np.empty((nq, rows.shape[0]), dtype=np.float32)
        norms = seg.norms if ix._stores_norms else np.empty(0, dtype=np.float32)
        stride = int(ix.scaling == "per_document")
        score_listed(
            seg.codes, ix.db_weights(seg), stride, queries, query_weights, ix.m, norms, rows, out
        )
        parts_scores.append(out)
        parts_ids.append(seg.ids[rows])
    if not parts_scores:
        return np.empty((nq, 0), dtype=np.float32), np.empty((nq, 0), dtype=np.int64)
    scores = np.concatenate(parts_scores, axis=1)
    ids = np.concatenate(parts_ids)
    kk = min(k, ids.shape[0])
    out_scores = np.empty((nq, kk), dtype=np.float32)
    out_ids = np.empty((nq, kk), dtype=np.int64)
    for j in range(nq):
        s = scores[j]
        if s.shape[0] > kk:  # every row scoring at least the k-th best, ties included
            cut = np.partition(s, s.shape[0] - kk)[s.shape[0] - kk]
            pick = np.flatnonzero(s >= cut)
        else:
            pick = np.arange(s.shape[0])
        order = pick[np.lexsort((ids[pick], -s[pick]))[:kk]]
        out_scores[j], out_ids[j] = s[order], ids[order]
    return out_scores, out_ids


__all__ = [
    "GATHER_FRACTION",
    "score_listed",
    "allow_masks",
    "gathered_topk",
    "segment_rows",
    "unique_keys",
]
