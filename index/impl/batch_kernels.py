"""Query-blocked batch scans: each block of codes is read once and scored against many queries.

The popcount kernels of :mod:`index.impl.kernels` score one query at a time against
a cached block of documents: one scalar ``popcnt`` per word and pair. Here the
queries of a batch are transposed into groups of ``L = 8`` (:data:`GROUP`; a
512-bit register holds 8 uint64 words, a 256-bit one 4), one uint64 word of
each query per lane, and a document word is broadcast against them::

    dist[l] = sum_w popcount(Q[w][l] XOR broadcast(d[w]))      l = 0 .. L-1

so one vector ``xor`` + ``popcount`` + ``add`` serves a register's worth of
query-document pairs. LLVM lowers the vector ``ctpop`` to ``vpopcntq`` on CPUs with
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
ties by key.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from index.codes import words_per_plane
from index.impl.heap import heap_push
from index.impl.kernels import pair_score, word_count
from index.impl.simd_ir import LANES, POPCOUNT_PATH  # noqa: F401  (re-exported: tests, benchmarks)
from index.impl.simd_ir import intrinsic_args as _args
from index.impl.simd_ir import offset as _offset
from index.impl.simd_ir import splat as _splat
from index.impl.simd_ir import vload as _vload
from index.impl.simd_ir import vstore as _vstore
from index.impl.topk import merge_heaps

#: Queries per group: 8, one 512-bit register per query word with AVX-512, two 256-bit
#: ones with AVX2. Wider groups hold more registers than the CPU has and pad more
#: lanes (100 queries fill 104 lanes of 8-groups, 128 of 32-groups).
GROUP = 8
#: Largest ``query planes * words per plane`` and document planes the kernels take.
MAX_QUERY_WORDS = 32
MAX_DOC_PLANES = 4

_I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
_F32 = ir.FloatType()


def batch_supported(m: int, doc_planes: int, query_planes: int) -> bool:
    """Whether the batch kernels take this shape on this CPU."""
    words = words_per_plane(m)
    return (
        bool(POPCOUNT_PATH)
        and 1 <= doc_planes <= MAX_DOC_PLANES
        and 1 <= query_planes * words <= MAX_QUERY_WORDS
    )


def group_size(nq: int, query_words: int) -> int:
    """Queries per group for ``nq`` queries of ``query_words`` words: :data:`GROUP`."""
    return GROUP


def _marker(count: int) -> tuple:
    return (np.uint64(0),) * count


def _doc_loop(builder, lo, hi, body):
    """``for i in range(lo, hi): body(i)``, accumulating the i64 returned by body with OR."""
    any_hit = builder.alloca(_I64)
    builder.store(ir.Constant(_I64, 0), any_hit)
    with cgutils.for_range_slice(builder, lo, hi, ir.Constant(_I64, 1), intp=_I64) as (i, _):
        bits = body(i)
        builder.store(builder.or_(builder.load(any_hit), bits), any_hit)
    return builder.load(any_hit)


def _popcount_sum(builder, query_vectors, db, base):
    """``sum_w ctpop(query_vectors[w] XOR broadcast(db[base + w]))`` as <lanes x i64>."""
    vi64 = query_vectors[0].type
    ctpop = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vi64, [vi64]), f"llvm.ctpop.v{vi64.count}i64"
    )
    acc = None
    for w, q in enumerate(query_vectors):
        d = builder.load(builder.gep(db.data, [_offset(builder, base, w)]))
        c = builder.call(ctpop, [builder.xor(q, _splat(builder, d, vi64))])
        acc = c if acc is None else builder.add(acc, c)
    return acc


def _hit_bits(builder, hit, lanes):
    return builder.zext(builder.bitcast(hit, ir.IntType(lanes)), _I64)


@intrinsic
def _block_hamming(
    typingctx, db, row_stride, lo, hi, shape, qt, q_off, limits, lim_off, dist, hits
):
    """Hamming distances of documents ``lo..hi`` against one group of ``L`` queries.

    ``db`` flat uint64 codes (document ``i`` at ``i * row_stride``); ``shape``
    a marker ``(words, L)``; ``qt`` flat uint64 transposed queries (word ``w``
    of lane ``l`` at ``q_off + L * w + l``); ``limits`` int64, the largest
    admitted distance per lane at ``lim_off``. Writes ``dist`` int16
    ``[(i - lo) * L + l]`` and ``hits`` int64 ``[i - lo]`` (bit ``l``: lane
    ``l`` admits document ``i``); returns the OR of all hit bits.
    """
    n_words, lanes = (t.count for t in shape.types)
    vi64 = ir.VectorType(_I64, lanes)
    sig = types.int64(db, row_stride, lo, hi, shape, qt, q_off, limits, lim_off, dist, hits)
    names = ("db", "stride", "lo", "hi", "shape", "qt", "q_off", "lim", "lim_off", "dist", "hits")

    def codegen(context, builder, signature, args):
        a = _args(context, builder, signature, args, names)
        qv = [
            _vload(builder, a["qt"], _offset(builder, a["q_off"], lanes * w), vi64)
            for w in range(n_words)
        ]
        limit = _vload(builder, a["lim"], a["lim_off"], vi64)

        def body(i):
            acc = _popcount_sum(builder, qv, a["db"], builder.mul(i, a["stride"]))
            t = builder.sub(i, a["lo"])
            narrow = builder.trunc(acc, ir.VectorType(_I16, lanes))
            _vstore(builder, narrow, a["dist"], builder.mul(t, ir.Constant(_I64, lanes)))
            bits = _hit_bits(builder, builder.icmp_signed("<=", acc, limit), lanes)
            builder.store(bits, builder.gep(a["hits"].data, [t]))
            return bits

        return _doc_loop(builder, a["lo"], a["hi"], body)

    return sig, codegen


#: Argument names of :func:`_block_scores`; a tuple of names is one tuple argument.
_SCORE_ARGS = (
    "db", "stride", "lo", "hi", "shape", ("qt", "q_off", "at", "a_off"),
    ("th", "th_off", "consts"), ("dbw", "w_stride", "norms", "use_norms"), "hits",
)  # fmt: skip
#: Relative margin of the score filter: far above the float32 rounding of any
#: evaluation order of a score (2**-24 per operation, a few hundred operations at most).
FILTER_EPS = 2.0**-12


@intrinsic
def _block_scores(typingctx, db, stride, lo, hi, shape, group, bounds, doc_weights, hits):
    """Which documents ``lo..hi`` may reach the top-k of one group of ``L`` queries.

    ``shape`` is a marker ``(doc_planes, query_planes, words, L)``. ``group``
    is the query group ``(qt, q_off, at, a_off)``: ``qt`` holds word ``w`` of
    plane ``p`` of lane ``l`` at ``q_off + L * (p * words + w) + l``, ``at``
    the float32 query weights at ``a_off + L * p + l``. ``bounds`` is ``(th,
    th_off, consts)``: float32 thresholds per lane at ``th_off``, and float32
    per lane at ``2 * th_off``: ``m * sum_p a_p``, then ``m * sum_p |a_p|``.
    ``doc_weights`` is ``(dbw, w_stride, norms, use_norms)``: flat float32
    document plane weights (row ``i`` at ``i * w_stride``, 0 for shared
    weights) and float32 divisors if ``use_norms``.

    The score is ``s = sum_r b_r * sum_p a_p * (m - 2 c_pr)`` (over the norm),
    here evaluated with fused multiply-adds (``sum_p a_p c_pr`` first): not
    ``topk_scan``'s rounding, so it only filters. Bit ``l`` of ``hits`` int64
    ``[i - lo]`` is set unless ``s < threshold * norm - margin``, the margin
    ``FILTER_EPS * (|threshold * norm| + sum_r |b_r| * m * sum_p |a_p|)`` (the
    largest magnitude any partial sum can reach) exceeding the rounding of both
    evaluations: a superset of the documents ``topk_scan`` would offer to the
    heap, which the caller scores exactly. Returns the OR of all hit bits.
    """
    n_doc, n_query, n_words, lanes = (t.count for t in shape.types)
    sig = types.int64(db, stride, lo, hi, shape, group, bounds, doc_weights, hits)

    def codegen(context, builder, signature, args):
        a = _args(context, builder, signature, args, _SCORE_ARGS)
        q = _GroupScorer(builder, a, n_doc, n_query, n_words, lanes)

        def body(i):
            s, b_abs = q.score(i)
            bits = q.hit_bits(i, s, b_abs)
            builder.store(bits, builder.gep(a["hits"].data, [builder.sub(i, a["lo"])]))
            return bits

        return _doc_loop(builder, a["lo"], a["hi"], body)

    return sig, codegen


class _GroupScorer:
    """The LLVM IR of :func:`_block_scores` for one query group: loads, then per-document code."""

    def __init__(self, builder, a: dict, n_doc: int, n_query: int, n_words: int, lanes: int):
        self.builder, self.a, self.n_doc, self.lanes = builder, a, n_doc, lanes
        vi64 = ir.VectorType(_I64, lanes)
        self.vf = vf = ir.VectorType(_F32, lanes)
        self.n_words = n_words
        self.qv = [
            [
                _vload(
                    builder, a["qt"], _offset(builder, a["q_off"], lanes * (p * n_words + w)), vi64
                )
                for w in range(n_words)
            ]
            for p in range(n_query)
        ]
        self.weights = [
            _vload(builder, a["at"], _offset(builder, a["a_off"], lanes * p), vf, 4)
            for p in range(n_query)
        ]
        self.threshold = _vload(builder, a["th"], a["th_off"], vf, 4)
        c_off = builder.mul(a["th_off"], ir.Constant(_I64, 2))
        self.a_sum = _vload(builder, a["consts"], c_off, vf, 4)
        self.a_abs = _vload(builder, a["consts"], _offset(builder, c_off, lanes), vf, 4)
        self.fma = self._fn(f"llvm.fma.v{lanes}f32", vf, 3)
        self.fabs = self._fn(f"llvm.fabs.v{lanes}f32", vf, 1)
        self.fabs1 = self._fn("llvm.fabs.f32", _F32, 1)

    def _fn(self, name, ty, n_args):
        return cgutils.get_or_insert_function(
            self.builder.module, ir.FunctionType(ty, [ty] * n_args), name
        )

    def score(self, i):
        """``(s, sum_r |b_r|)`` of document ``i``: the lanes' scores and its weights' magnitude."""
        builder, a, vf, fma = self.builder, self.a, self.vf, self.fma
        minus_two = ir.Constant(vf, [-2.0] * self.lanes)
        s, b_abs = None, None
        for r in range(self.n_doc):
            base = _offset(builder, builder.mul(i, a["stride"]), r * self.n_words)
            dot = None  # sum_p a_p * c_pr
            for qv, weight in zip(self.qv, self.weights, strict=True):
                cnt = builder.sitofp(_popcount_sum(builder, qv, a["db"], base), vf)
                dot = (
                    builder.fmul(weight, cnt)
                    if dot is None
                    else builder.call(fma, [weight, cnt, dot])
                )
            plane = builder.call(fma, [minus_two, dot, self.a_sum])  # sum_p a_p (m - 2 c_pr)
            w_off = _offset(builder, builder.mul(i, a["w_stride"]), r)
            b = builder.load(builder.gep(a["dbw"].data, [w_off]))
            bv = _splat(builder, b, vf)
            s = builder.fmul(bv, plane) if s is None else builder.call(fma, [bv, plane, s])
            b1 = builder.call(self.fabs1, [b])
            b_abs = b1 if b_abs is None else builder.fadd(b_abs, b1)
        return s, b_abs

    def hit_bits(self, i, s, b_abs):
        """Bit ``l`` set unless lane ``l``'s score ``s`` is below its threshold by the margin."""
        builder, a, vf, lanes = self.builder, self.a, self.vf, self.lanes
        eps = ir.Constant(vf, [FILTER_EPS] * lanes)
        tiny = ir.Constant(vf, [2.0**-100] * lanes)  # covers subnormal products
        with builder.if_else(a["use_norms"]) as (then, otherwise):
            with then:
                nrm = builder.load(builder.gep(a["norms"].data, [i]))
                scaled = builder.fmul(self.threshold, _splat(builder, nrm, vf))
                then_block = builder.basic_block
            with otherwise:
                else_block = builder.basic_block
        tn = builder.phi(vf)
        tn.add_incoming(scaled, then_block)
        tn.add_incoming(self.threshold, else_block)
        reach = builder.fadd(
            builder.call(self.fabs, [tn]), builder.fmul(self.a_abs, _splat(builder, b_abs, vf))
        )
        bound = builder.fsub(tn, builder.call(self.fma, [reach, eps, tiny]))
        # NaN anywhere (a zero norm, infinite thresholds) counts as a hit: the caller decides
        return _hit_bits(builder, builder.fcmp_unordered(">=", s, bound), lanes)


