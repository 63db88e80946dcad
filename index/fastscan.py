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
(``index.heap.heap_push``, ties by id). Hosts without AVX2 take a plain scalar
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

import os

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from index.codes import byte_tables, words_per_plane
from index.fastscan_layout import (
    BLOCK,
    INT16_MAX,
    QUANTIZED_GROUP,
    FastScanCodes,
    NibbleTables,
    exact_tables_possible,
    quantized_tables,
    symmetric_tables,
)
from index.heap import heap_push
from index.kernels import score_rows
from index.topk import merge_heaps, select_rows


def _host_has_avx2() -> bool:
    """Whether numba compiles for a CPU with AVX2 (the host, unless NUMBA_CPU_NAME overrides it)."""
    if os.environ.get("BINSEARCH_FASTSCAN_PORTABLE"):
        return False
    cpu = numba.core.config.CPU_NAME
    if cpu not in (None, "", "host") and not numba.core.config.CPU_FEATURES:
        return False  # compiling for a named (possibly older) CPU: stay portable
    # NUMBA_CPU_NAME with NUMBA_CPU_FEATURES: a named target whose features we know
    features = numba.core.config.CPU_FEATURES or llvm_binding.get_host_cpu_features().flatten()
    return "+avx2" in features.split(",")


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

#: True when the scan uses the ``vpshufb`` kernel; False selects the scalar loop.
HAS_AVX2 = _host_has_avx2()
#: Kernel marker: a tuple selects the AVX2 specialisation, an int the portable one.
SIMD_MARKER: tuple | int = (np.uint8(0),) if HAS_AVX2 else 0


# ---------------------------------------------------------------------------
# The per-plane table-lookup sum of one block of 32 documents.

_I8, _I16, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(64)
_V8 = ir.VectorType(_I8, BLOCK)
_V16 = ir.VectorType(_I16, BLOCK)


@intrinsic
def _plane_sums_avx2(typingctx, codes, code_off, tables, table_off, n_bytes, group, out, out_off):
    """``out[out_off + i] = sum_t T_lo[t][c_ti & 15] + T_hi[t][c_ti >> 4]`` for 32 documents ``i``.

    ``codes`` is the flat uint8 layout (``c_ti = codes[code_off + 32 t + i]``),
    ``tables`` the flat int8 tables (position ``t``'s low/high tables at
    ``table_off + 64 t`` / ``+ 32``), ``out`` int16. Byte positions are summed
    ``group`` at a time in int8 (the caller guarantees no overflow), then
    widened into the int16 accumulators.
    """
    sig = types.void(codes, code_off, tables, table_off, n_bytes, group, out, out_off)

    def codegen(context, builder, signature, args):
        code_arr = context.make_array(signature.args[0])(context, builder, args[0])
        table_arr = context.make_array(signature.args[2])(context, builder, args[2])
        out_arr = context.make_array(signature.args[6])(context, builder, args[6])
        code_off, table_off, n_bytes, group, out_off = (
            context.cast(builder, args[i], signature.args[i], types.int64) for i in (1, 3, 4, 5, 7)
        )
        code_base = builder.gep(code_arr.data, [code_off])
        table_base = builder.gep(table_arr.data, [table_off])
        out_ptr = builder.bitcast(builder.gep(out_arr.data, [out_off]), _V16.as_pointer())
        pshufb = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V8, [_V8, _V8]), "llvm.x86.avx2.pshuf.b"
        )
        low_mask = ir.Constant(_V8, [15] * BLOCK)
        shift = ir.Constant(_V8, [4] * BLOCK)

        def vector_at(base, offset):
            return builder.load(
                builder.bitcast(builder.gep(base, [offset]), _V8.as_pointer()), align=1
            )

        acc16 = cgutils.alloca_once_value(builder, ir.Constant(_V16, None))
        acc8 = cgutils.alloca_once_value(builder, ir.Constant(_V8, None))
        zero, one = ir.Constant(_I64, 0), ir.Constant(_I64, 1)
        with cgutils.for_range_slice(builder, zero, n_bytes, group, intp=_I64) as (g0, _):
            end = builder.add(g0, group)
            end = builder.select(builder.icmp_signed("<", end, n_bytes), end, n_bytes)
            builder.store(ir.Constant(_V8, None), acc8)
            with cgutils.for_range_slice(builder, g0, end, one, intp=_I64) as (t, _):
                c = vector_at(code_base, builder.mul(t, ir.Constant(_I64, BLOCK)))
                t_off = builder.mul(t, ir.Constant(_I64, 2 * BLOCK))
                lo = builder.call(pshufb, [vector_at(table_base, t_off), builder.and_(c, low_mask)])
                t_off = builder.add(t_off, ir.Constant(_I64, BLOCK))
                hi = builder.call(pshufb, [vector_at(table_base, t_off), builder.lshr(c, shift)])
                builder.store(builder.add(builder.load(acc8), builder.add(lo, hi)), acc8)
            widened = builder.sext(builder.load(acc8), _V16)
            builder.store(builder.add(builder.load(acc16), widened), acc16)
        builder.store(builder.load(acc16), out_ptr, align=2)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _plane_sums_portable(codes, code_off, tables, table_off, n_bytes, group, out, out_off):
    """Scalar twin of :func:`_plane_sums_avx2` (same layout, same result)."""
    for i in range(BLOCK):
        s = 0
        for t in range(n_bytes):
            c = codes[code_off + BLOCK * t + i]
            s += tables[table_off + 2 * BLOCK * t + (c & 15)]
            s += tables[table_off + 2 * BLOCK * t + BLOCK + (c >> 4)]
        out[out_off + i] = s


