"""Fast-scan SDC (index.fastscan) against numpy brute forces of the same float32 arithmetic.

The exact paths must agree bit for bit: the reference below performs the
popcount kernels' float32 operations in their order (``pair_score``:
``acc_r = sum_p a_p * (m - 2 popcount)``, then ``s = sum_r b_r * acc_r``), so
top-k ids *and* scores must be identical, ties broken by id.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from index_reference import reference_scores
from numba import njit

from index import BinaryIndex, fixed_plane_weights, pack_codes
from index.codes import byte_tables, unpack_codes
from index.impl.fastscan import (
    HAS_AVX2,
    FastScanCodes,
    fastscan_topk,
    fastscan_topk_float,
    fastscan_topk_scan,
    plane_sums,
    quantized_tables,
    symmetric_tables,
)

M_VALUES = [64, 128, 200, 256, 384, 512, 1024]


def popcount_scores(codes, doc_weights, queries, query_weights, m, norms=None):
    """float32 ``(nq, n)`` scores by the popcount kernels' arithmetic, in their order."""
    docs = unpack_codes(codes, m).astype(np.int64)  # (n, P, m)
    qs = unpack_codes(queries, m).astype(np.int64)  # (nq, Pq, m)
    n, planes = docs.shape[:2]
    w = np.broadcast_to(np.asarray(doc_weights, np.float32), (n, planes))
    mf = np.float32(m)
    out = np.zeros((len(qs), n), dtype=np.float32)
    for r in range(planes):
        acc = np.zeros((len(qs), n), dtype=np.float32)
        for p in range(qs.shape[1]):
            # m - 2 * popcount(q XOR d) = <q, d> for ±1 vectors
            term = mf - np.float32(2) * ((m - qs[:, p] @ docs[:, r].T) // 2).astype(np.float32)
            acc = acc + query_weights[:, p : p + 1].astype(np.float32) * term
        out = out + w[None, :, r] * acc
    if norms is not None:
        out = out / norms[None, :]
    return out


def table_scores(codes, doc_weights, x, m, norms=None):
    """float32 ``(nq, n)`` scores by ``table_topk_scan``'s arithmetic (float byte tables)."""
    tables = byte_tables(x)  # (nq, T, 256)
    n, planes = codes.shape[:2]
    as_bytes = np.ascontiguousarray(codes, "<u8").view(np.uint8)[:, :, : tables.shape[1]]
    w = np.broadcast_to(np.asarray(doc_weights, np.float32), (n, planes))
    out = np.zeros((len(x), n), dtype=np.float32)
    for r in range(planes):
        acc = np.zeros((len(x), n), dtype=np.float32)
        for t in range(tables.shape[1]):
            acc = acc + tables[:, t, as_bytes[:, r, t]]
        out = out + w[None, :, r] * acc
    if norms is not None:
        out = out / norms[None, :]
    return out


def expected_topk(scores, ids, k, mask=None):
    """Best ``k`` of each row by (score desc, id asc): ``(scores, rows)``."""
    rows = np.arange(scores.shape[1]) if mask is None else np.flatnonzero(mask)
    got_s, got_r = [], []
    for j in range(scores.shape[0]):
        order = rows[np.lexsort((ids[rows], -scores[j, rows]))][:k]
        got_s.append(scores[j, order])
        got_r.append(order)
    return np.array(got_s, dtype=np.float32), np.array(got_r, dtype=np.int64)


def build(data, planes=None, pow2_scales=False):
    m = data.draw(st.sampled_from(M_VALUES), label="m")
    planes = planes or data.draw(st.integers(1, 4), label="planes")
    q_planes = data.draw(st.sampled_from([1, 2, 4]), label="query planes")
    per_document = data.draw(st.booleans(), label="per-document scales")
    n = data.draw(st.integers(0, 100), label="n")
    nq = data.draw(st.integers(1, 3), label="nq")
    dup = data.draw(st.booleans(), label="duplicate codes")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    pool = rng.choice([-1, 1], size=(3 if dup else n, planes, m))
    signs = pool[rng.integers(0, len(pool), size=n)] if dup and n else pool[:n]
    codes = pack_codes(signs.reshape(n, planes, m))
    ids = rng.choice(10 * n + 10, size=n, replace=False).astype(np.int64)
    if per_document:
        if pow2_scales or dup:
            levels = np.array([0.25, 0.5, 1.0, 2.0], dtype=np.float32)
            weights = levels[rng.integers(0, 4, size=(n, planes))]
        else:
            weights = rng.uniform(0.1, 2, (n, planes)).astype(np.float32)
    else:
        weights = fixed_plane_weights(planes)
    queries = pack_codes(rng.choice([-1, 1], size=(nq, q_planes, m)))
    return m, codes, weights, ids, queries, rng


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_exact_tables_match_the_popcount_arithmetic(data):
    m, codes, weights, ids, queries, rng = build(data)
    nq, q_planes = queries.shape[:2]
    # fixed 2**-p, or another power-of-two grid (e.g. 3/8, -1/4): both exact
    grid = data.draw(st.booleans(), label="other grid")
    qw = np.tile(fixed_plane_weights(q_planes), (nq, 1))
    if grid:
        qw = (rng.integers(-3, 4, size=(nq, q_planes)) / 8).astype(np.float32)
    tables = symmetric_tables(queries, qw, m)
    assert tables.exact
    layout = FastScanCodes.from_codes(codes, weights, m)
    n = len(ids)
    k = data.draw(st.integers(1, n + 40), label="k")  # often larger than n
    use_mask = data.draw(st.booleans(), label="mask")
    mask = rng.random(n) < 0.5 if use_mask else None
    use_norms = data.draw(st.booleans(), label="norms")
    norms = rng.uniform(0.5, 2.0, n).astype(np.float32) if use_norms else None
    threads = data.draw(st.sampled_from([1, 2]), label="threads")
    got_s, got_r = fastscan_topk(layout, queries, qw, k, ids, norms, mask, threads)
    ref = popcount_scores(codes, weights, queries, qw, m, norms)
    want_s, want_r = expected_topk(ref, ids, k, mask)
    assert got_s.dtype == np.float32 and got_r.dtype == np.int64
    np.testing.assert_array_equal(got_r, want_r)
    np.testing.assert_array_equal(got_s, want_s)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_exact_scores_equal_the_real_valued_inner_product(data):
    # Power-of-two weights on both sides: every score is exact in float32, so
    # the fast-scan scores equal the float64 brute force of <v_q, v_d> itself.
    m, codes, weights, ids, queries, _ = build(data, pow2_scales=True)
    nq, q_planes = queries.shape[:2]
    qw = np.tile(fixed_plane_weights(q_planes), (nq, 1))
    layout = FastScanCodes.from_codes(codes, weights, m)
    k = len(ids) + 1
    got_s, got_r = fastscan_topk(layout, queries, qw, k, ids)
    ref = reference_scores(codes, weights, queries, qw, m, divide_by_norm=False)
    want_s, want_r = expected_topk(ref, ids, k)
    np.testing.assert_array_equal(got_r, want_r)
    np.testing.assert_array_equal(got_s, want_s)


def test_matches_binary_index_popcount_search():
    rng = np.random.default_rng(7)
    m, planes, n = 384, 2, 1000
    codes = pack_codes(rng.choice([-1, 1], size=(n, planes, m)))
    scales = rng.uniform(0.2, 1.0, (n, planes)).astype(np.float32)
    index = BinaryIndex(m, planes, "per_document", "cosine")
    index.add(codes, rng.permutation(5 * n)[:n], scales)
    queries = pack_codes(rng.choice([-1, 1], size=(4, planes, m)))
    qw = np.tile(fixed_plane_weights(planes), (4, 1))
    want_s, want_ids = index.search(queries, 25, qw, method="popcount")
    layout = FastScanCodes.from_codes(index.codes, index.scales, m)
    got_s, rows = fastscan_topk(layout, queries, qw, 25, index.keys)
    np.testing.assert_array_equal(index.keys[rows], want_ids)
    np.testing.assert_array_equal(got_s, want_s)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_quantized_tables_with_full_rescoring_are_exact(data):
    m, codes, weights, ids, queries, rng = build(data)
    nq, q_planes = queries.shape[:2]
    qw = rng.uniform(-1, 2, size=(nq, q_planes)).astype(np.float32)
    qw[:, 0] += np.float32(0.1234567)  # off every power-of-two grid
    assert not symmetric_tables(queries, qw, m).exact
    layout = FastScanCodes.from_codes(codes, weights, m)
    n = len(ids)
    k = data.draw(st.integers(1, 30), label="k")
    mask = rng.random(n) < 0.7 if data.draw(st.booleans(), label="mask") else None
    # k * factor >= n: every document is re-scored, so the result is exact
    got_s, got_r = fastscan_topk(layout, queries, qw, k, ids, mask=mask, rescore_factor=n + 1)
    want_s, want_r = expected_topk(popcount_scores(codes, weights, queries, qw, m), ids, k, mask)
    np.testing.assert_array_equal(got_r, want_r)
    np.testing.assert_array_equal(got_s, want_s)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_float_queries_with_full_rescoring_match_the_byte_table_scores(data):
    m, codes, weights, ids, _, rng = build(data)
    nq = data.draw(st.integers(1, 3), label="nq")
    x = rng.standard_normal((nq, m)).astype(np.float32)
    layout = FastScanCodes.from_codes(codes, weights, m)
    n = len(ids)
    k = data.draw(st.integers(1, 30), label="k")
    norms = rng.uniform(0.5, 2.0, n).astype(np.float32) if data.draw(st.booleans()) else None
    got_s, got_r = fastscan_topk_float(layout, x, k, ids, norms, rescore_factor=n + 1)
    want_s, want_r = expected_topk(table_scores(codes, weights, x, m, norms), ids, k)
    np.testing.assert_array_equal(got_r, want_r)
    np.testing.assert_array_equal(got_s, want_s)


def test_quantized_scores_are_within_the_rounding_bound():
    rng = np.random.default_rng(3)
    m, planes, n = 256, 2, 300
    codes = pack_codes(rng.choice([-1, 1], size=(n, planes, m)))
    weights = rng.uniform(0.2, 1.0, (n, planes)).astype(np.float32)
    x = rng.standard_normal((2, m)).astype(np.float32)
    layout = FastScanCodes.from_codes(codes, weights, m)
    approx_s, rows = fastscan_topk_float(layout, x, n, rescore_factor=None)
    exact = table_scores(codes, weights, x, m)
    scale = quantized_tables(x).scale
    for j in range(2):
        # |error| <= scale / 2 per nibble lookup, per plane, times the plane weight
        bound = scale[j] / 2 * (m // 4) * weights[rows[j]].sum(axis=1) * 1.001
        assert np.all(np.abs(approx_s[j] - exact[j, rows[j]]) <= bound)
    # with a few candidates re-scored, recall@10 against the exact ranking is high
    got_s, got_r = fastscan_topk_float(layout, x, 10, rescore_factor=4)
    _, want_r = expected_topk(exact, np.arange(n), 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got_r, want_r, strict=True)])
    assert recall >= 0.8


