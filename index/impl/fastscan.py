"""SDC by nibble lookup tables held in SIMD registers ("fast-scan", as faiss's pq4 fast-scan).

The score of a query (planes ``p``, weights ``a_p``) against a document code
(planes ``r``, weights ``b_r``), ``m`` bits per plane, is::

    score = sum_r b_r * sum_p a_p * (m - 2 * popcount(q_p XOR d_r))
          = sum_r b_r * <v_q, s_r>,          v_q = sum_p a_p * q_p  (q_p, s_r in {-1, +1}^m)

so one table per query serves every document plane: split the ``m`` dimensions
into nibbles of 4, and let ``T[t][x] = <v_q, signs nibble value x encodes>`` on
the dimensions ``4t .. 4t + 3`` (0 past ``m``). Then ``<v_q, s_r> = sum_t T[t][nibble_t(d_r)]``.

**Layout** (:class:`FastScanCodes`). Documents go in blocks of 32; for each
block, plane and code byte ``t`` (nibbles ``2t`` and ``2t + 1``) the 32
documents' bytes are adjacent: ``blocks[block, plane, t, doc]``, uint8. That is
16 bytes per nibble position and 32 documents, as faiss's layout, and one
32-byte vector load feeds two ``vpshufb`` lookups: the low nibbles against the
table of nibble ``2t`` and the high nibbles against that of ``2t + 1``. The last
block is padded with zero codes that the scan never reports.

**Tables** (:class:`NibbleTables`) are int8, 16 entries per nibble position,
repeated in both 128-bit lanes (``vpshufb`` looks up within a lane): shape
``(nq, T, 2, 32)``. A score is ``scale * sum of integer lookups``:

* *exact* (:func:`symmetric_tables` when the query plane weights are integer
  multiples ``n_p * 2**e`` of one power of two with small ``sum |n_p|``, e.g.
  BEBR's fixed ``2**-p`` for up to 4 query planes, 5 when ``m % 4 == 0``): ``v_q / 2**e`` is an integer
  vector, every table entry is an exact small integer, and the kernel's score is
  bit-for-bit the float32 score of the popcount kernels (``index.kernels``).
* *quantized* (every other query, and float queries in
  :func:`float_tables`): entries are rounded to integers with one scale per
  query (faiss's LUT quantization), so scores are approximate; the ``*_topk``
  functions then scan for ``k * rescore_factor`` candidates and re-score them
  exactly, like faiss's ``IndexPQFastScan`` + refine.

**Kernel.** Per step the AVX2 path loads 32 code bytes, splits nibbles, does two
``vpshufb`` lookups and one int8 add; a group of byte positions whose entries
cannot overflow int8 is summed in int8, then sign-extended into int16 lanes (one
per document). Per block, one LLVM vector pass (:func:`block_scores`) turns the
int16 sums into float32 scores (plane scales, norms) and a bitmask of the
documents at or above the heap's threshold; only those reach the scalar heap
(``index.heap.heap_push``, ties by key). Hosts without AVX2 take a plain scalar
loop for the lookups (selected at import: :data:`HAS_AVX2`).

**Exactness.** Exact tables: the top-k ids and scores are those of
``BinaryIndex.search(method="popcount")`` bit for bit. Quantized tables: with
``rescore_factor`` set, ``k * rescore_factor`` candidates are re-scored exactly
(popcounts for code queries, float byte tables for float queries), so the
returned scores are exact and the ids are exact whenever the true top-k is among
the candidates (always when ``k * rescore_factor`` covers every searchable
document); ``rescore_factor=None`` returns the quantized scores themselves.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from index.codes import byte_tables, words_per_plane
from index.impl.fastscan_layout import (
    BLOCK,
    INT16_MAX,
    QUANTIZED_GROUP,
    FastScanCodes,
    NibbleTables,
    exact_tables_possible,
    quantized_tables,
    symmetric_tables,
)
from index.impl.fastscan_simd import HAS_AVX2, SIMD_MARKER, block_scores, plane_sums
from index.impl.heap import heap_push
from index.impl.kernels import score_rows
from index.impl.topk import merge_heaps, select_rows

__all__ = [
    "BLOCK",
    "HAS_AVX2",
    "INT16_MAX",
    "QUANTIZED_GROUP",
    "FastScanCodes",
    "NibbleTables",
    "exact_tables_possible",
    "fastscan_topk",
    "fastscan_topk_float",
    "quantized_tables",
    "symmetric_tables",
]


@njit(cache=True, inline="always")
def block_sums(
    simd,
    flat_codes: np.ndarray,
    code_off: int,
    plane_stride: int,
    flat_tables: np.ndarray,
    table_off: int,
    n_bytes: int,
    group: int,
    n_planes: int,
    sums: np.ndarray,
) -> None:
    """Every plane's table-lookup sums of one block into ``sums`` int16 ``(P * 32,)`` (:func:`plane_sums`)."""
    for r in range(n_planes):
        plane_sums(
            simd, flat_codes, code_off + r * plane_stride, flat_tables, table_off, n_bytes,
            group, sums, r * BLOCK,
        )  # fmt: skip


