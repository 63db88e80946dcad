"""Every scan path against a numpy brute force: scores, fused top-k, filters, cascade."""

from __future__ import annotations

import platform

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from index_reference import assert_topk_matches, reference_scores
from numba import njit

from index import BinaryIndex, fixed_plane_weights, pack_codes
from index.impl.heap import heap_push
from index.impl.kernels import popcount64


@njit  # not cached: numba cannot show the assembly of code loaded from its cache
def _popcount_one(x):
    return popcount64(x)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
def test_popcount_is_the_hardware_instruction():
    assert _popcount_one(np.uint64(0xF0F0_0000_0000_0001)) == 9
    assert _popcount_one(np.uint64(2**64 - 1)) == 64
    asm = next(iter(_popcount_one.inspect_asm().values()))
    assert "popcnt" in asm


def build_case(data):
    """A random index and queries; ``dup`` draws codes from a tiny pool so scores tie."""
    m = data.draw(st.integers(1, 192), label="m")  # 1..3 words: generic and specialised kernels
    planes = data.draw(st.integers(1, 3), label="planes")
    q_planes = data.draw(st.integers(1, 3), label="query planes")
    weights = data.draw(st.sampled_from(["fixed", "per_document"]), label="weights")
    metric = data.draw(st.sampled_from(["ip", "cosine"]), label="metric")
    n = data.draw(st.integers(0, 50), label="n")
    nq = data.draw(st.integers(1, 3), label="nq")
    random_query_weights = data.draw(st.booleans(), label="random query weights")
    dup = data.draw(st.booleans(), label="duplicate codes")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    pool = rng.choice([-1, 1], size=(3 if dup else n, planes, m))
    signs = pool[rng.integers(0, len(pool), size=n)] if dup and n else pool[:n]
    codes = pack_codes(signs.reshape(n, planes, m))
    ids = rng.choice(10 * n + 10, size=n, replace=False).astype(np.int64)  # not in row order
    scales = None
    if weights == "per_document":
        levels = np.array([0.25, 0.5, 1.0, 2.0], dtype=np.float32)
        scales = (
            levels[rng.integers(0, 4, size=(n, planes))]
            if dup
            else rng.uniform(0.1, 2, (n, planes))
        )
        # plane 0 outweighs the rest together, as in residual codes: no code is all zero
        scales[:, 0] += planes * 2.0
        scales = scales.astype(np.float32)
    queries = pack_codes(rng.choice([-1, 1], size=(nq, q_planes, m)))
    if random_query_weights:
        query_weights = rng.uniform(-1, 2, size=(nq, q_planes)).astype(np.float32)
    else:
        query_weights = np.tile(fixed_plane_weights(q_planes), (nq, 1))
    index = BinaryIndex(m, planes, weights, metric)
    index.add(codes, ids, scales)
    doc_weights = scales if scales is not None else fixed_plane_weights(planes)
    divide = metric == "cosine" and not (weights == "fixed" and planes == 1)
    ref = reference_scores(codes, doc_weights, queries, query_weights, m, divide)
    # Exactly representable on both sides: power-of-two weights, no norm division.
    exact = weights == "fixed" and not random_query_weights and not divide
    return index, codes, ids, scales, queries, query_weights, ref, exact


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_search_matches_brute_force(data):
    index, _, ids, _, queries, query_weights, ref, exact = build_case(data)
    k = data.draw(st.integers(1, 60), label="k")  # often larger than n
    threads = data.draw(st.sampled_from([1, 2]), label="threads")
    batch = data.draw(st.sampled_from([1, 2, 256]), label="batch size")
    weights_arg = None if not data.draw(st.booleans()) and exact else query_weights
    scores, got = index.search(queries, k, weights_arg, batch_size=batch, threads=threads)
    assert scores.dtype == np.float32 and got.dtype == np.int64
    assert scores.shape == got.shape == (len(queries), min(k, len(ids)))
    for j in range(len(queries)):
        assert_topk_matches(scores[j], got[j], ref[j], ids, k, exact)
    full = index.scores(queries, query_weights)
    np.testing.assert_allclose(
        full, ref, rtol=1e-5, atol=1e-4 * max(1.0, np.abs(ref).max(initial=0))
    )
    np.testing.assert_array_equal(index.keys, ids)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_filtered_search_is_exact_on_the_allowed_set(data):
    index, _, ids, _, queries, query_weights, ref, exact = build_case(data)
    k = data.draw(st.integers(1, 20), label="k")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="filter seed"))
    allowed = rng.random(len(ids)) < 0.4
    by_mask = index.search(queries, k, query_weights, mask=allowed)
    # the allow-list may name ids the index does not hold
    allow_keys = np.concatenate([ids[allowed], [-5, 10**12]])
    by_ids = index.search(queries, k, query_weights, allow_keys=allow_keys)
    for scores, got in (by_mask, by_ids):
        assert got.shape == (len(queries), min(k, int(allowed.sum())))
        for j in range(len(queries)):
            assert_topk_matches(scores[j], got[j], ref[j][allowed], ids[allowed], k, exact)
    np.testing.assert_array_equal(by_mask[1], by_ids[1])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_search_after_removals_matches_a_rebuild(data):
    index, codes, ids, scales, queries, query_weights, ref, exact = build_case(data)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="remove seed"))
    # below and above the automatic compaction threshold (a quarter of the rows)
    gone = rng.random(len(ids)) < data.draw(st.sampled_from([0.1, 0.6]), label="fraction")
    assert index.remove(np.concatenate([ids[gone], [-7]])) == gone.sum()
    assert index.remove(ids[gone]) == 0  # already gone
    assert len(index) == (~gone).sum()
    np.testing.assert_array_equal(index.contains(ids), ~gone)
    k = data.draw(st.integers(1, 60), label="k")
    scores, got = index.search(queries, k, query_weights)
    for j in range(len(queries)):
        assert_topk_matches(scores[j], got[j], ref[j][~gone], ids[~gone], k, exact)
    # re-adding a removed id brings it back; compaction changes no result
    if gone.any():
        back = np.flatnonzero(gone)[:1]
        index.add(codes[back], ids[back], None if scales is None else scales[back])
        gone[back] = False
    again = index.search(queries, k, query_weights)
    index.compact()
    after = index.search(queries, k, query_weights)
    np.testing.assert_array_equal(again[1], after[1])
    for j in range(len(queries)):
        assert_topk_matches(after[0][j], after[1][j], ref[j][~gone], ids[~gone], k, exact)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_cascade_reranks_plane_zero_candidates_exactly(data):
    m = data.draw(st.integers(1, 192), label="m")
    planes = data.draw(st.integers(2, 3), label="planes")
    n = data.draw(st.integers(1, 50), label="n")
    k = data.draw(st.integers(1, 8), label="k")
    c = data.draw(st.integers(1, 4), label="oversample")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    codes = pack_codes(rng.choice([-1, 1], size=(n, planes, m)))
    ids = rng.permutation(n).astype(np.int64) * 3
    queries = pack_codes(rng.choice([-1, 1], size=(2, planes, m)))
    index = BinaryIndex(m, planes, "fixed", "ip")
    index.add(codes, ids)
    w = fixed_plane_weights(planes)
    full = reference_scores(codes, w, queries, np.tile(w, (2, 1)), m, False)
    plane0 = reference_scores(codes[:, :1], w[:1], queries[:, :1], np.ones((2, 1)), m, False)
    scores, got = index.search(queries, k, cascade=c)
    for j in range(2):
        candidates = np.lexsort((ids, -plane0[j]))[: k * c]
        assert_topk_matches(scores[j], got[j], full[j][candidates], ids[candidates], k, True)
    # enough candidates: the cascade is the full search
    exact = index.search(queries, k)
    np.testing.assert_array_equal(index.search(queries, k, cascade=n)[1], exact[1])


