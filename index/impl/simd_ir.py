"""LLVM IR helpers shared by the vector kernels (:mod:`index.impl.batch_kernels`, :mod:`index.impl.single_kernels`).

Which SIMD features numba compiles for (the host, or the target named by
``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES``), the popcount path that gives the
vector ``ctpop``, and small builders for intrinsics: arguments, splats,
vector loads and stores.
"""

from __future__ import annotations

import os
from typing import Any

import numba
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils

_I32, _I64 = ir.IntType(32), ir.IntType(64)


def host_features() -> set[str]:
    """LLVM feature names (``avx2``, ``avx512vpopcntdq``, ...) of the CPU numba compiles for."""
    if os.environ.get("BINSEARCH_FASTSCAN_PORTABLE"):
        return set()
    cpu = numba.core.config.CPU_NAME
    if cpu not in (None, "", "host") and not numba.core.config.CPU_FEATURES:
        return set()  # compiling for a named (possibly older) CPU: stay portable
    # NUMBA_CPU_NAME with NUMBA_CPU_FEATURES (e.g. an AVX2-only target on an AVX-512
    # host, as benchmarks/scan_batch.py --avx2 does): the features named there
    features = numba.core.config.CPU_FEATURES or llvm_binding.get_host_cpu_features().flatten()
    return {f[1:] for f in features.split(",") if f.startswith("+")}


FEATURES = host_features()
#: The popcount path LLVM takes for the vector ``ctpop``: ``"avx512vpopcntdq"``, ``"avx2"``
#: (``vpshufb`` lookups) or ``""`` (no batch kernel on this CPU).
POPCOUNT_PATH = (
    "avx512vpopcntdq"
    if {"avx512f", "avx512vpopcntdq"} <= FEATURES
    else ("avx2" if "avx2" in FEATURES else "")
)
#: uint64 words per SIMD register: 8 (512 bits) with AVX-512, else 4.
LANES = 8 if "avx512f" in FEATURES else 4


def intrinsic_args(context: Any, builder: Any, sig: Any, args: Any, names: tuple) -> dict:
    """``{name: llvm value}``: arrays as their structs, scalars cast to int64/float32/bool.

    A tuple of names takes a tuple argument apart, one name per member (kernels
    group related arguments, e.g. an array with its offset, into one tuple).
    """
    out = {}
    for name, ty, val in zip(names, sig.args, args, strict=True):
        if isinstance(name, tuple):
            members = cgutils.unpack_tuple(builder, val, len(ty))
            for inner, inner_ty, inner_val in zip(name, ty.types, members, strict=True):
                out[inner] = _arg(context, builder, inner_ty, inner_val)
        else:
            out[name] = _arg(context, builder, ty, val)
    return out


def _arg(context: Any, builder: Any, ty: Any, val: Any) -> Any:
    if isinstance(ty, types.Array):
        return context.make_array(ty)(context, builder, val)
    if isinstance(ty, types.Float):
        return context.cast(builder, val, ty, types.float32)
    if isinstance(ty, types.Boolean):
        return val
    if isinstance(ty, types.Integer):
        return context.cast(builder, val, ty, types.int64)
    return None  # a marker: its count is a compile-time constant


def splat(builder: ir.IRBuilder, value: ir.Value, vtype: ir.VectorType) -> ir.Value:
    """``value`` in every lane of a ``vtype`` vector."""
    one = builder.insert_element(ir.Constant(vtype, None), value, ir.Constant(_I64, 0))
    zeros = ir.Constant(ir.VectorType(_I32, vtype.count), [0] * vtype.count)
    return builder.shuffle_vector(one, ir.Constant(vtype, None), zeros)


def vload(
    builder: ir.IRBuilder, arr: Any, offset: ir.Value, vtype: ir.Type, align: int = 8
) -> ir.Value:
    """A ``vtype`` vector loaded from element ``offset`` of array struct ``arr``."""
    ptr = builder.bitcast(builder.gep(arr.data, [offset]), vtype.as_pointer())
    return builder.load(ptr, align=align)


def vstore(
    builder: ir.IRBuilder, value: ir.Value, arr: Any, offset: ir.Value, align: int = 2
) -> None:
    """``value`` (a vector) stored at element ``offset`` of array struct ``arr``."""
    ptr = builder.bitcast(builder.gep(arr.data, [offset]), value.type.as_pointer())
    builder.store(value, ptr, align=align)


def offset(builder: ir.IRBuilder, base: ir.Value, constant: int) -> ir.Value:
    """``base + constant`` as int64."""
    return builder.add(base, ir.Constant(_I64, constant))
