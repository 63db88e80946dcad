"""The fast grid sweep (``grid_kernel``) against the original stream-scanning sweep, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from binsearch.codes.grid import grid_levels

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@numba.njit(cache=True)
def _original(z: np.ndarray, planes: int, out: np.ndarray, cos_out: np.ndarray) -> None:
    """The grid codec's sweep as it was before ``grid_kernel`` (kept verbatim as the reference)."""
    n, m = z.shape
    half = 2 ** (planes - 1)
    jmax = half - 1
    for r in range(n):
        a = np.abs(z[r])
        norm = np.sqrt((a * a).sum())
        ip = 0.5 * a.sum()
        n2 = 0.25 * m
        best_cos = ip / np.sqrt(n2)
        best_t = 0.0
        if jmax > 0:
            desc = np.sort(a)[::-1]
            ptr = np.zeros(jmax, dtype=np.int64)
            for _ in range(m * jmax):
                best_j = -1
                t = np.inf
                for j in range(jmax):
                    if ptr[j] < m and desc[ptr[j]] > 0:
                        tj = (j + 1) / desc[ptr[j]]
                        if tj < t:
                            t = tj
                            best_j = j
                if best_j < 0:
                    break
                ip += desc[ptr[best_j]]
                n2 += 2.0 * (best_j + 1)
                ptr[best_j] += 1
                cs = ip / np.sqrt(n2)
                if cs > best_cos:
                    best_cos = cs
                    best_t = t
        cos_out[r] = best_cos / norm if norm > 0 else 0.0
        tb = best_t * (1.0 + 1e-9)
        for i in range(m):
            lvl = min(int(np.floor(a[i] * tb)), jmax)
            out[r, i] = half + lvl if z[r, i] >= 0 else half - 1 - lvl


def original_levels(z: np.ndarray, planes: int) -> tuple[np.ndarray, np.ndarray]:
    z = np.ascontiguousarray(z, dtype=np.float64)
    out = np.empty(z.shape, np.uint8)
    cos = np.empty(z.shape[0])
    _original(z, planes, out, cos)
    return out, cos


def assert_same(z: np.ndarray, planes: int) -> None:
    want_levels, want_cos = original_levels(z, planes)
    got_levels, got_cos = grid_levels(z, planes)
    assert np.array_equal(got_levels, want_levels)
    assert np.array_equal(got_cos, want_cos)  # bit for bit, not approximately


# values from a small set make ties between points of different j and i
tied = st.sampled_from([0.0, 0.25, -0.25, 0.5, -0.5, 1.0, -1.0, 0.75, 3.0, -1e-3])
wide = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=60, deadline=None)
@given(
    z=st.integers(1, 70).flatmap(
        lambda m: arrays(np.float64, (3, m), elements=st.one_of(tied, wide))
    ),
    planes=st.integers(1, 8),
)
def test_fast_sweep_is_the_original_on_any_rows(z, planes):
    assert_same(z, planes)


@pytest.mark.parametrize("planes", [3, 4, 6, 8])
def test_fast_sweep_is_the_original_on_gaussian_and_heavy_tailed_rows(planes):
    rng = np.random.default_rng(planes)
    z = rng.standard_normal((300, 256))
    z[100:200] *= rng.exponential(1.0, (100, 256)) ** 3  # a wide range of t per row
    z[200:220] = np.round(z[200:220] * 4) / 4  # ties
    z[220, :100] = 0.0  # zeros: fewer points
    z[221] = 0.0
    z[222, 0] = 1e-300  # t spanning the whole float range
    z[223, :3] = 5e-324  # subnormal: t = 1 / z is infinite, never reached
    assert_same(z, planes)


def test_fast_sweep_is_the_original_on_scifact_embeddings():
    path = DATA / "scifact" / "embeddings" / "all-MiniLM-L6-v2" / "corpus.npy"
    if not path.is_file():
        pytest.skip(f"SciFact embeddings not found at {path}")
    from binsearch.codes.grid_fit import itq_rotation, pca_basis

    x = np.load(path)[:2000].astype(np.float64)
    assert_same(x @ itq_rotation(x, iters=5), 4)
    assert_same(x @ pca_basis(x, 256), 6)
