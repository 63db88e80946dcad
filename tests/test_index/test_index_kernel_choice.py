"""BinaryIndex picking its scan kernel: fast-scan SDC or popcount, by code shape.

Whatever kernel runs, results must equal the popcount scan (exact tables) or
the exact float tables (float queries with full re-scoring): the references
are the index's own exact paths, themselves checked against numpy brute force
in test_index_scan.py and test_index_asymmetric.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from index_reference import assert_topk_matches, reference_scores

from index import BinaryIndex, code_values, fixed_plane_weights, pack_codes
from index.impl.dispatch import PARALLEL_ROWS as _PARALLEL_ROWS
from index.impl.fastscan import HAS_AVX2, exact_tables_possible, symmetric_tables
from index.impl.kernel_choice import KernelChooser

needs_avx2 = pytest.mark.skipif(not HAS_AVX2, reason="fast-scan kernel needs AVX2 on this CPU")


def _index(rng, n, planes, m, weights="per_document", metric="cosine"):
    """An index of ``n`` random codes in one sealed in-memory segment."""
    index = BinaryIndex(m, planes, weights, metric)
    codes = pack_codes(rng.choice([-1, 1], size=(n, planes, m)))
    scales = None
    if weights == "per_document":
        scales = (rng.random((n, planes)) + 0.5).astype(np.float32)
    ids = rng.permutation(n).astype(np.int64) * 7
    index.add(codes, ids, scales)
    index.compact()  # seals the tail
    return index, codes, scales, ids


@needs_avx2
@pytest.mark.parametrize(("planes", "m", "weights"), [(2, 128, "per_document"), (3, 100, "fixed")])
def test_exact_on_a_sealed_segment_and_a_tail_equals_popcount(planes, m, weights):
    rng = np.random.default_rng(planes)
    index, codes, scales, ids = _index(rng, _PARALLEL_ROWS + 5000, planes, m, weights)
    index.add(
        pack_codes(rng.choice([-1, 1], size=(300, planes, m))),
        -np.arange(1, 301),
        (
            (rng.random((300, planes)) + 0.5).astype(np.float32)
            if weights == "per_document"
            else None
        ),
    )
    index.remove(ids[:50])
    assert index.segment_count == 2 and index._state.segments[0].core.sealed
    queries = pack_codes(rng.choice([-1, 1], size=(3, planes, m)))
    # force the choice both ways: results must not depend on it
    for choice in ("sdc", "popcount"):
        key = (m, planes, planes, weights, "cosine", 16, True)
        index.kernels = KernelChooser(preset={key: choice, (*key, "no-sdc"): "popcount"})
        got = index.search(queries, 10, method="exact")
        ref = index.search(queries, 10, method="popcount")
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])
        # fast-scan ran (on the sealed segment only) exactly when it was chosen
        assert len(index._layouts) == (1 if choice == "sdc" else 0)
        index._layouts = {}
    sdc = index.search(queries, 10, method="sdc")
    np.testing.assert_array_equal(sdc[1], ref[1])


@needs_avx2
def test_sdc_with_quantized_weights_and_full_rescoring_is_exact():
    # weights off the power-of-two grid: quantized tables, k * 4 >= n re-scored exactly
    rng = np.random.default_rng(5)
    index, codes, scales, ids = _index(rng, 30, 2, 96, "per_document", "ip")
    queries = pack_codes(rng.choice([-1, 1], size=(2, 2, 96)))
    qw = np.array([[0.9, 0.37], [1.3, 0.11]], dtype=np.float32)
    scores, got = index.search(queries, 8, qw, method="sdc")
    ref = reference_scores(codes, scales, queries, qw, 96, False)
    for j in range(2):
        assert_topk_matches(scores[j], got[j], ref[j], ids, 8, False)


@needs_avx2
def test_search_float_auto_and_fastscan_match_exact_tables():
    rng = np.random.default_rng(6)
    index, codes, scales, ids = _index(rng, _PARALLEL_ROWS + 100, 2, 64, "per_document", "cosine")
    x = rng.standard_normal((4, 64)).astype(np.float32)
    exact = index.search_float(x, 5, method="tables")
    for method in ("auto", "fastscan"):
        got = index.search_float(x, 5, method=method)
        np.testing.assert_array_equal(got[1], exact[1])
        np.testing.assert_array_equal(got[0], exact[0])
    # and against numpy: the float query's inner products with the code values, over their norm
    docs = code_values(codes, 64, scales).astype(np.float64)
    ref = (x.astype(np.float64) @ docs.T) / np.linalg.norm(docs, axis=1)
    for j in range(4):
        assert_topk_matches(exact[0][j], exact[1][j], ref[j], ids, 5, False)


def test_fastscan_off_and_mapped_segments_build_no_copy(tmp_path):
    rng = np.random.default_rng(7)
    index, *_ = _index(rng, _PARALLEL_ROWS + 10, 2, 64, "fixed", "ip")
    queries = pack_codes(rng.choice([-1, 1], size=(1, 2, 64)))
    chooser = KernelChooser(preset={(64, 2, 2, "fixed", "ip", 1, True): "sdc"})
    index.kernels = chooser
    index.fastscan = False
    index.search(queries, 3)
    assert index._layouts == {}
    index.save(tmp_path / "ix")
    mapped = BinaryIndex.load(tmp_path / "ix", mmap=True, kernels=chooser)
    mapped.search(queries, 3)
    assert mapped._layouts == {}, "a memory-mapped segment must not be copied into RAM"
    index.fastscan = True
    before = index.nbytes
    index.search(queries, 3)
    assert (index.nbytes > before) == HAS_AVX2


@needs_avx2
def test_measured_choice_is_a_kernel_cached_in_memory_and_on_disk(tmp_path):
    cache = tmp_path / "kernels.json"
    chooser = KernelChooser(cache)
    shape = (128, 2, 2, "fixed", "ip")
    first = chooser.choose(shape, 1)
    assert first in ("popcount", "sdc")
    assert chooser.measured[(128, 2, 2, "fixed", "ip", 1, True)] == first
    assert chooser.choose(shape, 1) == first
    # a fresh process on this machine reads the choice instead of measuring again
    assert KernelChooser(cache).known(shape, 1) == first
    assert KernelChooser(None).known(shape, 1) is None


def test_exact_tables_possible_implies_exact_tables():
    rng = np.random.default_rng(8)
    for _ in range(200):
        m = int(rng.integers(1, 2400))
        planes = int(rng.integers(1, 6))
        # integer multiples of one power of two, sometimes not
        counts = rng.integers(-9, 10, size=(2, planes)).astype(np.float32)
        weights = counts * np.float32(2.0 ** int(rng.integers(-8, 4)))
        if rng.random() < 0.3:
            weights = weights + rng.random(weights.shape).astype(np.float32) * 0.01
        codes = pack_codes(rng.choice([-1, 1], size=(2, planes, m)))
        if exact_tables_possible(weights, m):
            assert symmetric_tables(codes, weights, m).exact, (m, weights)
    # BEBR's fixed weights, up to 4 planes at 2048 bits: exact, so "exact" may use fast-scan
    for planes in (1, 2, 3, 4):
        assert exact_tables_possible(np.tile(fixed_plane_weights(planes), (3, 1)), 2048)
    assert not exact_tables_possible(np.array([[1.0, 0.37]], dtype=np.float32), 256)


@needs_avx2
def test_fast_with_quantized_weights_returns_exact_scores_of_near_exact_lists():
    rng = np.random.default_rng(9)
    index, codes, scales, ids = _index(rng, _PARALLEL_ROWS + 700, 2, 128, "per_document")
    queries = pack_codes(rng.choice([-1, 1], size=(4, 2, 128)))
    qw = np.array([[0.9, 0.37], [1.3, 0.11], [0.5, 0.45], [2.0, 0.7]], dtype=np.float32)
    key = (128, 2, 2, "per_document", "cosine", 16, False)
    index.kernels = KernelChooser(preset={key: "sdc", (*key, "no-sdc"): "popcount"})
    got = index.search(queries, 10, qw, method="fast")
    assert len(index._layouts) == 1, "fast-scan ran on the sealed segment"
    ref = index.search(queries, 10, qw, method="popcount")
    # every returned score is the exact (popcount) score of that id
    full = index.scores(queries, qw)
    col = {int(i): c for c, i in enumerate(index.keys)}
    for j in range(4):
        np.testing.assert_array_equal(got[0][j], full[j, [col[int(i)] for i in got[1][j]]])
    # and the lists are the exact ones but for a rare miss of the quantized stage
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got[1], ref[1], strict=True)])
    assert overlap >= 0.9
    # "exact" never takes quantized tables: exactly popcount
    exact = index.search(queries, 10, qw, method="exact")
    np.testing.assert_array_equal(exact[1], ref[1])
