"""Selective allow-lists are scored row by row (index.impl.gather): the same top-k as a full scan."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from index_reference import assert_topk_matches

from index import BinaryIndex
from index.impl import gather


def build(seed: int, m: int, planes: int, weights: str, metric: str) -> BinaryIndex:
    """An index of several sealed segments, a tail, tombstones and re-added keys."""
    rng = np.random.default_rng(seed)
    words = (m + 63) // 64
    idx = BinaryIndex(m, planes, weights, metric, compaction="off")

    def add(keys: np.ndarray) -> None:
        codes = rng.integers(0, 2**63, (len(keys), planes, words), dtype=np.uint64)
        if m % 64:
            codes[:, :, -1] &= np.uint64((1 << (m % 64)) - 1)
        scales = rng.uniform(0.1, 2.0, (len(keys), planes)).astype(np.float32)
        idx.add(codes, keys, scales if weights == "per_document" else None)

    add(np.arange(0, 300, dtype=np.int64))
    idx.seal()
    add(np.arange(300, 500, dtype=np.int64))
    idx.seal()
    idx.remove(rng.choice(500, 60, replace=False).astype(np.int64))
    add(rng.choice(500, 40, replace=False).astype(np.int64))  # re-added: the tail
    add(np.arange(500, 520, dtype=np.int64))
    return idx


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    m=st.sampled_from([16, 64, 100]),
    planes=st.integers(1, 3),
    weights=st.sampled_from(["fixed", "per_document"]),
    metric=st.sampled_from(["ip", "cosine"]),
    k=st.integers(1, 12),
    size=st.sampled_from(["zero", "one", "k-1", "k", "k+1", "some"]),
)
def test_gathered_equals_full_scan_and_reference(
    seed: int, m: int, planes: int, weights: str, metric: str, k: int, size: str
) -> None:
    idx = build(seed, m, planes, weights, metric)
    rng = np.random.default_rng(seed + 1)
    live = idx.keys
    count = {"zero": 0, "one": 1, "k-1": k - 1, "k": k, "k+1": k + 1, "some": 25}[size]
    allowed = rng.choice(live, count, replace=False)
    # Absent keys, deleted keys and repeats change nothing.
    allow = np.concatenate([allowed, allowed[:2], [-7, 10**9]]).astype(np.int64)
    pq = int(rng.integers(1, 3))
    queries = rng.integers(0, 2**63, (3, pq, idx.n_words), dtype=np.uint64)
    if m % 64:
        queries[:, :, -1] &= np.uint64((1 << (m % 64)) - 1)
    qw = rng.uniform(0.2, 1.5, (3, pq)).astype(np.float32)
    assert gather.gathered_topk(idx, idx._state, gather.unique_keys(allow), queries, qw, k)
    got_s, got_i = idx.search(queries, k, qw, allow_keys=allow)  # gathered
    scan_s, scan_i = idx.search(queries, k, qw, allow_keys=allow, method="popcount")  # full scan
    np.testing.assert_array_equal(got_i, scan_i)
    np.testing.assert_array_equal(got_s, scan_s)
    assert got_i.shape == (3, min(k, count))
    # And against every live document's score (the scoring kernel, no top-k), ranked
    # by a full stable sort over the allowed ones.
    full = idx.scores(queries, qw)
    keep = np.isin(live, allowed)
    for j in range(3):
        ref = full[j][keep].astype(np.float64)
        assert_topk_matches(got_s[j], got_i[j], ref, live[keep], k, exact=False)


def test_large_allow_lists_take_the_scan() -> None:
    idx = build(0, 64, 2, "fixed", "cosine")
    q = np.zeros((1, 2, 1), dtype=np.uint64)
    qw = np.ones((1, 2), dtype=np.float32)
    many = gather.unique_keys(idx.keys)
    assert gather.gathered_topk(idx, idx._state, many, q, qw, 5) is None
    s, i = idx.search(q, 5, qw, allow_keys=many)
    s2, i2 = idx.search(q, 5, qw)
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_array_equal(s, s2)


def test_allow_masks_match_isin() -> None:
    idx = build(3, 64, 1, "fixed", "ip")
    allow = np.array([5, 17, 301, 505, 519, -1, 10**6], dtype=np.int64)
    masks, counts = gather.allow_masks(idx._state, gather.unique_keys(allow))
    for seg, mask, count in zip(idx._state.segments, masks, counts, strict=True):
        want = np.isin(seg.ids, allow)
        if seg.alive is not None:
            want &= seg.alive.view(bool)
        np.testing.assert_array_equal(mask.view(bool), want)
        assert count == int(want.sum())
