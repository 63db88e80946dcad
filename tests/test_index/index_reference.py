"""Brute-force references for the index tests: numpy values, a full stable sort.

Imported by the test modules beside it (pytest puts this directory on ``sys.path``).
"""

from __future__ import annotations

import numpy as np

from index import code_values


def reference_scores(
    doc_codes: np.ndarray,
    doc_weights: np.ndarray,
    query_codes: np.ndarray,
    query_weights: np.ndarray,
    m: int,
    divide_by_norm: bool,
) -> np.ndarray:
    """``<v_q, v_d>`` (over ``||v_d||`` for cosine) from unpacked values, float64 ``(nq, n)``."""
    docs = code_values(doc_codes, m, doc_weights).astype(np.float64)
    queries = np.stack(
        [code_values(query_codes[j : j + 1], m, query_weights[j]) for j in range(len(query_codes))]
    ).reshape(len(query_codes), m)
    scores = queries.astype(np.float64) @ docs.T
    if divide_by_norm:
        scores /= np.linalg.norm(docs, axis=1)[None, :]
    return scores


def assert_topk_matches(
    got_scores: np.ndarray,
    got_ids: np.ndarray,
    ref_scores: np.ndarray,
    ids: np.ndarray,
    k: int,
    exact: bool,
) -> None:
    """Check one query's top-k against the full stable sort by ``(-score, id)``.

    With ``exact`` (scores exactly representable on both sides) the lists must
    be identical. Otherwise numba and numpy round differently, so -- like faiss
    contrib's ``check_ref_knn_with_draws`` -- scores must agree within a
    tolerance, every document clearly better than the k-th must be returned,
    and every returned document must score (by the reference) within the
    tolerance of what the index reported.
    """
    order = np.lexsort((ids, -ref_scores))[:k]
    assert got_ids.shape == (len(order),)
    assert len(set(got_ids.tolist())) == len(got_ids), "duplicate ids in a result list"
    if exact:
        np.testing.assert_array_equal(got_ids, ids[order])
        np.testing.assert_array_equal(got_scores, ref_scores[order])
        return
    tol = 1e-4 * max(1.0, float(np.abs(ref_scores).max(initial=0.0)))
    np.testing.assert_allclose(got_scores, ref_scores[order], rtol=0, atol=tol)
    by_id = dict(zip(ids.tolist(), ref_scores.tolist(), strict=True))
    np.testing.assert_allclose([by_id[i] for i in got_ids.tolist()], got_scores, atol=tol)
    assert np.all(np.diff(got_scores) <= tol), "scores not in descending order"
    if len(order):
        must = set(ids[ref_scores > ref_scores[order[-1]] + tol].tolist())
        assert must <= set(got_ids.tolist())


#: LLVM features of an AVX2-only x86-64 target (Haswell): kernels compiled with
#: ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=HASWELL`` take their AVX2 paths on any host.
HASWELL = (
    "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+lzcnt,+mmx,+movbe,+popcnt,+sse,"
    "+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,-avx512f,-avx512vpopcntdq,-avx512bw,"
    "-avx512vl,-avx512dq"
)