def test_layout_round_trips_and_pads_the_last_block():
    rng = np.random.default_rng(1)
    codes = pack_codes(rng.choice([-1, 1], size=(45, 3, 200)))
    weights = rng.uniform(0.1, 1, (45, 3)).astype(np.float32)
    layout = FastScanCodes.from_codes(codes, weights, 200)
    assert layout.blocks.shape == (2, 3, 25, 32) and layout.scales.shape == (2, 3, 32)
    rows = np.arange(45)
    np.testing.assert_array_equal(layout.codes_of(rows), codes)
    np.testing.assert_array_equal(layout.weights_of(rows), weights)
    assert not layout.blocks[1, :, :, 13:].any()  # padding documents are zero codes


def test_bad_input_raises_value_error():
    codes = pack_codes(np.ones((10, 2, 64)))
    layout = FastScanCodes.from_codes(codes, fixed_plane_weights(2))
    q = codes[:1]
    qw = np.ones((1, 2), np.float32)
    with pytest.raises(ValueError, match="weights"):
        FastScanCodes.from_codes(codes, np.ones(3))
    with pytest.raises(ValueError, match="uint64"):
        FastScanCodes.from_codes(codes.astype(np.int64), np.ones(2))
    with pytest.raises(ValueError, match="m="):
        FastScanCodes.from_codes(codes, np.ones(2), m=200)
    with pytest.raises(ValueError, match="k must"):
        fastscan_topk(layout, q, qw, 0)
    with pytest.raises(ValueError, match="query codes"):
        fastscan_topk(layout, pack_codes(np.ones((1, 2, 128))), qw, 3)
    with pytest.raises(ValueError, match="query weights"):
        fastscan_topk(layout, q, np.ones((1, 3)), 3)
    with pytest.raises(ValueError, match="mask"):
        fastscan_topk(layout, q, qw, 3, mask=np.ones(4, bool))
    with pytest.raises(ValueError, match="float queries"):
        fastscan_topk_float(layout, np.ones((1, 63)), 3)
    with pytest.raises(ValueError, match="finite"):
        fastscan_topk_float(layout, np.full((1, 64), np.nan), 3)