def plane_sums(
    simd, codes, code_off, tables, table_off, n_bytes, group, out, out_off
):  # pragma: no cover
    """One block's per-document table sums (numba only; see :func:`_plane_sums_avx2`)."""
    raise NotImplementedError("plane_sums is compiled by numba")


@overload(plane_sums, inline="always")
def _plane_sums_overload(simd, codes, code_off, tables, table_off, n_bytes, group, out, out_off):
    # The marker's type picks the implementation at compile time, so the AVX2
    # intrinsic is never lowered for a CPU without it (see SIMD_MARKER).
    if isinstance(simd, types.UniTuple):

        def avx2(simd, codes, code_off, tables, table_off, n_bytes, group, out, out_off):
            _plane_sums_avx2(codes, code_off, tables, table_off, n_bytes, group, out, out_off)

        return avx2

    def portable(simd, codes, code_off, tables, table_off, n_bytes, group, out, out_off):
        _plane_sums_portable(codes, code_off, tables, table_off, n_bytes, group, out, out_off)

    return portable


_F32 = ir.FloatType()
_VF = ir.VectorType(_F32, BLOCK)


@intrinsic
def block_scores(
    typingctx, sums, scales, scales_off, n_planes, g, norms, norms_off, use_norms, threshold, out
):
    """Scores of one block's 32 documents; returns the bitmask of those ``>= threshold``.

    ``out[i] = sum_r scales[scales_off + 32 r + i] * (float32(sums[32 r + i]) * g)``
    (planes in order, from 0.0, as the popcount kernels), divided by
    ``norms[norms_off + i]`` if ``use_norms``; bit ``i`` of the uint32 result is
    ``out[i] >= threshold``. Plain LLVM vector operations (no target intrinsic):
    AVX2 hosts get 8-lane float ops, others whatever LLVM legalizes them to.
    """
    sig = types.uint32(
        sums, scales, scales_off, n_planes, g, norms, norms_off, use_norms, threshold, out
    )

    def codegen(context, builder, signature, args):
        sums_arr = context.make_array(signature.args[0])(context, builder, args[0])
        scales_arr = context.make_array(signature.args[1])(context, builder, args[1])
        norms_arr = context.make_array(signature.args[5])(context, builder, args[5])
        out_arr = context.make_array(signature.args[9])(context, builder, args[9])
        scales_off, n_planes, norms_off = (
            context.cast(builder, args[i], signature.args[i], types.int64) for i in (2, 3, 6)
        )
        g = context.cast(builder, args[4], signature.args[4], types.float32)
        threshold = context.cast(builder, args[8], signature.args[8], types.float32)
        use_norms = context.cast(builder, args[7], signature.args[7], types.boolean)

        def splat(value):
            one = builder.insert_element(ir.Constant(_VF, None), value, ir.Constant(_I64, 0))
            return builder.shuffle_vector(
                one,
                ir.Constant(_VF, None),
                ir.Constant(ir.VectorType(ir.IntType(32), BLOCK), [0] * BLOCK),
            )

        def load(arr, offset, vtype, align):
            ptr = builder.bitcast(builder.gep(arr.data, [offset]), vtype.as_pointer())
            return builder.load(ptr, align=align)

        g_vec = splat(g)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_VF, None))  # +0.0
        with cgutils.for_range(builder, n_planes, intp=_I64) as loop:
            off = builder.mul(loop.index, ir.Constant(_I64, BLOCK))
            x = builder.sitofp(load(sums_arr, off, _V16, 2), _VF)
            b = load(scales_arr, builder.add(scales_off, off), _VF, 4)
            term = builder.fmul(b, builder.fmul(x, g_vec))
            builder.store(builder.fadd(builder.load(acc), term), acc)
        with builder.if_then(use_norms):
            nrm = load(norms_arr, norms_off, _VF, 4)
            builder.store(builder.fdiv(builder.load(acc), nrm), acc)
        scores = builder.load(acc)
        out_ptr = builder.bitcast(out_arr.data, _VF.as_pointer())
        builder.store(scores, out_ptr, align=4)
        hits = builder.fcmp_ordered(">=", scores, splat(threshold))
        return builder.bitcast(hits, ir.IntType(32))

    return sig, codegen


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
        ids: int64 ``(n,)`` external ids (tie-break).
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
    use_mask = mask.shape[0] > 0
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
                    for r in range(n_planes):
                        plane_sums(
                            simd,
                            flat_codes,
                            b * block_stride + r * plane_stride,
                            flat_tables,
                            j * table_stride,
                            n_bytes,
                            group,
                            sums,
                            r * BLOCK,
                        )
                    # One vector pass scores the 32 documents and compares them with
                    # the threshold; only a block with a hit goes on to the heap loop.
                    base = b * BLOCK
                    valid = min(BLOCK, n - base)
                    norm_src = norms
                    norm_off = base
                    if use_norms and valid < BLOCK:
                        # the last block: pad its norms so the vector load stays in bounds
                        for i in range(valid):
                            norm_pad[i] = norms[base + i]
                        norm_src = norm_pad
                        norm_off = 0
                    bits = block_scores(
                        sums,
                        flat_scales,
                        b * scale_stride * n_planes * BLOCK,
                        n_planes,
                        g,
                        norm_src,
                        norm_off,
                        use_norms,
                        threshold,
                        scores32,
                    )
                    if bits == 0:
                        continue
                    for i in range(valid):
                        if (bits >> np.uint32(i)) & np.uint32(1) == 0:
                            continue
                        s = scores32[i]
                        row = base + i
                        if s < threshold or (use_mask and mask[row] == 0):
                            continue
                        size = heap_push(hsj, hrj, ids, size, s, row)
                        if size == k:
                            threshold = hsj[0]
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
        ids: int64 ``(n,)`` external ids for the tie-break; default the rows.
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
        in the layout; ``ids[rows]`` are the ids), best first, ties by id.
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
