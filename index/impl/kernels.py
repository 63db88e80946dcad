"""Numba scan kernels over packed codes (layout: :mod:`index.codes`).

Every kernel is a small pure function with ``cache=True``. The score of a query
code ``q`` (planes ``p``, weights ``a_p``) against a document code ``d``
(planes ``r``, weights ``b_r``), both of ``m`` bits per plane, is the inner
product of their values::

    <v_q, v_d> = sum_{p,r} a_p * b_r * (m - 2 * popcount(q_p XOR d_r))

With one plane and unit weights this is ``m - 2 * hamming(q, d)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from index.impl.heap import heap_push


@intrinsic
def popcount64(typingctx, x):
    """Set bits of a 64-bit word via LLVM's ``ctpop``: one ``popcnt`` instruction on x86-64.

    Returns int64 (not uint64) so that sums with ordinary integers stay integers:
    numba unifies int64 + uint64 to float64.
    """
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None
    sig = types.int64(x)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@njit(cache=True, inline="always")
def plane_popcount(a: np.ndarray, b: np.ndarray) -> int:
    """``popcount(a XOR b)`` over one plane's words (1-d uint64 arrays of equal length)."""
    c = 0
    for w in range(a.shape[0]):
        c += popcount64(a[w] ^ b[w])
    return c


@njit(cache=True, inline="always")
def pair_score(
    queries: np.ndarray,
    j: int,
    query_weights: np.ndarray,
    n_query: int,
    db: np.ndarray,
    i: int,
    db_weights: np.ndarray,
    row: int,
    n_doc: int,
    nw: int,
    m: int,
) -> np.float32:
    """``<v_q, v_d>`` of query ``j`` and document ``i`` over their first planes.

    ``sum_{r < n_doc} b_r * sum_{p < n_query} a_p * (m - 2 * popcount(q_p XOR d_r))``
    with ``a = query_weights[j]``, ``b = db_weights[row]``. The integer
    ``m - 2 * popcount`` comes first, so nothing cancels in float32, and the
    float32 operations run in :func:`topk_scan`'s order: a score is
    bit-identical whichever kernel computed it. Inlined: where the callers pass
    compile-time counts, LLVM unrolls every loop here.
    """
    s = np.float32(0.0)
    for r in range(n_doc):
        acc = np.float32(0.0)
        for p in range(n_query):
            cnt = 0
            for w in range(nw):
                cnt += popcount64(queries[j, p, w] ^ db[i, r, w])
            acc += query_weights[j, p] * np.float32(m - 2 * cnt)
        s += db_weights[row, r] * acc
    return s


@njit(cache=True, parallel=True, nogil=True)
def score_codes(
    db: np.ndarray,
    db_weights: np.ndarray,
    weight_stride: int,
    queries: np.ndarray,
    query_weights: np.ndarray,
    m: int,
    out: np.ndarray,
) -> None:
    """Inner products of query codes against every document code.

    Args:
        db: uint64 ``(n, P, W)`` document codes.
        db_weights: float32 plane weights, ``(n, P)`` per document with
            ``weight_stride = 1``, or one shared ``(1, P)`` row with ``weight_stride = 0``.
        queries: uint64 ``(nq, Pq, W)`` query codes.
        query_weights: float32 ``(nq, Pq)``.
        m: bits per plane.
        out: float32 ``(nq, n)``, written in place.

    Parallel over documents so that one query already uses every core; the
    query loop is inside so a block of document words is reused from cache.
    """
    n, n_planes, nw = db.shape[0], db.shape[1], db.shape[2]
    nq, q_planes = queries.shape[0], queries.shape[1]
    for i in prange(n):
        row = i * weight_stride
        for j in range(nq):
            out[j, i] = pair_score(
                queries, j, query_weights, q_planes, db, i, db_weights, row, n_planes, nw, m
            )


