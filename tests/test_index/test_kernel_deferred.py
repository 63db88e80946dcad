"""Deferred kernel choices: provisional "popcount" (exact) until measure_pending runs."""

from __future__ import annotations

import numpy as np

from index import BinaryIndex
from index.impl.kernel_choice import KernelChooser


def test_deferred_choices_are_exact_then_measured() -> None:
    chooser = KernelChooser()
    chooser.deferred = True
    rng = np.random.default_rng(0)
    idx = BinaryIndex(64, 2, "per_document", "cosine", kernels=chooser, compaction="off")
    n = 40_000  # past PARALLEL_ROWS once sealed: the kernel choice is asked for
    codes = rng.integers(0, 2**63, (n, 2, 1), dtype=np.uint64)
    idx.add(codes, np.arange(n, dtype=np.int64), rng.uniform(0.5, 1, (n, 2)).astype(np.float32))
    idx.seal()
    q = rng.integers(0, 2**63, (1, 2, 1), dtype=np.uint64)
    qw = np.array([[1.0, 0.3]], dtype=np.float32)
    s, i = idx.search(q, 5, qw, method="fast")
    exact_s, exact_i = idx.search(q, 5, qw, method="popcount")
    np.testing.assert_array_equal(i, exact_i)
    np.testing.assert_array_equal(s, exact_s)
    assert chooser.pending and not chooser.measured  # asked for, not measured yet
    asked = set(chooser.pending)
    assert chooser.measure_pending() == len(asked)
    assert not chooser.deferred and not chooser.pending
    assert all(key in chooser.measured for key in asked)
    s2, i2 = idx.search(q, 5, qw, method="exact")  # now by the measured kernel
    np.testing.assert_array_equal(i2, exact_i)
