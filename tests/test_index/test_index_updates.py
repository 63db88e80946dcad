"""Sequences of add / remove / compact / save / load give the results of a fresh rebuild."""

from __future__ import annotations

import tempfile

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from index import BinaryIndex, pack_codes

M, PLANES = 100, 2

operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 12), st.integers(0, 39)),  # count, first id
        st.tuples(st.just("remove"), st.integers(1, 12), st.integers(0, 39)),
        st.tuples(st.just("compact"), st.just(0), st.just(0)),
        st.tuples(st.just("save_load"), st.booleans(), st.just(0)),  # mmap or not
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(operations, st.sampled_from(["fixed", "per_document"]), st.integers(0, 2**32 - 1))
def test_update_sequences_match_a_rebuild(ops, weights, seed):
    rng = np.random.default_rng(seed)
    index = BinaryIndex(M, PLANES, weights, "cosine")
    live: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}  # id -> (code, scales)
    with tempfile.TemporaryDirectory() as tmp:
        for op, a, b in ops:
            if op == "add":
                ids = np.arange(b, b + a, dtype=np.int64)
                codes = pack_codes(rng.choice([-1, 1], size=(a, PLANES, M)))
                scales = None
                if weights == "per_document":
                    scales = (rng.random((a, PLANES)) + np.array([2.0, 0.0])).astype(np.float32)
                index.add(codes, ids, scales)
                for t, i in enumerate(ids.tolist()):
                    live[i] = (codes[t], None if scales is None else scales[t])
            elif op == "remove":
                ids = np.arange(b, b + a, dtype=np.int64)
                removed = index.remove(ids)
                assert removed == sum(i in live for i in ids.tolist())
                for i in ids.tolist():
                    live.pop(i, None)
            elif op == "compact":
                index.compact()
            else:
                index.save(tmp)
                index = BinaryIndex.load(tmp, mmap=a)
            assert len(index) == len(live)
    rebuilt = BinaryIndex(M, PLANES, weights, "cosine")
    if live:
        ids = np.array(sorted(live), dtype=np.int64)
        codes = np.stack([live[i][0] for i in ids.tolist()])
        scales = None if weights == "fixed" else np.stack([live[i][1] for i in ids.tolist()])
        rebuilt.add(codes, ids, scales)
    assert sorted(index.keys.tolist()) == sorted(live)
    queries = pack_codes(rng.choice([-1, 1], size=(3, PLANES, M)))
    for k in (1, 5, 60):
        got = index.search(queries, k)
        want = rebuilt.search(queries, k)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