# ---------------------------------------------------------------------------
# The scans: one thread's chunk of documents, in blocks, against every group of queries.


@njit(cache=True, nogil=True)
def hamming_batch_scan(
    db: np.ndarray,
    qt: np.ndarray,
    nq: int,
    ids: np.ndarray,
    mask: np.ndarray,
    shape,
    block: int,
    lo: int,
    hi: int,
    hs: np.ndarray,
    hr: np.ndarray,
) -> None:
    """Heaps of ``-hamming`` of documents ``lo..hi`` for a batch (as ``hamming_topk_scan``).

    Args:
        db: uint64 ``(n, P, W)`` codes; plane 0 is scanned.
        qt: uint64 ``(G, W, L)`` queries transposed in groups (:func:`transpose_queries`).
        nq: real queries (lanes past it are padding).
        ids: int64 ``(n,)``; mask: uint8 ``(n,)`` (0 = skip) or empty.
        shape: marker ``(W, L)``; block: documents per block.
        lo, hi: the documents this call scans (one thread's chunk).
        hs, hr: float32 / int64 ``(nq, k)`` heaps, written in place.

    One thread: the caller runs chunks in parallel (the markers must stay
    compile-time constants, which a ``prange`` body would not keep).
    """
    groups, lanes = qt.shape[0], qt.shape[2]
    k = hs.shape[1]
    stride = db.shape[1] * db.shape[2]
    flat_db = db.reshape(-1)
    flat_q = qt.reshape(-1)
    use_mask = mask.shape[0] > 0
    hr[:] = -1
    hs[:] = -np.inf
    sizes = np.zeros(nq, dtype=np.int64)
    limits = np.full(groups * lanes, -1, dtype=np.int64)  # padding lanes admit nothing
    limits[:nq] = 1 << 30
    dist = np.empty(block * lanes, dtype=np.int16)
    hits = np.empty(block, dtype=np.int64)
    for b0 in range(lo, hi, block):
        b1 = min(hi, b0 + block)
        for g in range(groups):
            q_off = g * qt.shape[1] * lanes
            any_hit = _block_hamming(
                flat_db, stride, b0, b1, shape, flat_q, q_off, limits, g * lanes, dist, hits
            )
            if any_hit == 0:
                continue
            for t in range(b1 - b0):
                bits = hits[t]
                if bits == 0 or (use_mask and mask[b0 + t] == 0):
                    continue
                for lane in range(lanes):
                    if (bits >> lane) & 1 == 0:
                        continue
                    j = g * lanes + lane
                    d = np.int64(dist[t * lanes + lane])
                    if d > limits[j]:
                        continue  # the limit tightened earlier in this block
                    size = heap_push(hs[j], hr[j], ids, sizes[j], np.float32(-d), b0 + t)
                    sizes[j] = size
                    if size == k:
                        limits[j] = np.int64(-hs[j][0])