@njit(cache=True, nogil=True, inline="always")
def code_norm(db: np.ndarray, i: int, db_weights: np.ndarray, row: int, m: int) -> float:
    """Euclidean norm of code ``i``'s values.

    ``||v||^2 = sum_{p,r} w_p w_r (m - 2 popcount(d_p XOR d_r))``: the same
    plane-pair identity as the score, applied to a code and itself.
    """
    s = 0.0
    for p in range(db.shape[1]):
        for r in range(db.shape[1]):
            c = plane_popcount(db[i, p], db[i, r])
            s += db_weights[row, p] * db_weights[row, r] * (m - 2 * c)
    return np.sqrt(max(s, 0.0))


@njit(cache=True, parallel=True, nogil=True)
def code_norms(db: np.ndarray, db_weights: np.ndarray, weight_stride: int, m: int) -> np.ndarray:
    """Euclidean norms of code values, float32 ``(n,)`` (:func:`code_norm` per row, in parallel)."""
    out = np.empty(db.shape[0], dtype=np.float32)
    for i in prange(db.shape[0]):
        out[i] = code_norm(db, i, db_weights, i * weight_stride, m)
    return out


@njit(cache=True, nogil=True)
def code_norms_serial(
    db: np.ndarray, db_weights: np.ndarray, weight_stride: int, m: int
) -> np.ndarray:
    """:func:`code_norms` on the calling thread: a few rows (one write) cost no thread wake-up."""
    out = np.empty(db.shape[0], dtype=np.float32)
    for i in range(db.shape[0]):
        out[i] = code_norm(db, i, db_weights, i * weight_stride, m)
    return out


# ---------------------------------------------------------------------------
# Fused scan + top-k, specialised per word count.


def word_count(marker) -> int:  # pragma: no cover - replaced by the overload in numba
    """Words per plane carried by ``marker``: a tuple's length, or an int itself."""
    return len(marker) if isinstance(marker, tuple) else int(marker)


@overload(word_count, inline="always")
def _word_count_overload(marker):
    # A UniTuple marker makes the word count a compile-time constant, so LLVM
    # fully unrolls the popcount loop for that code size (one specialisation per
    # word count, each cached on disk); an int marker keeps one generic kernel.
    if isinstance(marker, types.UniTuple):
        count = marker.count
        return lambda marker: count
    if isinstance(marker, types.Integer):
        return lambda marker: marker
    return None


#: Word counts (bits / 64) that get their own unrolled kernel: 128..1024-bit planes.
SPECIALISED_WORDS = (2, 4, 6, 8, 12, 16)


def words_marker(n_words: int) -> tuple | int:
    """The ``marker`` argument selecting the kernel specialisation for ``n_words``."""
    if n_words in SPECIALISED_WORDS:
        return (np.uint64(0),) * n_words
    return int(n_words)


#: Plane counts that get their own unrolled loops, on the document and on the query side
#: independently (when the word count is specialised too); other counts take generic loops.
SPECIALISED_PLANES = (1, 2, 4)


def plane_markers(doc_planes: int, query_planes: int, n_words: int) -> tuple:
    """``(doc, query)`` plane-count markers for :func:`topk_scan` (see :func:`words_marker`).

    Each side's count in :data:`SPECIALISED_PLANES` becomes a compile-time
    constant when the word count is specialised: e.g. a 4-plane query sliced
    from a float query against 1-plane codes unrolls to 4 x W popcounts. Each
    combination is one more compiled (and disk-cached) kernel, built on first use.
    """

    def marker(planes: int) -> tuple | int:
        if planes in SPECIALISED_PLANES and n_words in SPECIALISED_WORDS:
            return (np.uint64(0),) * planes
        return int(planes)

    return marker(doc_planes), marker(query_planes)


