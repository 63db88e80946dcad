"""The SIMD pieces of the fast-scan kernel (:mod:`index.impl.fastscan`): lookups and block scores.

:func:`plane_sums` sums one block's nibble-table lookups per document (the
``vpshufb`` intrinsic on AVX2 hosts, a scalar loop elsewhere, picked at
compile time by :data:`SIMD_MARKER`); :func:`block_scores` turns a block's
integer sums into float32 scores and the bitmask of those at or above the
heap's threshold. The layout and the tables are :mod:`index.impl.fastscan_layout`'s.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from index.impl.fastscan_layout import BLOCK
from index.impl.simd_ir import FEATURES

#: True when the scan uses the ``vpshufb`` kernel; False selects the scalar loop.
HAS_AVX2 = "avx2" in FEATURES  # the host, or the target NUMBA_CPU_NAME/FEATURES name
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