@njit(cache=True, nogil=True)
def score_batch_scan(
    docs: tuple,
    group: tuple,
    shape,
    m: int,
    block: int,
    lo: int,
    hi: int,
    hs: np.ndarray,
    hr: np.ndarray,
) -> None:
    """Top-k heaps of exact scores of documents ``lo..hi`` (as ``index.kernels.topk_scan``).

    Args:
        docs: ``(db, db_weights, weight_stride, ids, norms, mask)``: uint64
            ``(n, P, W)`` codes, of which the first ``doc_planes`` planes are
            scored; float32 weights ``(n, P)`` with ``weight_stride = 1`` or
            ``(1, P)`` shared (0); int64 keys; float32 ``(n,)`` divisors or
            empty; the mask as :func:`hamming_batch_scan`'s.
        group: ``(queries, query_weights, qt, at, consts, nq)``: uint64
            ``(nq, Pq, W)`` and float32 ``(nq, Pq)``, the same transposed in
            groups, ``qt`` uint64 ``(G, Pq, W, L)`` and ``at`` float32 ``(G,
            Pq, L)``, with ``consts`` float32 ``(G, 2, L)`` (``m * sum_p a_p``,
            ``m * sum_p |a_p|``); ``nq`` real queries.
        shape: marker ``(doc_planes, Pq, W, L)`` (:func:`batch_topk`).
        m: bits per plane.
        block, lo, hi, hs, hr: as :func:`hamming_batch_scan`.

    The vector pass (:func:`_block_scores`) only filters; each document it
    lets through is scored by ``index.kernels.pair_score``, ``topk_scan``'s
    operations in its order, so scores are bit-identical.
    """
    db, db_weights, weight_stride, ids, norms, mask = docs
    queries, query_weights, qt, at, consts, nq = group
    groups, lanes = qt.shape[0], qt.shape[3]
    k = hs.shape[1]
    stride = db.shape[1] * db.shape[2]
    w_stride = weight_stride * db_weights.shape[1]
    flat_db = db.reshape(-1)
    flat_q = qt.reshape(-1)
    flat_a = at.reshape(-1)
    flat_w = db_weights.reshape(-1)
    use_norms = norms.shape[0] > 0
    use_mask = mask.shape[0] > 0
    q_group = qt.shape[1] * qt.shape[2] * lanes
    a_group = at.shape[1] * lanes
    hr[:] = -1
    hs[:] = -np.inf
    sizes = np.zeros(nq, dtype=np.int64)
    thresholds = np.full(groups * lanes, np.inf, dtype=np.float32)  # padding: no hits
    thresholds[:nq] = -np.inf
    flat_c = consts.reshape(-1)
    n_doc = word_count(shape[0])
    n_query = word_count(shape[1])
    nw = word_count(shape[2])
    hits = np.empty(block, dtype=np.int64)
    for b0 in range(lo, hi, block):
        b1 = min(hi, b0 + block)
        for g in range(groups):
            any_hit = _block_scores(
                flat_db, stride, b0, b1, shape, (flat_q, g * q_group, flat_a, g * a_group),
                (thresholds, g * lanes, flat_c), (flat_w, w_stride, norms, use_norms), hits,
            )  # fmt: skip
            if any_hit == 0:
                continue
            for t in range(b1 - b0):
                bits = hits[t]
                if bits == 0 or (use_mask and mask[b0 + t] == 0):
                    continue
                for lane in range(lanes):
                    if (bits >> lane) & 1 == 0:
                        continue
                    j = g * lanes + lane
                    if j >= nq:
                        continue  # a padding lane (a lowered bound may admit it)
                    i = b0 + t
                    s = pair_score(
                        queries, j, query_weights, n_query, db, i, db_weights,
                        i * weight_stride, n_doc, nw, m,
                    )  # fmt: skip
                    if use_norms:
                        s = s / norms[i]
                    if s < thresholds[j]:
                        continue
                    size = heap_push(hs[j], hr[j], ids, sizes[j], s, b0 + t)
                    sizes[j] = size
                    if size == k:
                        thresholds[j] = hs[j][0]


