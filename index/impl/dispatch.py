"""Per-segment search: which kernel scans which segment, and the merge of their top-k.

:class:`index.BinaryIndex` decides a :class:`Plan` per search (from ``method``
and its :class:`index.impl.kernel_choice.KernelChooser`); the functions here run it
over one snapshot of the segments. :func:`scan_segment` is the one place the
top-k scan kernels run, :func:`score_segment` the one place the scoring ones do.
Every kernel returns the same ``(scores, rows)``: best first, ties by key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numba
import numpy as np

from index.impl.batch_kernels import batch_supported, batch_topk
from index.impl.fastscan import FastScanCodes, fastscan_topk, fastscan_topk_float
from index.impl.kernels import (
    hamming_topk_scan,
    plane_markers,
    score_codes,
    score_rows,
    table_topk_scan,
    topk_scan,
    words_marker,
)
from index.impl.single_kernels import single_supported, single_topk
from index.impl.topk import merge_heaps
from index.segments import Segment, State

if TYPE_CHECKING:
    from index.code_store import CodeStore

NO_NORMS = np.empty(0, dtype=np.float32)
NO_MASK = np.empty(0, dtype=np.uint8)
#: In an index of several segments, those with fewer rows are scanned on one thread
#: (waking a second thread for a tiny parallel call costs more than the scan on a
#: busy machine); fast-scan copies are made only of sealed segments this large.
PARALLEL_ROWS = 1 << 15


#: A scan kernel's name: plane-pair popcounts, the query-blocked SIMD batch kernel,
#: or fast-scan nibble tables (:mod:`index.impl.fastscan`).
Kernel = Literal["popcount", "batch", "sdc"]


@dataclass(frozen=True)
class Plan:
    """The kernel for large sealed in-memory segments and the one for every other segment.

    Only large sealed in-memory segments may get ``"sdc"`` (it keeps a second,
    transposed copy of the codes); the tail, small and memory-mapped segments
    take ``rest``. ``"sdc"`` for ``rest`` too means every segment (``method="sdc"``).
    """

    large: Kernel = "popcount"
    rest: Kernel = "popcount"

    def kernel(self, seg: Segment) -> Kernel:
        """The kernel that scans ``seg``."""
        core = seg.core
        if core.sealed and not core.mapped and seg.n >= PARALLEL_ROWS:
            return self.large
        return self.rest


def scan_masks(
    state: State, allow_keys: np.ndarray | None, mask: np.ndarray | None
) -> tuple[list[np.ndarray], list[int]]:
    """Per segment: uint8 mask over its rows (empty for all rows) and searchable count."""
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (state.n_live,):
            raise ValueError(f"mask must be bool of shape ({state.n_live},), got {mask.shape}")
    allow = None if allow_keys is None else np.asarray(allow_keys, dtype=np.int64).reshape(-1)
    if mask is None and allow is not None:  # keys looked up, not every id tested
        from index.impl.gather import allow_masks, unique_keys

        return allow_masks(state, unique_keys(allow))
    masks, counts, offset = [], [], 0
    for seg in state.segments:
        if allow is None and mask is None:
            masks.append(NO_MASK if seg.alive is None else seg.alive)
            counts.append(seg.n_live)
            continue
        if mask is None:
            keep = np.ones(seg.n, dtype=bool) if seg.alive is None else seg.alive.astype(bool)
        else:  # the mask is over live rows in storage order: scatter it onto this segment
            keep = np.zeros(seg.n, dtype=bool)
            keep[seg.live_rows()] = mask[offset : offset + seg.n_live]
            offset += seg.n_live
        if allow is not None:
            keep &= np.isin(seg.ids, allow)
        masks.append(keep.view(np.uint8))
        counts.append(int(np.count_nonzero(keep)))
    return masks, counts


@dataclass(frozen=True)
class ScanQuery:
    """What a scan scores, in the manner of faiss's ``SearchParameters``: one object, not eight arguments.

    Either code queries -- ``queries`` uint64 ``(nq, Pq, W)`` with
    ``query_weights`` float32 ``(nq, Pq)``, scored against the first
    ``doc_planes`` planes of each document -- or float queries: ``floats``
    ``(nq, m)`` with their byte tables ``tables`` float32 ``(nq, ceil(m / 8), 256)``.
    Build one with :meth:`codes` or :meth:`float_tables`.
    """

    queries: np.ndarray | None = None
    query_weights: np.ndarray | None = None
    doc_planes: int = 0
    tables: np.ndarray | None = None
    floats: np.ndarray | None = None

    @classmethod
    def codes(cls, queries: np.ndarray, query_weights: np.ndarray, doc_planes: int) -> ScanQuery:
        """Code queries against ``doc_planes`` planes of each document."""
        return cls(queries, query_weights, doc_planes)

    @classmethod
    def float_tables(cls, tables: np.ndarray, floats: np.ndarray | None) -> ScanQuery:
        """Float queries ``floats`` scored by their byte ``tables``."""
        return cls(tables=tables, floats=floats)

    @property
    def nq(self) -> int:
        """Number of queries."""
        return (self.tables if self.tables is not None else self.queries).shape[0]


def topk_segments(
    ix: CodeStore,
    state: State,
    masks: list[np.ndarray],
    counts: list[int],
    k: int,
    threads: int,
    query: ScanQuery,
    plan: Plan = Plan(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` over every segment: ``(scores, keys, segment, row)``, each ``(nq, k)``.

    Each segment's best ``min(k, its searchable rows)`` come from
    :func:`scan_segment` with the kernel ``plan`` gives it; the lists are merged
    by score descending, then key ascending -- the order one scan over all rows
    would give.
    """
    parts = []
    for s, seg in enumerate(state.segments):
        ks = min(k, counts[s])
        if ks:
            small = seg.n < PARALLEL_ROWS and len(state.segments) > 1
            scores, rows = scan_segment(
                ix, seg, ks, masks[s], 1 if small else threads, query, plan.kernel(seg)
            )
            parts.append((scores, seg.ids[rows], np.full_like(rows, s), rows))
    if len(parts) == 1:
        return parts[0]
    scores, ids, segs, rows = (np.concatenate(p, axis=1) for p in zip(*parts, strict=True))
    order = np.lexsort((ids, -scores), axis=-1)[:, :k]
    return tuple(np.take_along_axis(a, order, axis=1) for a in (scores, ids, segs, rows))