@njit  # not cached: numba cannot show the assembly of code loaded from its cache
def _block_sums(simd, codes, tables, n_bytes, group, out):
    plane_sums(simd, codes, 0, tables, 0, n_bytes, group, out, 0)


def test_portable_and_simd_block_sums_agree():
    rng = np.random.default_rng(5)
    n_bytes = 48
    codes = rng.integers(0, 256, size=n_bytes * 32, dtype=np.uint8)
    entries = rng.integers(-20, 21, size=(n_bytes, 2, 16))
    tables = np.concatenate([entries, entries], axis=2).astype(np.int8).reshape(-1)
    want = np.zeros(32, dtype=np.int64)
    blocks = codes.reshape(n_bytes, 32)
    for t in range(n_bytes):
        want += entries[t, 0, blocks[t] & 15] + entries[t, 1, blocks[t] >> 4]
    portable = np.zeros(32, dtype=np.int16)
    _block_sums(0, codes, tables, n_bytes, 3, portable)
    np.testing.assert_array_equal(portable, want)
    if HAS_AVX2:
        simd = np.zeros(32, dtype=np.int16)
        _block_sums((np.uint8(0),), codes, tables, n_bytes, 3, simd)
        np.testing.assert_array_equal(simd, want)


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not HAS_AVX2, reason="AVX2 hosts only"
)
def test_simd_path_is_vpshufb():
    codes = np.zeros(64, dtype=np.uint8)
    tables = np.zeros(128, dtype=np.int8)
    _block_sums((np.uint8(0),), codes, tables, 2, 1, np.zeros(32, dtype=np.int16))
    asm = "\n".join(_block_sums.inspect_asm().values())
    assert "vpshufb" in asm


