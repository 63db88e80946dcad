"""A lone query's Hamming scan with the vector popcount: 16 documents per step.

The popcount kernels of :mod:`index.impl.kernels` spend one scalar ``popcnt`` per
word and document (port 1 only on Intel cores: ``W`` cycles per document at
best). The batch kernels of :mod:`index.impl.batch_kernels` put queries in the
SIMD lanes, which a lone query cannot fill. Here the lanes hold the
*documents'* words: 16 consecutive documents (``16 W`` words, contiguous in the
1-plane layout) are XORed with the query repeated 16 times and counted with
one vector ``ctpop`` (``vpopcntq``, 8 words per instruction; ``vpshufb``
lookups on AVX2), then reduced to one distance per document:

1. a document's words fold lane-wise to ``G`` lanes (8 for 8 or 16 words, 4 for 4 or 12,
   2 for 2 or 6);
2. four count vectors are packed into one, 16 bits per count
   (``c0 + c1 << 16 + c2 << 32 + c3 << 48``: shifts and adds, not shuffles,
   which share port 5 with ``vpopcntq``);
3. a shuffle-and-add tree sums each document's lanes: 16 documents' distances
   end up as one vector of 16 int16, compared with the admitted limit in one
   instruction.

About 2.5 vector instructions per document at 512 bits against 8 ``popcnt``
plus their loads and adds. Results (ids and distances) equal
``index.kernels.hamming_topk_scan``'s.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from index.impl.batch_kernels import run_chunks
from index.impl.heap import heap_push
from index.impl.kernels import popcount64
from index.impl.simd_ir import POPCOUNT_PATH
from index.impl.simd_ir import intrinsic_args as _args
from index.impl.simd_ir import vload as _vload
from index.impl.simd_ir import vstore as _vstore
from index.impl.topk import merge_heaps

#: Documents scored per vector step (16 int16 distances fill one 256-bit register).
STEP = 16
#: Words per document the vector form takes (128 to 1024-bit planes; others keep popcnt).
VECTOR_WORDS = (2, 4, 6, 8, 12, 16)
#: Documents per block between two scalar heap passes (~64 KB of 1024-bit codes).
BLOCK = 512

_I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)


def single_supported(n_words: int, planes: int) -> bool:
    """Whether a lone 1-plane query on ``planes``-plane codes of ``n_words`` words takes this kernel.

    Where LLVM has a vector popcount (``vpopcntq`` on AVX-512 VPOPCNTDQ,
    ``vpshufb`` lookups on AVX2), and only for 1-plane codes, whose documents
    are contiguous. The index's chooser still measures it against ``popcnt``.
    """
    return bool(POPCOUNT_PATH) and planes == 1 and n_words in VECTOR_WORDS


def _lanes_per_doc(words: int) -> int:
    """Lanes a document's counts fold to: the largest power of two <= 8 dividing ``words``."""
    return next(g for g in (8, 4, 2, 1) if words % g == 0)


def _shuffle(builder, vec, idx):
    mask = ir.Constant(ir.VectorType(_I32, len(idx)), [int(i) for i in idx])
    return builder.shuffle_vector(vec, ir.Constant(vec.type, None), mask)