def scan_segment(
    ix: CodeStore,
    seg: Segment,
    k: int,
    mask: np.ndarray,
    threads: int,
    query: ScanQuery,
    kernel: Kernel = "popcount",
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of one segment: ``(scores float32 (nq, k), rows int64 (nq, k))``, best first.

    Float queries (``query.tables``) are scored exactly by the byte-table
    kernel, or by fast-scan with exact re-scoring when ``kernel`` is ``"sdc"``;
    code queries against ``query.doc_planes`` planes of each document.
    ``"sdc"`` applies to full-plane scans only, ``"batch"`` to shapes
    :func:`index.impl.batch_kernels.batch_supported` accepts; other scans fall
    back to ``"popcount"``. ``k`` must not exceed the segment's searchable rows.
    """
    floats = query.tables is not None
    if kernel == "sdc" and (floats or query.doc_planes == ix.planes):
        return _scan_fastscan(ix, seg, k, mask, threads, query)
    # Only fixed-weight multi-plane cosine divides by a stored norm; a one-plane
    # cascade stage ranks by plane 0 alone, where the norm is not the right divisor.
    full = query.doc_planes == ix.planes or floats
    norms = seg.norms if ix._stores_norms and full else NO_NORMS
    if (
        kernel == "batch"
        and not floats
        and batch_supported(ix.m, query.doc_planes, query.queries.shape[1])
    ):
        return _scan_batch(ix, seg, k, mask, threads, query, norms)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return _scan_popcount(ix, seg, k, mask, max(1, min(threads, seg.n)), query, norms)
    finally:
        numba.set_num_threads(previous)


def _scan_fastscan(
    ix: CodeStore, seg: Segment, k: int, mask: np.ndarray, threads: int, query: ScanQuery
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`scan_segment` by fast-scan (:mod:`index.impl.fastscan`) on the segment's layout."""
    layout = segment_layout(ix, seg)
    norms = seg.norms if ix._stores_norms and seg.norms.shape[0] else None
    mask_arg = mask if mask.shape[0] else None
    if query.tables is not None:
        return fastscan_topk_float(
            layout, query.floats, k, seg.ids, norms, mask_arg, threads, float_tables=query.tables
        )
    return fastscan_topk(
        layout, query.queries, query.query_weights, k, seg.ids, norms, mask_arg, threads
    )


def _scan_batch(
    ix: CodeStore,
    seg: Segment,
    k: int,
    mask: np.ndarray,
    threads: int,
    query: ScanQuery,
    norms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`scan_segment` by the query-blocked kernels (a lone 1-plane query by the vector one)."""
    queries, query_weights = query.queries, query.query_weights
    if queries.shape[0] == 1 and single_supported(ix.n_words, seg.codes.shape[1]):
        scale = query_weights[:, 0] * ix.plane_weights[0]
        if _ranks_by_hamming(ix, query.doc_planes, queries, norms, scale):
            scores, rows = single_topk(seg.codes, queries[0, 0], seg.ids, mask, k, threads)
            return _from_hamming(scores, scale, ix.m), rows
    return batch_topk(
        seg.codes,
        ix.db_weights(seg),
        int(ix.scaling == "per_document"),
        query.doc_planes,
        queries,
        query_weights,
        ix.m,
        seg.ids,
        norms,
        mask,
        k,
        threads,
        hamming_ok=ix.scaling == "fixed",
    )


def _scan_popcount(
    ix: CodeStore,
    seg: Segment,
    k: int,
    mask: np.ndarray,
    chunks: int,
    query: ScanQuery,
    norms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`scan_segment` by the parallel numba kernels, ``chunks`` heaps merged."""
    heap_scores = np.empty((chunks, query.nq, k), dtype=np.float32)
    heap_rows = np.empty((chunks, query.nq, k), dtype=np.int64)
    heaps = (heap_scores, heap_rows)
    stride = int(ix.scaling == "per_document")
    if query.tables is not None:
        db_bytes = seg.codes.view(np.uint8).reshape(seg.n, ix.planes, -1)
        weights = ix.db_weights(seg)
        table_topk_scan(db_bytes, weights, stride, query.tables, seg.ids, norms, mask, *heaps)
        return merge_heaps(heap_scores, heap_rows, seg.ids, k)
    queries, query_weights = query.queries, query.query_weights
    # One plane against one plane with a positive shared weight ranks by Hamming
    # distance alone: the integer kernel, scores restored after the merge.
    scale = query_weights[:, 0] * ix.plane_weights[0]
    if _ranks_by_hamming(ix, query.doc_planes, queries, norms, scale):
        words = words_marker(ix.n_words)
        hamming_topk_scan(seg.codes, queries, seg.ids, mask, words, *heaps)
        scores, rows = merge_heaps(heap_scores, heap_rows, seg.ids, k)
        return _from_hamming(scores, scale, ix.m), rows
    doc_marker, query_marker = plane_markers(query.doc_planes, queries.shape[1], ix.n_words)
    topk_scan(
        seg.codes,
        ix.db_weights(seg),
        stride,
        doc_marker,
        queries,
        query_weights,
        query_marker,
        ix.m,
        seg.ids,
        norms,
        mask,
        words_marker(ix.n_words),
        heap_scores,
        heap_rows,
    )
    return merge_heaps(heap_scores, heap_rows, seg.ids, k)


def _ranks_by_hamming(
    ix: CodeStore, doc_planes: int, queries: np.ndarray, norms: np.ndarray, scale: np.ndarray
) -> bool:
    """One plane against one plane with a positive shared weight ranks by Hamming distance alone."""
    return (
        doc_planes == 1
        and queries.shape[1] == 1
        and ix.scaling == "fixed"
        and not norms.shape[0]
        and bool(np.all(scale > 0))
    )


def _from_hamming(scores: np.ndarray, scale: np.ndarray, m: int) -> np.ndarray:
    """``-hamming`` back to ``a * b * (m - 2 * hamming)``, in float32 like ``topk_scan``."""
    scores = scale[:, None] * (np.float32(m) + np.float32(2) * scores)
    return scores.astype(np.float32, copy=False)


def segment_layout(ix: CodeStore, seg: Segment) -> FastScanCodes:
    """The fast-scan copy of ``seg``, built on first use and kept while the segment lives."""
    uid = seg.core.uid
    hit = ix._layouts.get(uid)
    if hit is not None and hit[0] == seg.n:
        return hit[1]
    weights = seg.scales if ix.scaling == "per_document" else ix.plane_weights
    layout = FastScanCodes.from_codes(seg.codes, weights, ix.m)
    live = {s.core.uid for s in ix._state.segments}
    layouts = {u: v for u, v in ix._layouts.items() if u in live and u != uid}
    layouts[uid] = (seg.n, layout)
    ix._layouts = layouts  # one assignment: readers see the old dict or the new one
    return layout


def score_segment(
    ix: CodeStore,
    seg: Segment,
    queries: np.ndarray,
    query_weights: np.ndarray,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Exact scores (all planes, over the norm for cosine) against one segment.

    Every stored row, float32 ``(nq, n)``, or with ``rows`` int64 ``(nq, c)``
    (-1 = none) only those, float32 ``(nq, c)`` with ``-inf`` at -1.
    """
    stride = int(ix.scaling == "per_document")
    norms = seg.norms if ix._stores_norms else NO_NORMS
    weights = ix.db_weights(seg)
    if rows is not None:
        out = np.empty(rows.shape, dtype=np.float32)
        score_rows(seg.codes, weights, stride, queries, query_weights, ix.m, norms, rows, out)
        return out
    out = np.empty((queries.shape[0], seg.n), dtype=np.float32)
    score_codes(seg.codes, weights, stride, queries, query_weights, ix.m, out)
    if norms.shape[0]:
        out /= norms[None, :]
    return out


def rerank(
    ix: CodeStore,
    state: State,
    queries: np.ndarray,
    query_weights: np.ndarray,
    segs: np.ndarray,
    rows: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of candidates ``(segment, row)`` (nq, c) with all planes; the best ``k``."""
    scores = np.full(rows.shape, -np.inf, dtype=np.float32)
    ids = np.zeros(rows.shape, dtype=np.int64)
    for s in np.unique(segs).tolist():
        seg = state.segments[s]
        here = segs == s
        mine = np.ascontiguousarray(np.where(here, rows, -1))
        scores = np.where(here, score_segment(ix, seg, queries, query_weights, mine), scores)
        ids[here] = seg.ids[rows[here]]
    order = np.lexsort((ids, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