@njit(cache=True, inline="always")
def block_norms(
    norms: np.ndarray, base: int, valid: int, norm_pad: np.ndarray
) -> tuple[np.ndarray, int]:
    """``(array, offset)`` of the norms of the block at row ``base``, ``valid`` rows real.

    The last block's norms are copied into ``norm_pad`` (ones past ``valid``) so
    the 32-wide vector load of :func:`block_scores` stays in bounds.
    """
    if norms.shape[0] > 0 and valid < BLOCK:
        for i in range(valid):
            norm_pad[i] = norms[base + i]
        return norm_pad, 0
    return norms, base


@njit(cache=True, inline="always")
def offer_hits(
    bits: np.uint32,
    valid: int,
    scores32: np.ndarray,
    base: int,
    mask: np.ndarray,
    hs: np.ndarray,
    hr: np.ndarray,
    ids: np.ndarray,
    size: int,
    threshold: np.float32,
    k: int,
) -> tuple[int, np.float32]:
    """Offer the block's documents whose bit is set in ``bits`` to one query's heap.

    ``scores32[i]`` is the score of row ``base + i``; rows past ``valid`` (the
    last block's padding) and masked rows are never offered. Returns the heap's
    ``(size, threshold)`` after.
    """
    use_mask = mask.shape[0] > 0
    for i in range(valid):
        if (bits >> np.uint32(i)) & np.uint32(1) == 0:
            continue
        s = scores32[i]
        row = base + i
        if s < threshold or (use_mask and mask[row] == 0):
            continue
        size = heap_push(hs, hr, ids, size, s, row)
        if size == k:
            threshold = hs[0]
    return size, threshold