@njit(cache=True, inline="always")
def load_query(
    queries: np.ndarray, query_weights: np.ndarray, j: int, q: np.ndarray, a: np.ndarray
) -> None:
    """Query ``j``'s words into ``q`` ``(Pq, W)`` and its plane weights into ``a`` ``(Pq,)``."""
    for p in range(q.shape[0]):
        a[p] = query_weights[j, p]
        for w in range(q.shape[1]):
            q[p, w] = queries[j, p, w]


@njit(cache=True, inline="always")
def offer_block(
    buf: np.ndarray,
    b0: int,
    b1: int,
    hs: np.ndarray,
    hr: np.ndarray,
    ids: np.ndarray,
    size: int,
    threshold: np.float32,
    mask: np.ndarray,
    k: int,
) -> tuple[int, np.float32]:
    """Offer scores ``buf[i - b0]`` of rows ``b0..b1`` to one query's heap; ``(size, threshold)`` after.

    A score below the worst kept one (``threshold``, once the heap holds ``k``)
    or a masked row (``mask`` uint8, 0 = skip; empty for none) is rejected by
    one comparison; the rest go through :func:`index.impl.heap.heap_push`.
    """
    use_mask = mask.shape[0] > 0
    for i in range(b0, b1):
        s = buf[i - b0]
        if s < threshold or (use_mask and mask[i] == 0):
            continue
        size = heap_push(hs, hr, ids, size, s, i)
        if size == k:
            threshold = hs[0]
    return size, threshold