def _doc_order(words: int) -> list[int]:
    """Position in the packed result of document ``d`` of a step, for ``d = 0 .. 15``.

    Element ``e`` of the result is lane ``L = e // 4``, field ``f = e % 4``: the
    group ``L`` of ``G`` lanes, from pack vector ``y = L G / 8`` at half ``h``,
    field ``f`` being count vector ``4 y + f``, whose lanes ``h G ..`` belong to
    document ``8 (4 y + f) / G + h``.
    """
    g = _lanes_per_doc(words)
    doc_at = []
    for e in range(STEP):
        lane, field = divmod(e, 4)
        y, h = divmod(lane * g, 8)
        doc_at.append(8 * (4 * y + field) // g + h // g)
    return [doc_at.index(d) for d in range(STEP)]


@intrinsic
def _step_distances(typingctx, db, lo, hi, shape, query, limit, dist, hits):
    """Hamming distances of documents ``lo .. hi`` (a multiple of 16) against one query.

    ``db`` flat uint64 1-plane codes (document ``i`` at ``i * W``); ``shape`` a
    marker ``(W,)``; ``query`` uint64 ``(W,)``; ``limit`` the largest admitted
    distance. Writes ``dist`` int16 ``[i - lo]`` and ``hits`` int64
    ``[(i - lo) / 16]`` (bit ``t``: document ``i + t`` admitted); returns the
    OR of all hit bits.
    """
    (words,) = (t.count for t in shape.types)
    sig = types.int64(db, lo, hi, shape, query, limit, dist, hits)
    names = ("db", "lo", "hi", "shape", "q", "limit", "dist", "hits")
    g = _lanes_per_doc(words)
    order = _doc_order(words)

    def codegen(context, builder, signature, args):
        a = _args(context, builder, signature, args, names)
        vdoc = ir.VectorType(_I64, STEP * words)
        q = _vload(builder, a["q"], ir.Constant(_I64, 0), ir.VectorType(_I64, words))
        pattern = _shuffle(builder, q, [w for _ in range(STEP) for w in range(words)])
        ctpop = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vdoc, [vdoc]), f"llvm.ctpop.v{STEP * words}i64"
        )
        limit16 = builder.trunc(a["limit"], _I16)
        limit_vec = _shuffle(
            builder,
            builder.insert_element(
                ir.Constant(ir.VectorType(_I16, 1), None), limit16, ir.Constant(_I32, 0)
            ),
            [0] * STEP,
        )
        any_hit = builder.alloca(_I64)
        builder.store(ir.Constant(_I64, 0), any_hit)
        step = ir.Constant(_I64, STEP)
        with cgutils.for_range_slice(builder, a["lo"], a["hi"], step, intp=_I64) as (i, _):
            x = _vload(builder, a["db"], builder.mul(i, ir.Constant(_I64, words)), vdoc)
            c = builder.call(ctpop, [builder.xor(x, pattern)])
            # 1. fold each document's words to g lanes
            v = _shuffle(builder, c, [d * words + lane for d in range(STEP) for lane in range(g)])
            for part in range(1, words // g):
                v = builder.add(
                    v,
                    _shuffle(
                        builder,
                        c,
                        [d * words + part * g + lane for d in range(STEP) for lane in range(g)],
                    ),
                )
            # 2. pack four 8-lane count vectors into one, 16 bits per count
            packs = []
            for y in range(STEP * g // 32):
                acc = None
                for field in range(4):
                    piece = _shuffle(
                        builder, v, range(8 * (4 * y + field), 8 * (4 * y + field) + 8)
                    )
                    if field:
                        shift = ir.Constant(ir.VectorType(_I64, 8), [16 * field] * 8)
                        piece = builder.shl(piece, shift)
                    acc = piece if acc is None else builder.add(acc, piece)
                packs.append(acc)
            u = _concat(builder, packs)
            # 3. sum each group of g lanes by halving: 4 lanes of 4 packed distances
            size = g
            while size > 1:
                half = size // 2
                n_out = u.type.count // 2
                first = [(j // half) * size + j % half for j in range(n_out)]
                u = builder.add(
                    _shuffle(builder, u, first), _shuffle(builder, u, [f + half for f in first])
                )
                size = half
            d16 = _shuffle(builder, builder.bitcast(u, ir.VectorType(_I16, STEP)), order)
            t = builder.sub(i, a["lo"])
            _vstore(builder, d16, a["dist"], t)
            hit = builder.icmp_signed("<=", d16, limit_vec)
            bits = builder.zext(builder.bitcast(hit, ir.IntType(STEP)), _I64)
            slot = builder.sdiv(t, step)
            builder.store(bits, builder.gep(a["hits"].data, [slot]))
            builder.store(builder.or_(builder.load(any_hit), bits), any_hit)
        return builder.load(any_hit)

    return sig, codegen


def _concat(builder, vectors: list) -> ir.Value:
    """The vectors (a power-of-two count of equal length) joined end to end."""
    while len(vectors) > 1:
        joined = []
        for a, b in zip(vectors[::2], vectors[1::2], strict=True):
            mask = ir.Constant(ir.VectorType(_I32, 2 * a.type.count), list(range(2 * a.type.count)))
            joined.append(builder.shuffle_vector(a, b, mask))
        vectors = joined
    return vectors[0]


@njit(cache=True, nogil=True)
def hamming_single_scan(
    db: np.ndarray,
    query: np.ndarray,
    ids: np.ndarray,
    mask: np.ndarray,
    shape,
    lo: int,
    hi: int,
    hs: np.ndarray,
    hr: np.ndarray,
) -> None:
    """Heap of ``-hamming`` of documents ``lo .. hi`` for one query (as ``hamming_topk_scan``).

    Args:
        db: uint64 ``(n, 1, W)`` codes, C-contiguous.
        query: uint64 ``(W,)``.
        ids: int64 ``(n,)``; mask: uint8 ``(n,)`` (0 = skip) or empty.
        shape: marker ``(W,)``.
        lo, hi: the documents this call scans (one thread's chunk).
        hs, hr: float32 / int64 ``(k,)`` heap, written in place.

    Blocks of :data:`BLOCK` documents: the vector pass writes every distance
    and a bitmask of those within the limit at the block's start; a scalar
    pass pushes the few hits (re-checked against the tightened limit); the
    last ``< 16`` documents of a chunk take ``popcnt``.
    """
    words = db.shape[2]
    flat = db.reshape(-1)
    k = hs.shape[0]
    hr[:] = -1
    hs[:] = -np.inf
    size = 0
    limit = np.int64(1 << 30)
    use_mask = mask.shape[0] > 0
    dist = np.empty(BLOCK, dtype=np.int16)
    hits = np.empty(BLOCK // STEP, dtype=np.int64)
    for b0 in range(lo, hi, BLOCK):
        b1 = min(hi, b0 + BLOCK)
        full = b0 + (b1 - b0) // STEP * STEP
        if full > b0:
            admitted = min(limit, np.int64(32767))
            if _step_distances(flat, b0, full, shape, query, admitted, dist, hits) != 0:
                for s in range((full - b0) // STEP):
                    bits = hits[s]
                    if bits == 0:
                        continue
                    for t in range(STEP):
                        if (bits >> t) & 1 == 0:
                            continue
                        i = b0 + s * STEP + t
                        d = np.int64(dist[s * STEP + t])
                        if d > limit or (use_mask and mask[i] == 0):
                            continue
                        size = heap_push(hs, hr, ids, size, np.float32(-d), i)
                        if size == k:
                            limit = np.int64(-hs[0])
        for i in range(full, b1):
            cnt = 0
            for w in range(words):
                cnt += popcount64(query[w] ^ flat[i * words + w])
            if cnt > limit or (use_mask and mask[i] == 0):
                continue
            size = heap_push(hs, hr, ids, size, np.float32(-cnt), i)
            if size == k:
                limit = np.int64(-hs[0])


def single_topk(
    db: np.ndarray, query: np.ndarray, ids: np.ndarray, mask: np.ndarray, k: int, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by Hamming distance of one segment for one query (needs :func:`single_supported`).

    Args:
        db: uint64 ``(n, 1, W)`` codes; query: uint64 ``(W,)``.
        ids, mask: as ``index.kernels.hamming_topk_scan``.
        k: results (at most the searchable rows); threads: threads splitting the rows.

    Returns:
        ``(-hamming float32 (1, k), rows int64 (1, k))``, best first, ties by key.
    """
    n, _, words = db.shape
    db = np.ascontiguousarray(db)
    query = np.ascontiguousarray(query, dtype=np.uint64)
    chunks = max(1, min(threads, -(-n // BLOCK)))
    heap_scores = np.empty((chunks, 1, k), dtype=np.float32)
    heap_rows = np.empty((chunks, 1, k), dtype=np.int64)
    shape = ((np.uint64(0),) * words,)
    step = -(-n // chunks)

    def run(c: int) -> None:
        lo, hi = min(n, c * step), min(n, (c + 1) * step)
        hamming_single_scan(db, query, ids, mask, shape, lo, hi, heap_scores[c, 0], heap_rows[c, 0])

    run_chunks(run, chunks)
    return merge_heaps(heap_scores, heap_rows, ids, k)