_POOL: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """Threads that run a batch's chunks (one per numba thread), started on first use.

    One pool per process id: a forked child inherits the parent's pool object
    but none of its threads, and would wait forever on it.
    """
    pid = os.getpid()
    with _POOL_LOCK:
        pool = _POOL.get(pid)
        if pool is None:
            workers = int(numba.config.NUMBA_NUM_THREADS)
            pool = ThreadPoolExecutor(workers, thread_name_prefix="binsearch-batch")
            _POOL.clear()
            _POOL[pid] = pool
        return pool


def run_chunks(run: Callable[[int], None], chunks: int) -> None:
    """``run(c)`` for ``c`` in ``range(chunks)``: chunk 0 on the calling thread, the others on the pool.

    A chunk still queued when the caller is done with its own (the pool busy
    with another search's chunks) is taken back and run here, so a search
    never waits behind another one's work.
    """
    if chunks == 1:
        run(0)
        return
    pool = _pool()
    others = [pool.submit(run, c) for c in range(1, chunks)]
    run(0)
    for c, future in enumerate(others, start=1):
        if future.cancel():  # not started yet: run it here
            run(c)
        else:
            future.result()


def transpose_queries(values: np.ndarray, lanes: int) -> np.ndarray:
    """``(nq, ...)`` as ``(G, ..., lanes)``, ``G = ceil(nq / lanes)``, zero-padded queries."""
    nq = values.shape[0]
    groups = -(-nq // lanes)
    padded = np.zeros((groups * lanes, *values.shape[1:]), dtype=values.dtype)
    padded[:nq] = values
    grouped = padded.reshape(groups, lanes, *values.shape[1:])
    return np.ascontiguousarray(np.moveaxis(grouped, 1, -1))


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
    n, _, words = db.shape
    nq, query_planes = queries.shape[0], queries.shape[1]
    chunks = max(1, min(threads, n))
    heap_scores = np.empty((chunks, nq, k), dtype=np.float32)
    heap_rows = np.empty((chunks, nq, k), dtype=np.int64)
    lanes = group_size(nq, query_planes * words)
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
    step = -(-n // chunks)
    bounds = [(min(n, c * step), min(n, (c + 1) * step)) for c in range(chunks)]
    if hamming:
        qt = transpose_queries(queries[:, 0], lanes)
        shape = (_marker(words), _marker(lanes))

        def run(c: int) -> None:
            lo, hi = bounds[c]
            hamming_batch_scan(
                db, qt, nq, ids, mask, shape, block, lo, hi, heap_scores[c], heap_rows[c]
            )

    else:
        qt = transpose_queries(queries, lanes)
        at = transpose_queries(query_weights, lanes)
        sums = np.float32(m) * np.stack(
            [query_weights.sum(axis=1), np.abs(query_weights).sum(axis=1)], axis=1
        )
        consts = transpose_queries(sums.astype(np.float32), lanes)
        shape = tuple(_marker(c) for c in (doc_planes, query_planes, words, lanes))
        weights = np.ascontiguousarray(db_weights, dtype=np.float32)
        docs = (db, weights, weight_stride, ids, norms, mask)
        group = (queries, query_weights, qt, at, consts, nq)

        def run(c: int) -> None:
            lo, hi = bounds[c]
            score_batch_scan(docs, group, shape, m, block, lo, hi, heap_scores[c], heap_rows[c])

    run_chunks(run, chunks)  # the kernels release the GIL: one Python thread per chunk
    scores, rows = merge_heaps(heap_scores, heap_rows, ids, k)
    if hamming:  # -hamming back to a * b * (m - 2 * hamming), as the popcount kernels
        scores = scale[:, None] * (np.float32(m) + np.float32(2) * scores)
        scores = scores.astype(np.float32, copy=False)
    return scores, rows
