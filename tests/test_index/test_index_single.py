"""The lone-query vector popcount (index/single_kernels.py) against popcount and numpy.

A single 1-plane query with ``method="batch"`` takes the 16-documents-per-step
kernel; it must return what ``method="popcount"`` returns, bit for bit, and
both the numpy brute force's top-k (ties by id).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from index_reference import HASWELL
from numba import njit

from index import BinaryIndex, KernelChooser
from index.impl import single_kernels
from index.impl.simd_ir import POPCOUNT_PATH
from index.impl.single_kernels import STEP, VECTOR_WORDS, single_supported, single_topk

needs_vector_popcount = pytest.mark.skipif(
    not single_supported(4, 1), reason="this CPU has no AVX2: no lone-query kernel"
)


def _hamming(db: np.ndarray, query: np.ndarray) -> np.ndarray:
    return np.unpackbits((db[:, 0, :] ^ query).view(np.uint8), axis=1).sum(axis=1)


@needs_vector_popcount
@settings(max_examples=40, deadline=None)
@given(st.data())
def test_single_equals_brute_force_and_popcount(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    words = data.draw(st.sampled_from(VECTOR_WORDS), label="words")
    n = data.draw(st.integers(1, 1200), label="n")
    k = data.draw(st.integers(1, 20), label="k")
    threads = data.draw(st.integers(1, 2), label="threads")
    db = rng.integers(0, 2**64, size=(n, 1, words), dtype=np.uint64)
    if data.draw(st.booleans(), label="few distinct codes"):  # ties everywhere
        db = db[rng.integers(0, min(3, n), size=n)]
    if data.draw(st.booleans(), label="near codes"):  # small distances: the limit tightens
        db[:, 0, 0] = rng.integers(0, 4, size=n).astype(np.uint64)
        db[:, 0, 1:] = 0
    query = db[rng.integers(0, n), 0].copy() if data.draw(st.booleans()) else db[0, 0] * 0
    ids = rng.choice(10 * n, size=n, replace=False).astype(np.int64)
    keep = rng.random(n) > data.draw(st.sampled_from([0.0, 0.5, 0.95]), label="drop")
    mask = keep.astype(np.uint8) if not keep.all() else np.empty(0, dtype=np.uint8)
    live = np.flatnonzero(keep)
    kk = min(k, live.size)
    if kk == 0:
        return
    scores, rows = single_topk(db, query, ids, mask, kk, threads)
    dist = _hamming(db, query)[live]
    want = live[np.lexsort((ids[live], dist))[:kk]]
    np.testing.assert_array_equal(ids[rows[0]], ids[want])
    np.testing.assert_array_equal(-scores[0], _hamming(db, query)[want])
    # through the index: "batch" for a lone query is this kernel, equal to popcount
    index = BinaryIndex(64 * words, 1, "fixed", "ip", kernels=KernelChooser(preset={}))
    index.add(db, ids)
    q = query.reshape(1, 1, words)
    got = index.search(q, k, method="batch", threads=threads)
    ref = index.search(q, k, method="popcount", threads=threads)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])


@njit(cache=False)  # not cached: numba shows no assembly of cached code
def _steps(db, shape, query, limit, dist, hits):
    return single_kernels._step_distances(
        db.reshape(-1), 0, db.shape[0], shape, query, limit, dist, hits
    )


@needs_vector_popcount
@pytest.mark.parametrize("words", VECTOR_WORDS)
def test_the_lone_query_kernel_is_vpopcntq_without_scalar_popcounts(words):
    rng = np.random.default_rng(words)
    db = rng.integers(0, 2**64, size=(4 * STEP, words), dtype=np.uint64)
    query = db[5].copy()
    dist = np.empty(4 * STEP, dtype=np.int16)
    hits = np.empty(4, dtype=np.int64)
    limit = 32 * words
    shape = ((np.uint64(0),) * words,)
    any_hit = _steps(db, shape, query, limit, dist, hits)
    ref = np.unpackbits((db ^ query).view(np.uint8), axis=1).sum(axis=1)
    np.testing.assert_array_equal(dist, ref)  # documents in order, whatever the packing
    bits = (ref <= limit).reshape(4, STEP) @ (1 << np.arange(STEP))
    np.testing.assert_array_equal(hits, bits)
    assert any_hit == np.bitwise_or.reduce(bits)
    asm = next(asm for sig, asm in _steps.inspect_asm().items() if sig[1].types[0].count == words)
    if POPCOUNT_PATH == "avx512vpopcntdq":
        assert "vpopcntq" in asm and "zmm" in asm  # 8 words per instruction
    else:  # AVX2: nibble lookups
        assert "vpshufb" in asm
    assert not re.search(r"\spopcnt[ql]\s", asm), "a scalar popcount in the vector loop"


@needs_vector_popcount
def test_exact_takes_the_lone_query_kernel_where_the_chooser_measured_it(monkeypatch):
    rng = np.random.default_rng(3)
    n = 40_000  # above dispatch.PARALLEL_ROWS: the chooser is asked
    db = rng.integers(0, 2**64, size=(n, 1, 8), dtype=np.uint64)
    key = KernelChooser.key((512, 1, 1, "fixed", "ip"), 1)
    chooser = KernelChooser(preset={key: "batch", (*key, "no-sdc"): "batch"})
    index = BinaryIndex(512, 1, "fixed", "ip", kernels=chooser)
    index.add(db, np.arange(n, dtype=np.int64))
    index.compact()
    calls = []
    real = single_kernels.hamming_single_scan

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(single_kernels, "hamming_single_scan", spy)
    got = index.search(db[7:8], 5)
    assert calls, "exact did not take the lone-query kernel"
    ref = index.search(db[7:8], 5, method="popcount")
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])
    assert got[1][0, 0] == 7


def test_shapes_the_lone_query_kernel_does_not_take():
    assert not single_supported(5, 1)  # 320 bits: popcnt
    assert not single_supported(32, 1)  # 2048 bits: popcnt
    assert not single_supported(4, 2)  # 2 planes: a document's plane 0 is not contiguous


AVX2_CHECK = """
import re
import numpy as np
from numba import njit
from index.impl import single_kernels

assert single_kernels.POPCOUNT_PATH == "avx2", single_kernels.POPCOUNT_PATH

@njit(cache=False)
def steps(db, shape, query, dist, hits):
    return single_kernels._step_distances(db.reshape(-1), 0, db.shape[0], shape, query, 300, dist, hits)

rng = np.random.default_rng(0)
db = rng.integers(0, 2**64, size=(32, 8), dtype=np.uint64)
dist, hits = np.empty(32, dtype=np.int16), np.empty(2, dtype=np.int64)
steps(db, ((np.uint64(0),) * 8,), db[3].copy(), dist, hits)
assert np.array_equal(dist, np.unpackbits((db ^ db[3]).view(np.uint8), axis=1).sum(axis=1))
asm = next(iter(steps.inspect_asm().values()))
print("vpshufb" in asm, "vpopcntq" in asm, "zmm" in asm, bool(re.search(r"\\spopcnt[ql]\\s", asm)))
"""


@needs_vector_popcount
def test_an_avx2_target_gets_a_vpshufb_lone_query_kernel():
    # Compiled for Haswell (AVX2, no AVX-512) whatever this CPU is: runs on any AVX2 host.
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": HASWELL}
    out = subprocess.run(
        [sys.executable, "-c", AVX2_CHECK], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "False", "False", "False"], out.stdout + out.stderr
