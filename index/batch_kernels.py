"""Query-blocked batch scans: each block of codes is read once and scored against many queries.

The popcount kernels of :mod:`index.kernels` score one query at a time against
a cached block of documents: one scalar ``popcnt`` per word and pair. Here the
queries of a batch are transposed into groups of ``LANES`` (8 with AVX-512, 4
with AVX2), one uint64 word of each query per SIMD lane, and a document word
is broadcast against them::

    dist[l] = sum_w popcount(Q[w][l] XOR broadcast(d[w]))      l = 0 .. LANES-1

so one vector ``xor`` + ``popcount`` + ``add`` serves ``LANES`` query-document
pairs. LLVM lowers the vector ``ctpop`` to ``vpopcntq`` on CPUs with
AVX-512 VPOPCNTDQ and to the ``vpshufb`` nibble-lookup sequence (+ ``vpsadbw``)
on AVX2; ``tests/test_index/test_index_batch.py`` checks the assembly.

Two forms, both per block of documents and group of queries (an LLVM
intrinsic, :func:`_block_hamming` / :func:`_block_scores`), then a scalar pass
over the few documents that beat some query's worst kept result:

* **Hamming** (1 plane against 1 plane, positive shared weights): integer
  distances compared with each query's largest admitted distance, as
  ``index.kernels.hamming_topk_scan``.
* **Scores** (any planes, weights, norms): per lane the float32 operations of
  ``index.kernels.topk_scan`` in its order, ``s = sum_r b_r * sum_p a_p *
  float32(m - 2 * cnt_pr)`` then ``/ norm``, so scores are bit-identical.

Results equal ``BinaryIndex.search(method="popcount")``: same ids, same scores,
ties by id.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from index.codes import words_per_plane
from index.heap import heap_push
from index.topk import merge_heaps


def _host_features() -> set[str]:
    if os.environ.get("BINSEARCH_FASTSCAN_PORTABLE"):
        return set()
    cpu = numba.core.config.CPU_NAME
    if cpu not in (None, "", "host"):
        return set()  # compiling for a named (possibly older) CPU: stay portable
    features = numba.core.config.CPU_FEATURES or llvm_binding.get_host_cpu_features().flatten()
    return {f[1:] for f in features.split(",") if f.startswith("+")}


_FEATURES = _host_features()
#: The popcount path LLVM takes for the vector ``ctpop``: ``"avx512vpopcntdq"``, ``"avx2"``
#: (``vpshufb`` lookups) or ``""`` (no batch kernel on this CPU).
POPCOUNT_PATH = (
    "avx512vpopcntdq"
    if {"avx512f", "avx512vpopcntdq"} <= _FEATURES
    else ("avx2" if "avx2" in _FEATURES else "")
)
#: Queries per SIMD group: one 512-bit register of uint64 words, or a 256-bit one.
LANES = 8 if "avx512f" in _FEATURES else 4
#: Largest ``query planes * words per plane`` (query words held in registers) and
#: document planes the kernels are built for.
MAX_QUERY_WORDS = 32
MAX_DOC_PLANES = 4

_I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
_F32 = ir.FloatType()
_VI64 = ir.VectorType(_I64, LANES)
_VI16 = ir.VectorType(_I16, LANES)
_VF = ir.VectorType(_F32, LANES)
_ZERO_MASK = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)


def batch_supported(m: int, doc_planes: int, query_planes: int) -> bool:
    """Whether the batch kernels take this shape on this CPU."""
    words = words_per_plane(m)
    return (
        bool(POPCOUNT_PATH)
        and 1 <= doc_planes <= MAX_DOC_PLANES
        and 1 <= query_planes * words <= MAX_QUERY_WORDS
    )


def _marker(count: int) -> tuple:
    return (np.uint64(0),) * count


def _args(context, builder, sig, args, names):
    """``{name: llvm value}``: arrays as their structs, scalars cast to int64/float32/bool."""
    out = {}
    for name, ty, val in zip(names, sig.args, args, strict=True):
        if isinstance(ty, types.Array):
            out[name] = context.make_array(ty)(context, builder, val)
        elif isinstance(ty, types.Float):
            out[name] = context.cast(builder, val, ty, types.float32)
        elif isinstance(ty, types.Boolean):
            out[name] = val
        elif isinstance(ty, types.Integer):
            out[name] = context.cast(builder, val, ty, types.int64)
        else:
            out[name] = None  # a marker: its count is a compile-time constant
    return out


def _splat(builder, value, vtype):
    one = builder.insert_element(ir.Constant(vtype, None), value, ir.Constant(_I64, 0))
    return builder.shuffle_vector(one, ir.Constant(vtype, None), _ZERO_MASK)


def _vload(builder, arr, offset, vtype, align=8):
    ptr = builder.bitcast(builder.gep(arr.data, [offset]), vtype.as_pointer())
    return builder.load(ptr, align=align)


def _vstore(builder, value, arr, offset, align=2):
    ptr = builder.bitcast(builder.gep(arr.data, [offset]), value.type.as_pointer())
    builder.store(value, ptr, align=align)


def _doc_loop(builder, lo, hi, body):
    """``for i in range(lo, hi): body(i)``, accumulating the i32 returned by body with OR."""
    any_hit = builder.alloca(_I32)
    builder.store(ir.Constant(_I32, 0), any_hit)
    step = ir.Constant(_I64, 1)
    with cgutils.for_range_slice(builder, lo, hi, step, intp=_I64) as (i, _):
        bits = body(i)
        builder.store(builder.or_(builder.load(any_hit), bits), any_hit)
    return builder.load(any_hit)


def _popcount_sum(builder, query_vectors, db, base, words):
    """``sum_w ctpop(query_vectors[w] XOR broadcast(db[base + w]))`` as <LANES x i64>."""
    ctpop = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_VI64, [_VI64]), f"llvm.ctpop.v{LANES}i64"
    )
    acc = None
    for w in range(words):
        d = builder.load(builder.gep(db.data, [builder.add(base, ir.Constant(_I64, w))]))
        x = builder.xor(query_vectors[w], _splat(builder, d, _VI64))
        c = builder.call(ctpop, [x])
        acc = c if acc is None else builder.add(acc, c)
    return acc


@intrinsic
def _block_hamming(
    typingctx, db, row_stride, lo, hi, words, qt, q_off, limits, lim_off, dist, hits
):
    """Hamming distances of documents ``lo..hi`` against one group of ``LANES`` queries.

    ``db`` flat uint64 codes (document ``i`` at ``i * row_stride``), ``words``
    a marker of the word count, ``qt`` flat uint64 transposed queries (word
    ``w`` of lane ``l`` at ``q_off + LANES * w + l``), ``limits`` int64 largest
    admitted distance per lane at ``lim_off``. Writes ``dist`` int16
    ``[(i - lo) * LANES + l]`` and ``hits`` int32 ``[i - lo]`` (bit ``l``: lane
    ``l`` admits document ``i``); returns the OR of all hit bits.
    """
    n_words = words.count
    sig = types.int32(db, row_stride, lo, hi, words, qt, q_off, limits, lim_off, dist, hits)
    names = ("db", "stride", "lo", "hi", "words", "qt", "q_off", "lim", "lim_off", "dist", "hits")

    def codegen(context, builder, signature, args):
        a = _args(context, builder, signature, args, names)
        qv = [
            _vload(builder, a["qt"], builder.add(a["q_off"], ir.Constant(_I64, LANES * w)), _VI64)
            for w in range(n_words)
        ]
        limit = _vload(builder, a["lim"], a["lim_off"], _VI64)

        def body(i):
            acc = _popcount_sum(builder, qv, a["db"], builder.mul(i, a["stride"]), n_words)
            t = builder.sub(i, a["lo"])
            _vstore(builder, builder.trunc(acc, _VI16), a["dist"], builder.mul(t, _lanes()))
            hit = builder.icmp_signed("<=", acc, limit)
            bits = builder.zext(builder.bitcast(hit, ir.IntType(LANES)), _I32)
            builder.store(bits, builder.gep(a["hits"].data, [t]))
            return bits

        return _doc_loop(builder, a["lo"], a["hi"], body)

    return sig, codegen


def _lanes():
    return ir.Constant(_I64, LANES)


@intrinsic
def _block_scores(
    typingctx,
    db,
    row_stride,
    lo,
    hi,
    shape,
    qt,
    q_off,
    at,
    a_off,
    dbw,
    w_stride,
    norms,
    use_norms,
    m,
    thresholds,
    th_off,
    out,
    hits,
):
    """Scores of documents ``lo..hi`` against one group of ``LANES`` queries (all plane pairs).

    ``shape`` is a marker tuple ``(doc_planes, query_planes, words)`` of
    markers; ``qt`` holds word ``w`` of plane ``p`` of lane ``l`` at
    ``q_off + LANES * (p * words + w) + l``, ``at`` the float32 query weights
    ``a_off + LANES * p + l``; ``dbw`` flat float32 document plane weights (row
    ``i`` at ``i * w_stride``, ``w_stride`` 0 for shared weights); ``norms``
    float32 divisors if ``use_norms``; ``thresholds`` float32 per lane. Writes
    ``out`` float32 ``[(i - lo) * LANES + l]`` and ``hits`` int32 (bit ``l``:
    score ``>= thresholds[l]``); returns the OR of all hit bits.
    """
    n_doc, n_query, n_words = (t.count for t in shape.types)
    sig = types.int32(
        db,
        row_stride,
        lo,
        hi,
        shape,
        qt,
        q_off,
        at,
        a_off,
        dbw,
        w_stride,
        norms,
        use_norms,
        m,
        thresholds,
        th_off,
        out,
        hits,
    )
    names = (
        "db",
        "stride",
        "lo",
        "hi",
        "shape",
        "qt",
        "q_off",
        "at",
        "a_off",
        "dbw",
        "w_stride",
        "norms",
        "use_norms",
        "m",
        "th",
        "th_off",
        "out",
        "hits",
    )

    def codegen(context, builder, signature, args):
        a = _args(context, builder, signature, args, names)
        qv = [
            [
                _vload(
                    builder,
                    a["qt"],
                    builder.add(a["q_off"], ir.Constant(_I64, LANES * (p * n_words + w))),
                    _VI64,
                )
                for w in range(n_words)
            ]
            for p in range(n_query)
        ]
        weights = [
            _vload(builder, a["at"], builder.add(a["a_off"], ir.Constant(_I64, LANES * p)), _VF, 4)
            for p in range(n_query)
        ]
        threshold = _vload(builder, a["th"], a["th_off"], _VF, 4)
        m_vec = _splat(builder, a["m"], _VI64)
        zero = ir.Constant(_VF, None)

        def body(i):
            s = zero
            for r in range(n_doc):
                base = builder.add(builder.mul(i, a["stride"]), ir.Constant(_I64, r * n_words))
                acc = zero
                for p in range(n_query):
                    cnt = _popcount_sum(builder, qv[p], a["db"], base, n_words)
                    x = builder.sub(m_vec, builder.add(cnt, cnt))
                    acc = builder.fadd(acc, builder.fmul(weights[p], builder.sitofp(x, _VF)))
                w_off = builder.add(builder.mul(i, a["w_stride"]), ir.Constant(_I64, r))
                b = builder.load(builder.gep(a["dbw"].data, [w_off]))
                s = builder.fadd(s, builder.fmul(_splat(builder, b, _VF), acc))
            with builder.if_else(a["use_norms"]) as (then, otherwise):
                with then:
                    nrm = builder.load(builder.gep(a["norms"].data, [i]))
                    divided = builder.fdiv(s, _splat(builder, nrm, _VF))
                    then_block = builder.basic_block
                with otherwise:
                    else_block = builder.basic_block
            phi = builder.phi(_VF)
            phi.add_incoming(divided, then_block)
            phi.add_incoming(s, else_block)
            s = phi
            t = builder.sub(i, a["lo"])
            _vstore(builder, s, a["out"], builder.mul(t, _lanes()), 4)
            # topk_scan skips a score only when s < threshold: NaN or >= is a hit
            hit = builder.fcmp_unordered(">=", s, threshold)
            bits = builder.zext(builder.bitcast(hit, ir.IntType(LANES)), _I32)
            builder.store(bits, builder.gep(a["hits"].data, [t]))
            return bits

        return _doc_loop(builder, a["lo"], a["hi"], body)

    return sig, codegen


# ---------------------------------------------------------------------------
# The scans: chunks of documents per thread, blocks of documents, groups of queries.


@njit(cache=True, nogil=True)
def hamming_batch_scan(
    db: np.ndarray,
    qt: np.ndarray,
    nq: int,
    ids: np.ndarray,
    mask: np.ndarray,
    words,
    block: int,
    lo: int,
    hi: int,
    hs: np.ndarray,
    hr: np.ndarray,
) -> None:
    """Heaps of ``-hamming`` of documents ``lo..hi`` for a batch (as ``hamming_topk_scan``).

    Args:
        db: uint64 ``(n, P, W)`` codes; plane 0 is scanned.
        qt: uint64 ``(G, W, LANES)`` queries transposed in groups (:func:`transpose_queries`).
        nq: real queries (lanes past it are padding).
        ids: int64 ``(n,)``; mask: uint8 ``(n,)`` (0 = skip) or empty.
        words: marker of ``W``; block: documents per block.
        lo, hi: the documents this call scans (one thread's chunk).
        hs, hr: float32 / int64 ``(nq, k)`` heaps, written in place.

    One thread: the caller runs chunks in parallel (the word-count marker must
    stay a compile-time constant, which a ``prange`` body would not keep).
    """
    groups = qt.shape[0]
    k = hs.shape[1]
    stride = db.shape[1] * db.shape[2]
    flat_db = db.reshape(-1)
    flat_q = qt.reshape(-1)
    use_mask = mask.shape[0] > 0
    hr[:] = -1
    hs[:] = -np.inf
    sizes = np.zeros(nq, dtype=np.int64)
    limits = np.full(groups * LANES, -1, dtype=np.int64)  # padding lanes admit nothing
    limits[:nq] = 1 << 30
    dist = np.empty(block * LANES, dtype=np.int16)
    hits = np.empty(block, dtype=np.int32)
    for b0 in range(lo, hi, block):
        b1 = min(hi, b0 + block)
        for g in range(groups):
            q_off = g * qt.shape[1] * LANES
            any_hit = _block_hamming(
                flat_db, stride, b0, b1, words, flat_q, q_off, limits, g * LANES, dist, hits
            )
            if any_hit == 0:
                continue
            for t in range(b1 - b0):
                bits = hits[t]
                if bits == 0:
                    continue
                i = b0 + t
                if use_mask and mask[i] == 0:
                    continue
                for lane in range(LANES):
                    if (bits >> lane) & 1 == 0:
                        continue
                    j = g * LANES + lane
                    d = np.int64(dist[t * LANES + lane])
                    if d > limits[j]:
                        continue  # the limit tightened earlier in this block
                    size = heap_push(hs[j], hr[j], ids, sizes[j], np.float32(-d), i)
                    sizes[j] = size
                    if size == k:
                        limits[j] = np.int64(-hs[j][0])


@njit(cache=True, nogil=True)
def score_batch_scan(
    db: np.ndarray,
    db_weights: np.ndarray,
    weight_stride: int,
    shape,
    qt: np.ndarray,
    at: np.ndarray,
    nq: int,
    m: int,
    ids: np.ndarray,
    norms: np.ndarray,
    mask: np.ndarray,
    block: int,
    lo: int,
    hi: int,
    hs: np.ndarray,
    hr: np.ndarray,
) -> None:
    """Top-k heaps of exact scores of documents ``lo..hi`` (as ``index.kernels.topk_scan``).

    Args:
        db: uint64 ``(n, P, W)`` codes; the first ``doc_planes`` planes are scored.
        db_weights: float32 ``(n, P)`` with ``weight_stride = 1`` or ``(1, P)`` shared (0).
        shape: marker ``(doc_planes, query_planes, words)`` (:func:`batch_topk`).
        qt: uint64 ``(G, Pq, W, LANES)`` and at: float32 ``(G, Pq, LANES)``,
            the queries and their weights transposed in groups.
        nq: real queries; m: bits per plane; ids, mask: as :func:`hamming_batch_scan`.
        norms: float32 ``(n,)`` divisors, or empty.
        block: documents per block; lo, hi, hs, hr: as :func:`hamming_batch_scan`.
    """
    groups = qt.shape[0]
    k = hs.shape[1]
    stride = db.shape[1] * db.shape[2]
    w_stride = weight_stride * db_weights.shape[1]
    flat_db = db.reshape(-1)
    flat_q = qt.reshape(-1)
    flat_a = at.reshape(-1)
    flat_w = db_weights.reshape(-1)
    use_norms = norms.shape[0] > 0
    use_mask = mask.shape[0] > 0
    q_group = qt.shape[1] * qt.shape[2] * LANES
    a_group = at.shape[1] * LANES
    hr[:] = -1
    hs[:] = -np.inf
    sizes = np.zeros(nq, dtype=np.int64)
    thresholds = np.full(groups * LANES, np.inf, dtype=np.float32)  # padding: no hits
    thresholds[:nq] = -np.inf
    out = np.empty(block * LANES, dtype=np.float32)
    hits = np.empty(block, dtype=np.int32)
    for b0 in range(lo, hi, block):
        b1 = min(hi, b0 + block)
        for g in range(groups):
            any_hit = _block_scores(
                flat_db,
                stride,
                b0,
                b1,
                shape,
                flat_q,
                g * q_group,
                flat_a,
                g * a_group,
                flat_w,
                w_stride,
                norms,
                use_norms,
                m,
                thresholds,
                g * LANES,
                out,
                hits,
            )
            if any_hit == 0:
                continue
            for t in range(b1 - b0):
                bits = hits[t]
                if bits == 0:
                    continue
                i = b0 + t
                if use_mask and mask[i] == 0:
                    continue
                for lane in range(LANES):
                    if (bits >> lane) & 1 == 0:
                        continue
                    j = g * LANES + lane
                    s = out[t * LANES + lane]
                    if s < thresholds[j]:
                        continue
                    size = heap_push(hs[j], hr[j], ids, sizes[j], s, i)
                    sizes[j] = size
                    if size == k:
                        thresholds[j] = hs[j][0]


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """Threads that run a batch's chunks (one per numba thread), started on first use."""
    with _POOL_LOCK:
        if not _POOL:
            workers = int(numba.config.NUMBA_NUM_THREADS)
            _POOL.append(ThreadPoolExecutor(workers, thread_name_prefix="binsearch-batch"))
        return _POOL[0]


def transpose_queries(queries: np.ndarray) -> np.ndarray:
    """uint64 ``(nq, Pq, W)`` as ``(G, Pq, W, LANES)``, ``G = ceil(nq / LANES)``, zero-padded."""
    nq, planes, words = queries.shape
    groups = -(-nq // LANES)
    padded = np.zeros((groups * LANES, planes, words), dtype=np.uint64)
    padded[:nq] = queries
    return np.ascontiguousarray(padded.reshape(groups, LANES, planes, words).transpose(0, 2, 3, 1))


def batch_topk(
    db: np.ndarray,
    db_weights: np.ndarray,
    weight_stride: int,
    doc_planes: int,
    queries: np.ndarray,
    query_weights: np.ndarray,
    m: int,
    ids: np.ndarray,
    norms: np.ndarray,
    mask: np.ndarray,
    k: int,
    threads: int,
    hamming_ok: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of one segment for a batch: ``(scores float32 (nq, k), rows int64 (nq, k))``.

    Args:
        db: uint64 ``(n, P, W)`` codes; ``doc_planes <= P`` planes are scored.
        db_weights, weight_stride, norms, mask, ids: as ``index.kernels.topk_scan``.
        queries: uint64 ``(nq, Pq, W)``; query_weights: float32 ``(nq, Pq)``.
        m: bits per plane; k: results per query (at most the searchable rows).
        threads: threads splitting the documents.
        hamming_ok: the document weights are shared (then one plane against one
            plane with positive weights ranks by Hamming distance alone).

    Same results as the popcount kernels, bit for bit; needs :func:`batch_supported`.
    """
    n, planes, words = db.shape
    nq, query_planes = queries.shape[0], queries.shape[1]
    chunks = max(1, min(threads, n))
    heap_scores = np.empty((chunks, nq, k), dtype=np.float32)
    heap_rows = np.empty((chunks, nq, k), dtype=np.int64)
    qt = transpose_queries(queries)
    scale = query_weights[:, 0] * db_weights[0, 0]
    hamming = (
        hamming_ok
        and doc_planes == 1
        and query_planes == 1
        and not norms.shape[0]
        and bool(np.all(scale > 0))
    )
    # ~16 KB of codes per block stays in L1 while every query group scans it.
    block = max(64, 16384 // (8 * doc_planes * words))
    bounds = [
        (min(n, c * -(-n // chunks)), min(n, (c + 1) * -(-n // chunks))) for c in range(chunks)
    ]
    if hamming:
        qt1 = np.ascontiguousarray(qt[:, 0])
        marker = _marker(words)

        def run(c: int) -> None:
            lo, hi = bounds[c]
            hamming_batch_scan(
                db, qt1, nq, ids, mask, marker, block, lo, hi, heap_scores[c], heap_rows[c]
            )
    else:
        groups = qt.shape[0]
        at = np.zeros((groups * LANES, query_planes), dtype=np.float32)
        at[:nq] = query_weights
        at = np.ascontiguousarray(at.reshape(groups, LANES, query_planes).transpose(0, 2, 1))
        shape = (_marker(doc_planes), _marker(query_planes), _marker(words))
        weights = np.ascontiguousarray(db_weights, dtype=np.float32)

        def run(c: int) -> None:
            lo, hi = bounds[c]
            score_batch_scan(
                db,
                weights,
                weight_stride,
                shape,
                qt,
                at,
                nq,
                m,
                ids,
                norms,
                mask,
                block,
                lo,
                hi,
                heap_scores[c],
                heap_rows[c],
            )

    if chunks == 1:
        run(0)
    else:  # the kernels release the GIL: one Python thread per chunk
        list(_pool().map(run, range(chunks)))
    scores, rows = merge_heaps(heap_scores, heap_rows, ids, k)
    if hamming:  # -hamming back to a * b * (m - 2 * hamming), as the popcount kernels
        scores = scale[:, None] * (np.float32(m) + np.float32(2) * scores)
        scores = scores.astype(np.float32, copy=False)
    return scores, rows