def test_hand_worked_scores_and_ties():
    # m = 4, one plane: score = m - 2 * hamming. Query +,+,+,+.
    signs = np.array([[1, 1, 1, 1], [1, 1, -1, -1], [1, 1, 1, 1], [-1, -1, -1, -1]])
    index = BinaryIndex(4, 1, "fixed", "ip")
    index.add(pack_codes(signs[:, None, :]), np.array([30, 20, 10, 40]))
    query = pack_codes(np.ones((1, 1, 4)))
    scores, ids = index.search(query, 3)
    # ids 30 and 10 tie at 4: the smaller id first; then id 20 at 0.
    assert ids.tolist() == [[10, 30, 20]]
    assert scores.tolist() == [[4.0, 4.0, 0.0]]
    assert index.scores(query).tolist() == [[4.0, 0.0, 4.0, -4.0]]


def test_bad_arguments_are_refused():
    index = BinaryIndex(64, 2, "per_document", "cosine")
    codes = np.zeros((2, 2, 1), dtype=np.uint64)
    with pytest.raises(ValueError, match="scales"):
        index.add(codes, np.arange(2))
    with pytest.raises(ValueError, match="shape"):
        index.add(np.zeros((2, 1, 1), dtype=np.uint64), np.arange(2), np.ones((2, 1)))
    with pytest.raises(ValueError, match="unique"):
        index.add(codes, np.array([1, 1]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="zero norm"):
        index.add(codes, np.arange(2), np.zeros((2, 2)))
    index.add(codes, np.arange(2), np.ones((2, 2)))
    with pytest.raises(ValueError, match="k must be"):
        index.search(codes, 0)
    with pytest.raises(ValueError, match="query codes"):
        index.search(np.zeros((1, 1, 2), dtype=np.uint64), 1)
    with pytest.raises(ValueError, match="finite"):
        index.search(codes, 1, np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="mask"):
        index.search(codes, 1, mask=np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="threads"):
        index.search(codes, 1, threads=0)
    with pytest.raises(ValueError, match="plane_weights"):
        BinaryIndex(64, 2, plane_weights=np.ones(3))
    with pytest.raises(KeyError):
        index.get(np.array([5]))


def test_custom_plane_weights_score_like_code_values():
    rng = np.random.default_rng(3)
    codes = pack_codes(rng.choice([-1, 1], size=(20, 2, 100)))
    pw = np.array([1.0, 0.3], dtype=np.float32)
    index = BinaryIndex(100, 2, "fixed", "cosine", plane_weights=pw)
    index.add(codes, np.arange(20))
    ref = reference_scores(codes, pw, codes[:3], np.tile(pw, (3, 1)), 100, True)
    np.testing.assert_allclose(index.scores(codes[:3]), ref, rtol=1e-5)
    scores, ids = index.search(codes[:3], 5)  # default query weights: the index's own
    for j in range(3):
        assert_topk_matches(scores[j], ids[j], ref[j], np.arange(20), 5, False)


@njit  # not cached: numba would not notice a change to heap_push, which it inlines
def _push_all(scores, ids, k):
    heap_scores = np.full(k, -np.inf, dtype=np.float32)
    heap_rows = np.full(k, -1, dtype=np.int64)
    size = 0
    for row in range(scores.shape[0]):
        size = heap_push(heap_scores, heap_rows, ids, size, scores[row], row)
    return heap_scores, heap_rows, size


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=0, max_size=40),  # few distinct scores: many ties
    st.integers(1, 45),
    st.integers(0, 2**32 - 1),
)
def test_heap_keeps_the_best_k_with_ties_by_id(values, k, seed):
    scores = np.array(values, dtype=np.float32)
    ids = np.random.default_rng(seed).permutation(len(values)).astype(np.int64) * 7
    heap_scores, heap_rows, size = _push_all(scores, ids, k)
    assert size == min(k, len(values))
    kept = heap_rows[:size]
    order = np.lexsort((ids[kept], -heap_scores[:size]))
    expected = np.lexsort((ids, -scores))[:k]
    np.testing.assert_array_equal(ids[kept[order]], ids[expected])
    np.testing.assert_array_equal(heap_scores[:size][order], scores[expected])
    # the root is the worst kept pair
    if size:
        assert ids[heap_rows[0]] == ids[expected[-1]]


@pytest.mark.parametrize("weights", ["fixed", "per_document"])
def test_unrolled_plane_kernel_matches_brute_force(weights):
    # 2 planes on both sides and 2 words: the plane counts are compile-time constants.
    rng = np.random.default_rng(11)
    n, m = 300, 128
    codes = pack_codes(rng.choice([-1, 1], size=(n, 2, m)))
    scales = None
    if weights == "per_document":
        scales = (rng.random((n, 2)) + np.array([2.0, 0.0])).astype(np.float32)
    index = BinaryIndex(m, 2, weights, "cosine")
    index.add(codes, np.arange(n) * 2, scales)
    queries = pack_codes(rng.choice([-1, 1], size=(4, 2, m)))
    qw = rng.uniform(0.2, 1.0, size=(4, 2)).astype(np.float32)
    doc_weights = scales if scales is not None else fixed_plane_weights(2)
    ref = reference_scores(codes, doc_weights, queries, qw, m, True)
    scores, ids = index.search(queries, 20, qw, threads=2)
    for j in range(4):
        assert_topk_matches(scores[j], ids[j], ref[j], np.arange(n) * 2, 20, False)