@njit(cache=True, parallel=True, nogil=True)
def fastscan_topk_scan(
    blocks: np.ndarray,
    scales: np.ndarray,
    scale_stride: int,
    n: int,
    tables: np.ndarray,
    table_scale: np.ndarray,
    groups: np.ndarray,
    ids: np.ndarray,
    norms: np.ndarray,
    mask: np.ndarray,
    simd,
    heap_scores: np.ndarray,
    heap_rows: np.ndarray,
) -> None:
    """Scan the fast-scan layout and keep per-chunk top-k heaps (as ``index.kernels.topk_scan``).

    Args:
        blocks: uint8 ``(n_blocks, P, T, 32)`` codes (:class:`FastScanCodes`).
        scales: float32 ``(n_blocks, P, 32)`` per-document plane weights with
            ``scale_stride = 1``, or ``(1, P, 32)`` shared with ``scale_stride = 0``.
        n: documents (rows ``>= n`` of the last block are padding).
        tables: int8 ``(nq, T, 2, 32)`` (:class:`NibbleTables`).
        table_scale: float32 ``(nq,)``; a plane's value is ``table_scale * sum``.
        groups: int64 ``(nq,)`` byte positions summed in int8 before widening.
        ids: int64 ``(n,)`` keys (tie-break).
        norms: float32 ``(n,)`` score divisors, or empty.
        mask: uint8 ``(n,)``, 0 = skip; or empty.
        simd: :data:`SIMD_MARKER`.
        heap_scores: float32 ``(C, nq, k)``, heap_rows int64 ``(C, nq, k)``,
            written in place, one heap per chunk of blocks and query; unused
            slots keep row -1.

    ``score = sum_r scales[r] * (table_scale * sum_r)`` in float32, planes in
    order: the same operations as the popcount kernels, so exact tables give
    bit-identical scores.
    """
    n_blocks, n_planes, n_bytes = blocks.shape[0], blocks.shape[1], blocks.shape[2]
    nq = tables.shape[0]
    n_chunks, k = heap_scores.shape[0], heap_scores.shape[2]
    flat_codes = blocks.reshape(-1)
    flat_tables = tables.reshape(-1)
    flat_scales = scales.reshape(-1)
    plane_stride = n_bytes * BLOCK
    block_stride = n_planes * plane_stride
    table_stride = 2 * n_bytes * BLOCK
    use_norms = norms.shape[0] > 0
    # Blocks scanned per query before the next query: ~16 KB of codes stay in L1.
    run = max(1, 16384 // block_stride)
    chunk = (n_blocks + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = min(n_blocks, c * chunk)
        hi = min(n_blocks, lo + chunk)
        hs = heap_scores[c]
        hr = heap_rows[c]
        hr[:] = -1
        hs[:] = -np.inf
        sizes = np.zeros(nq, dtype=np.int64)
        sums = np.empty(n_planes * BLOCK, dtype=np.int16)
        scores32 = np.empty(BLOCK, dtype=np.float32)
        norm_pad = np.ones(BLOCK, dtype=np.float32)
        for r0 in range(lo, hi, run):
            r1 = min(hi, r0 + run)
            for j in range(nq):
                size = sizes[j]
                hsj = hs[j]
                hrj = hr[j]
                threshold = hsj[0] if size == k else -np.inf
                g = table_scale[j]
                group = groups[j]
                for b in range(r0, r1):
                    block_sums(
                        simd, flat_codes, b * block_stride, plane_stride, flat_tables,
                        j * table_stride, n_bytes, group, n_planes, sums,
                    )  # fmt: skip
                    # One vector pass scores the 32 documents and compares them with
                    # the threshold; only a block with a hit goes on to the heap loop.
                    base = b * BLOCK
                    valid = min(BLOCK, n - base)
                    norm_src, norm_off = block_norms(norms, base, valid, norm_pad)
                    bits = block_scores(
                        sums, flat_scales, b * scale_stride * n_planes * BLOCK, n_planes, g,
                        norm_src, norm_off, use_norms, threshold, scores32,
                    )  # fmt: skip
                    if bits != 0:
                        size, threshold = offer_hits(
                            bits, valid, scores32, base, mask, hsj, hrj, ids, size, threshold, k
                        )
                sizes[j] = size


@njit(cache=True, parallel=True, nogil=True)
def score_rows_float_tables(
    blocks: np.ndarray,
    scales: np.ndarray,
    scale_stride: int,
    tables: np.ndarray,
    norms: np.ndarray,
    rows: np.ndarray,
    out: np.ndarray,
) -> None:
    """Exact float scores of given rows by per-byte float tables (re-scoring float queries).

    Args:
        blocks, scales, scale_stride, norms: as :func:`fastscan_topk_scan`.
        tables: float32 ``(nq, T, 256)`` from :func:`index.codes.byte_tables`.
        rows: int64 ``(nq, c)`` rows per query, -1 = none.
        out: float32 ``(nq, c)``, written in place (``-inf`` where ``rows`` is -1).

    The same float32 operations, in the same order, as
    ``index.kernels.table_topk_scan``: scores agree bit for bit.
    """
    nq, n_bytes = tables.shape[0], tables.shape[1]
    n_planes = blocks.shape[1]
    use_norms = norms.shape[0] > 0
    for j in prange(nq):
        table = tables[j]
        for t in range(rows.shape[1]):
            i = rows[j, t]
            if i < 0:
                out[j, t] = -np.inf
                continue
            b, d = i // BLOCK, i % BLOCK
            srow = b * scale_stride
            s = np.float32(0.0)
            for r in range(n_planes):
                acc = np.float32(0.0)
                for u in range(n_bytes):
                    acc += table[u, blocks[b, r, u, d]]
                s += scales[srow, r, d] * acc
            if use_norms:
                s = s / norms[i]
            out[j, t] = s


def _check_common(layout, k, ids, norms, mask, threads):
    if not isinstance(layout, FastScanCodes):
        raise ValueError("layout must be a FastScanCodes")
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n = layout.n
    ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
    if norms is None:
        norms = np.empty(0, dtype=np.float32)
    else:
        norms = np.ascontiguousarray(norms, dtype=np.float32)
        if norms.shape != (n,):
            raise ValueError(f"norms must have shape ({n},), got {norms.shape}")
    if mask is None:
        mask_arg = np.empty(0, dtype=np.uint8)
        n_live = n
    else:
        mask = np.asarray(mask)
        if mask.shape != (n,) or mask.dtype not in (np.bool_, np.uint8):
            raise ValueError(
                f"mask must be bool or uint8 of shape ({n},), got {mask.dtype} {mask.shape}"
            )
        mask_arg = np.ascontiguousarray(mask.astype(np.uint8, copy=False))
        n_live = int(np.count_nonzero(mask_arg))
    threads = int(numba.config.NUMBA_NUM_THREADS if threads is None else threads)
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads must be in 1..{numba.config.NUMBA_NUM_THREADS}, got {threads}")
    return ids, norms, mask_arg, n_live, threads


def _scan(layout, tables: NibbleTables, k, ids, norms, mask, threads):
    """Run the kernel: ``(scores, rows)`` ``(nq, k)`` best first (by the tables' scores)."""
    nq = tables.tables.shape[0]
    n_blocks = layout.blocks.shape[0]
    chunks = max(1, min(threads, n_blocks))
    heap_scores = np.empty((chunks, nq, k), dtype=np.float32)
    heap_rows = np.empty((chunks, nq, k), dtype=np.int64)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        fastscan_topk_scan(
            layout.blocks,
            layout.scales,
            int(layout.per_document),
            layout.n,
            tables.tables,
            tables.scale,
            tables.groups,
            ids,
            norms,
            mask,
            SIMD_MARKER,
            heap_scores,
            heap_rows,
        )
    finally:
        numba.set_num_threads(previous)
    return merge_heaps(heap_scores, heap_rows, ids, k)


def _empty(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((nq, k), dtype=np.float32), np.empty((nq, k), dtype=np.int64)


def fastscan_topk(
    layout: FastScanCodes,
    query_codes: np.ndarray,
    query_weights: np.ndarray,
    k: int,
    ids: np.ndarray | None = None,
    norms: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    threads: int | None = None,
    rescore_factor: int | None = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` documents for query codes by fast-scan SDC.

    Args:
        layout: the documents, :meth:`FastScanCodes.from_codes`.
        query_codes: uint64 ``(nq, Pq, ceil(m / 64))``; any ``Pq``.
        query_weights: float32 ``(nq, Pq)`` plane weights.
        k: results per query (fewer if fewer documents are searchable).
        ids: int64 ``(n,)`` keys for the tie-break; default the rows.
        norms: float32 ``(n,)`` score divisors (cosine with stored norms), or None.
        mask: bool/uint8 ``(n,)``: only nonzero rows can be returned; or None.
        threads: threads splitting the blocks; default every numba thread.
        rescore_factor: for queries whose tables are not exact (see
            :func:`symmetric_tables`): scan for ``k * rescore_factor``
            candidates by the quantized tables and re-rank them by exact
            popcount scores (``index.kernels.score_rows``). ``None`` returns
            the quantized scores and ranking as they are.

    Returns:
        ``scores`` float32 ``(nq, k')`` and ``rows`` int64 ``(nq, k')`` (positions
        in the layout; ``ids[rows]`` are the keys), best first, ties by key.
        Exact tables, or re-scoring with ``k * rescore_factor >=`` the number
        of searchable documents, give exactly the popcount kernels' top-k.
    """
    ids, norms_arg, mask_arg, n_live, threads = _check_common(layout, k, ids, norms, mask, threads)
    query_codes = np.ascontiguousarray(query_codes)
    if query_codes.ndim != 3 or query_codes.shape[2] != words_per_plane(layout.m):
        raise ValueError(
            f"query codes must have shape (nq, Pq, {words_per_plane(layout.m)}), got {query_codes.shape}"
        )
    query_weights = np.ascontiguousarray(query_weights, dtype=np.float32)
    tables = symmetric_tables(query_codes, query_weights, layout.m)
    nq = query_codes.shape[0]
    kk = min(int(k), n_live)
    if kk == 0 or nq == 0:
        return _empty(nq, kk)
    if tables.exact or rescore_factor is None:
        return _scan(layout, tables, kk, ids, norms_arg, mask_arg, threads)
    if int(rescore_factor) < 1:
        raise ValueError(f"rescore_factor must be a positive integer or None, got {rescore_factor}")
    kc = min(kk * int(rescore_factor), n_live)
    _, cand = _scan(layout, tables, kc, ids, norms_arg, mask_arg, threads)
    # Gather the candidates' codes into a small array and score them by popcounts.
    flat = cand.reshape(-1)
    db = layout.codes_of(flat)
    db_weights = layout.weights_of(flat)
    local = np.arange(flat.shape[0], dtype=np.int64).reshape(nq, kc)
    exact = np.empty((nq, kc), dtype=np.float32)
    score_rows(
        db,
        db_weights,
        1,
        query_codes,
        query_weights,
        layout.m,
        norms_arg[flat] if norms_arg.shape[0] else norms_arg,
        local,
        exact,
    )
    return select_rows(exact, cand, ids, kk)


def fastscan_topk_float(
    layout: FastScanCodes,
    queries: np.ndarray,
    k: int,
    ids: np.ndarray | None = None,
    norms: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    threads: int | None = None,
    rescore_factor: int | None = 4,
    float_tables: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` for float queries (asymmetric scoring) by quantized fast-scan tables.

    Args:
        layout, k, ids, norms, mask, threads: as :func:`fastscan_topk`.
        queries: float ``(nq, m)``.
        rescore_factor: scan for ``k * rescore_factor`` candidates, then score
            them exactly in float32 by per-byte float tables (bit-identical to
            ``BinaryIndex.search_float(method="tables")``); ``None`` returns
            the quantized scores.
        float_tables: ``index.codes.byte_tables(queries)`` when the caller has
            them already (they re-score the candidates); built here otherwise.

    Returns:
        ``(scores, rows)`` as :func:`fastscan_topk`. Exact top-k (against the
        float query) when ``k * rescore_factor >=`` the searchable documents;
        otherwise its recall depends on the factor (``benchmarks/sdc.py``).
    """
    ids, norms_arg, mask_arg, n_live, threads = _check_common(layout, k, ids, norms, mask, threads)
    x = np.asarray(queries, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != layout.m:
        raise ValueError(f"float queries must have shape (nq, {layout.m}), got {x.shape}")
    tables = quantized_tables(x)
    nq = x.shape[0]
    kk = min(int(k), n_live)
    if kk == 0 or nq == 0:
        return _empty(nq, kk)
    if rescore_factor is None:
        return _scan(layout, tables, kk, ids, norms_arg, mask_arg, threads)
    if int(rescore_factor) < 1:
        raise ValueError(f"rescore_factor must be a positive integer or None, got {rescore_factor}")
    kc = min(kk * int(rescore_factor), n_live)
    _, cand = _scan(layout, tables, kc, ids, norms_arg, mask_arg, threads)
    exact = np.empty((nq, kc), dtype=np.float32)
    score_rows_float_tables(
        layout.blocks,
        layout.scales,
        int(layout.per_document),
        byte_tables(x) if float_tables is None else float_tables,
        norms_arg,
        cand,
        exact,
    )
    return select_rows(exact, cand, ids, kk)
