"""Re-ranking with stored float16/int8 vectors against a numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from index_reference import assert_topk_matches

from index import BinaryIndex, IndexFormatError, pack_codes
from index.rescore import VectorStore, rescored_search


def corpus(seed, n, d, metric="cosine"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    ids = rng.choice(10 * n + 10, size=n, replace=False).astype(np.int64)
    index = BinaryIndex(d, 1, "fixed", metric)
    index.add(pack_codes(x[:, None, :]), ids)
    return rng, x, ids, index


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 40),
    st.sampled_from([16, 70]),
    st.sampled_from(["float16", "int8"]),
    st.sampled_from(["ip", "cosine"]),
    st.integers(1, 12),
    st.integers(1, 5),
)
def test_rescoring_is_exact_over_the_candidates(seed, n, d, storage, metric, k, oversample):
    rng, x, ids, index = corpus(seed, n, d, metric)
    store = VectorStore(x, ids, storage)
    queries = rng.standard_normal((3, d)).astype(np.float32)
    codes = pack_codes(queries[:, None, :])
    scores, got = rescored_search(index, store, codes, queries, k, oversample)
    _, candidates = index.search(codes, k * oversample)
    stored = store.vectors(ids).astype(np.float64)  # dequantized, in ids order
    ref = queries.astype(np.float64) @ stored.T
    if metric == "cosine":
        ref /= np.linalg.norm(stored, axis=1)[None, :]
    for j in range(3):
        keep = np.isin(ids, candidates[j])
        assert_topk_matches(scores[j], got[j], ref[j][keep], ids[keep], k, False)
    if k * oversample >= n:  # every document was a candidate: exact float search
        for j in range(3):
            assert_topk_matches(scores[j], got[j], ref[j], ids, k, False)


def test_quantization_error_is_bounded():
    _, x, ids, _ = corpus(1, 200, 64)
    half16 = VectorStore(x, ids, "float16").vectors(ids)
    np.testing.assert_allclose(half16, x, rtol=1e-3, atol=1e-4)
    store = VectorStore(x, ids, "int8")
    assert store.data.dtype == np.int8 and store.data.nbytes == 200 * 64
    err = np.abs(store.vectors(ids) - x)
    assert np.all(err <= store.scales / 2 * (1 + 1e-5))


def test_save_load_and_damage(tmp_path):
    rng, x, ids, index = corpus(2, 50, 32)
    store = VectorStore(x, ids, "int8")
    store.save(tmp_path)
    loaded = VectorStore.load(tmp_path)  # memory-mapped
    np.testing.assert_array_equal(loaded.vectors(ids[::-1]), store.vectors(ids[::-1]))
    q = rng.standard_normal((2, 32)).astype(np.float32)
    codes = pack_codes(q[:, None, :])
    for a, b in zip(
        rescored_search(index, loaded, codes, q, 5),
        rescored_search(index, store, codes, q, 5),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    data = tmp_path / "vectors-data.npy"
    raw = bytearray(data.read_bytes())
    raw[-3] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match="checksum"):
        VectorStore.load(tmp_path)
    with pytest.raises(KeyError):
        store.vectors(np.array([-1]))
    with pytest.raises(ValueError, match="storage"):
        VectorStore(x, ids, "int4")