def test_portable_kernel_gives_the_same_top_k():
    rng = np.random.default_rng(11)
    m, planes, n = 128, 2, 77
    codes = pack_codes(rng.choice([-1, 1], size=(n, planes, m)))
    weights = rng.uniform(0.1, 1, (n, planes)).astype(np.float32)
    layout = FastScanCodes.from_codes(codes, weights, m)
    queries = pack_codes(rng.choice([-1, 1], size=(2, 2, m)))
    tables = symmetric_tables(queries, np.tile(fixed_plane_weights(2), (2, 1)), m)
    ids = np.arange(n, dtype=np.int64)
    results = []
    for marker in ((np.uint8(0),), 0) if HAS_AVX2 else (0,):
        hs = np.empty((1, 2, 10), np.float32)
        hr = np.empty((1, 2, 10), np.int64)
        empty_f, empty_u = np.empty(0, np.float32), np.empty(0, np.uint8)
        fastscan_topk_scan(
            layout.blocks, layout.scales, 1, n, tables.tables, tables.scale, tables.groups,
            ids, empty_f, empty_u, marker, hs, hr,
        )  # fmt: skip
        results.append((np.sort(hs, axis=2), np.sort(hr, axis=2)))
    for other in results[1:]:
        np.testing.assert_array_equal(other[0], results[0][0])
        np.testing.assert_array_equal(other[1], results[0][1])
