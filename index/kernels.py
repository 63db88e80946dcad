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
from numba.extending import intrinsic


@intrinsic
def popcount64(typingctx, x):
    """Set bits of a uint64 via LLVM's ``ctpop``: one ``popcnt`` instruction on x86-64."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None
    sig = types.uint64(types.uint64)

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


@njit(cache=True, parallel=True)
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
    n, n_planes = db.shape[0], db.shape[1]
    nq, q_planes = queries.shape[0], queries.shape[1]
    for i in prange(n):
        row = i * weight_stride
        for j in range(nq):
            s = np.float32(0.0)
            for p in range(q_planes):
                acc = np.float32(0.0)
                for r in range(n_planes):
                    c = plane_popcount(queries[j, p], db[i, r])
                    acc += db_weights[row, r] * np.float32(m - 2 * c)
                s += query_weights[j, p] * acc
            out[j, i] = s


@njit(cache=True, parallel=True)
def code_norms(db: np.ndarray, db_weights: np.ndarray, weight_stride: int, m: int) -> np.ndarray:
    """Euclidean norms of code values, float32 ``(n,)``.

    ``||v||^2 = sum_{p,r} w_p w_r (m - 2 popcount(d_p XOR d_r))``: the same
    plane-pair identity as the score, applied to a code and itself.
    """
    n, n_planes = db.shape[0], db.shape[1]
    out = np.empty(n, dtype=np.float32)
    for i in prange(n):
        row = i * weight_stride
        s = 0.0
        for p in range(n_planes):
            for r in range(n_planes):
                c = plane_popcount(db[i, p], db[i, r])
                s += db_weights[row, p] * db_weights[row, r] * (m - 2 * c)
        out[i] = np.sqrt(max(s, 0.0))
    return out