@njit(cache=True, parallel=True, nogil=True)
def topk_scan(
    db: np.ndarray,
    db_weights: np.ndarray,
    weight_stride: int,
    doc_planes,
    queries: np.ndarray,
    query_weights: np.ndarray,
    query_planes,
    m: int,
    ids: np.ndarray,
    norms: np.ndarray,
    mask: np.ndarray,
    marker,
    heap_scores: np.ndarray,
    heap_rows: np.ndarray,
) -> None:
    """Scan every document code and keep per-chunk top-k heaps.

    Args:
        db: uint64 ``(n, P, W)`` document codes.
        db_weights: float32 ``(n, P)`` with ``weight_stride = 1``, or ``(1, P)``
            shared with ``weight_stride = 0``.
        doc_planes: marker (see :func:`plane_markers`) of how many planes of each
            document to score, ``<= P`` (1 for the first stage of a cascade).
        queries: uint64 ``(nq, Pq, W)``; query_weights float32 ``(nq, Pq)``.
        query_planes: marker of ``Pq``.
        m: bits per plane.
        ids: int64 ``(n,)`` keys (tie-break).
        norms: float32 ``(n,)`` divisors of the score, or empty for none.
        mask: uint8 ``(n,)``, 0 = skip the document; empty for no mask.
        marker: :func:`words_marker` of ``W``.
        heap_scores: float32 ``(C, nq, k)`` and heap_rows int64 ``(C, nq, k)``,
            written in place: chunk ``c`` of the database yields heap
            ``[c, j]`` for query ``j``; unused slots keep row -1.

    The database is split into ``C`` contiguous chunks, one per thread, so one
    query already uses every core. Inside a chunk, documents go in blocks of
    about 16 KB and every query scans the block while it is in L1: a batch of
    queries reads main memory once. Per block and query, pass 1 scores the
    documents into a small buffer with the query's words copied into a local
    array (no call inside the loop, so nothing forces them to be reloaded per
    document; the plane-pair loops fully unrolled when their counts are
    compile-time constants), and pass 2 offers the few documents that beat the
    worst kept score to the heap (:func:`offer_block`), so the scoring loop
    holds no call. The arithmetic is :func:`pair_score`'s, in its order.
    """
    n = db.shape[0]
    nq = queries.shape[0]
    n_chunks, k = heap_scores.shape[0], heap_scores.shape[2]
    nw = word_count(marker)
    n_doc = word_count(doc_planes)
    n_query = word_count(query_planes)
    use_norms = norms.shape[0] > 0
    block = max(16, 2048 // (n_doc * nw))
    chunk = (n + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = min(n, c * chunk)
        hi = min(n, lo + chunk)
        hs = heap_scores[c]
        hr = heap_rows[c]
        hr[:] = -1
        hs[:] = -np.inf
        sizes = np.zeros(nq, dtype=np.int64)
        thresholds = np.full(nq, -np.inf, dtype=np.float32)
        q = np.empty((n_query, nw), dtype=np.uint64)
        a = np.empty(n_query, dtype=np.float32)
        buf = np.empty(block, dtype=np.float32)
        for b0 in range(lo, hi, block):
            b1 = min(hi, b0 + block)
            for j in range(nq):
                load_query(queries, query_weights, j, q, a)
                # Pass 1: scores of the block (pair_score's arithmetic, query words local).
                for i in range(b0, b1):
                    row = i * weight_stride
                    s = np.float32(0.0)
                    for r in range(n_doc):
                        acc = np.float32(0.0)
                        for p in range(n_query):
                            cnt = 0
                            for w in range(nw):
                                cnt += popcount64(q[p, w] ^ db[i, r, w])
                            acc += a[p] * np.float32(m - 2 * cnt)
                        s += db_weights[row, r] * acc
                    if use_norms:
                        s = s / norms[i]
                    buf[i - b0] = s
                # Pass 2: the worst kept score rejects most documents in one comparison.
                sizes[j], thresholds[j] = offer_block(
                    buf, b0, b1, hs[j], hr[j], ids, sizes[j], thresholds[j], mask, k
                )


@njit(cache=True, parallel=True, nogil=True)
def score_rows(
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
    """Scores of given document rows per query (re-ranking), all planes.

    Args:
        db, db_weights, weight_stride, queries, query_weights, m, norms: as in
            :func:`topk_scan`.
        rows: int64 ``(nq, c)`` storage rows to score for each query; -1 = none.
        out: float32 ``(nq, c)``, written in place (``-inf`` where ``rows`` is -1).
    """
    nq, q_planes = queries.shape[0], queries.shape[1]
    n_planes, nw = db.shape[1], db.shape[2]
    use_norms = norms.shape[0] > 0
    for j in prange(nq):
        for t in range(rows.shape[1]):
            i = rows[j, t]
            if i < 0:
                out[j, t] = -np.inf
                continue
            row = i * weight_stride
            s = pair_score(
                queries, j, query_weights, q_planes, db, i, db_weights, row, n_planes, nw, m
            )
            if use_norms:
                s = s / norms[i]
            out[j, t] = s


@njit(cache=True, parallel=True, nogil=True)
def hamming_topk_scan(
    db: np.ndarray,
    queries: np.ndarray,
    ids: np.ndarray,
    mask: np.ndarray,
    marker,
    heap_scores: np.ndarray,
    heap_rows: np.ndarray,
) -> None:
    """:func:`topk_scan` for one plane on each side and a positive shared weight.

    Then the score ``a * b * (m - 2 * hamming)`` ranks exactly as ``-hamming``,
    so this kernel keeps heaps of ``-hamming`` (exact in float32) and does
    integer work only: per document ``W`` popcounts and one comparison with the
    worst kept distance (like faiss's ``HammingComputer``). Candidates that pass
    are noted and pushed after the block, so the distance loop holds no call
    and stores only the few candidates. The caller turns ``-hamming`` into scores.

    Args: as :func:`topk_scan`, with ``db`` ``(n, 1, W)`` and ``queries`` ``(nq, 1, W)``.
    """
    n = db.shape[0]
    nq = queries.shape[0]
    n_chunks, k = heap_scores.shape[0], heap_scores.shape[2]
    nw = word_count(marker)
    use_mask = mask.shape[0] > 0
    block = max(16, 2048 // nw)
    chunk = (n + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = min(n, c * chunk)
        hi = min(n, lo + chunk)
        hs = heap_scores[c]
        hr = heap_rows[c]
        hr[:] = -1
        hs[:] = -np.inf
        sizes = np.zeros(nq, dtype=np.int64)
        limits = np.full(nq, 1 << 30, dtype=np.int64)  # largest distance still admitted
        cand_rows = np.empty(block, dtype=np.int64)
        cand_dist = np.empty(block, dtype=np.int64)
        query = np.empty(nw, dtype=np.uint64)
        for b0 in range(lo, hi, block):
            b1 = min(hi, b0 + block)
            for j in range(nq):
                for w in range(nw):
                    query[w] = queries[j, 0, w]
                limit = limits[j]
                # Pass 1 only notes candidates: no call in the loop, so nothing
                # forces the query words to be reloaded for every document.
                found = 0
                for i in range(b0, b1):
                    cnt = 0
                    for w in range(nw):
                        cnt += popcount64(query[w] ^ db[i, 0, w])
                    if cnt <= limit:
                        cand_rows[found] = i
                        cand_dist[found] = cnt
                        found += 1
                # Pass 2: the few candidates go through the heap (and the mask).
                size = sizes[j]
                hsj = hs[j]
                hrj = hr[j]
                for t in range(found):
                    cnt = cand_dist[t]
                    i = cand_rows[t]
                    if cnt > limit or (use_mask and mask[i] == 0):
                        continue
                    size = heap_push(hsj, hrj, ids, size, np.float32(-cnt), i)
                    if size == k:
                        limit = np.int64(-hsj[0])
                sizes[j] = size
                limits[j] = limit


@njit(cache=True, parallel=True, nogil=True)
def table_topk_scan(
    db_bytes: np.ndarray,
    db_weights: np.ndarray,
    weight_stride: int,
    tables: np.ndarray,
    ids: np.ndarray,
    norms: np.ndarray,
    mask: np.ndarray,
    heap_scores: np.ndarray,
    heap_rows: np.ndarray,
) -> None:
    """Top-k by per-query byte tables (BEBR's SDC, and exact float-query scoring).

    ``tables[j, t, v]`` is the inner product of query ``j``'s values on
    dimensions ``8t..8t+7`` with the signs that byte value ``v`` encodes, so

        score(j, d) = sum_r b_dr * sum_t tables[j, t, byte_t(d_r)]

    Args:
        db_bytes: uint8 ``(n, P, 8W)``, the codes viewed as bytes.
        db_weights, weight_stride, ids, norms, mask, heap_scores, heap_rows: as
            in :func:`topk_scan`.
        tables: float32 ``(nq, T, 256)`` with ``T = ceil(m / 8)`` bytes scored.

    A scalar lookup per code byte: kept as the measured alternative to the
    popcount kernels (see ``benchmarks/scan.py``), not as the default.
    """
    n, n_planes = db_bytes.shape[0], db_bytes.shape[1]
    nq, n_bytes = tables.shape[0], tables.shape[1]
    n_chunks, k = heap_scores.shape[0], heap_scores.shape[2]
    use_norms = norms.shape[0] > 0
    use_mask = mask.shape[0] > 0
    chunk = (n + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = min(n, c * chunk)
        hi = min(n, lo + chunk)
        hs = heap_scores[c]
        hr = heap_rows[c]
        hr[:] = -1
        hs[:] = -np.inf
        for j in range(nq):
            size = 0
            hsj = hs[j]
            hrj = hr[j]
            table = tables[j]
            threshold = -np.inf
            for i in range(lo, hi):
                row = i * weight_stride
                s = np.float32(0.0)
                for r in range(n_planes):
                    acc = np.float32(0.0)
                    for t in range(n_bytes):
                        acc += table[t, db_bytes[i, r, t]]
                    s += db_weights[row, r] * acc
                if use_norms:
                    s = s / norms[i]
                if s < threshold or (use_mask and mask[i] == 0):
                    continue
                size = heap_push(hsj, hrj, ids, size, s, i)
                if size == k:
                    threshold = hsj[0]
