"""The quantizer core against hand-worked values and numpy least squares."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from binsearch.codes.quantize import (
    refit_scales,
    residual_binarize,
    residual_binarize_torch,
    sign_ste,
)


def test_worked_example_two_planes():
    # x = [3, -1]: plane 0 signs [+,-], alpha_0 = mean(3, 1) = 2 -> residual [1, 1];
    # plane 1 signs [+,+], alpha_1 = 1 -> exact reconstruction.
    signs, scales = residual_binarize(np.array([[3.0, -1.0]]), planes=2)
    assert signs.tolist() == [[[1, -1]], [[1, 1]]]
    assert scales[:, 0, 0].tolist() == [2.0, 1.0]
    np.testing.assert_array_equal((signs * scales).sum(0), [[3.0, -1.0]])


def test_zero_maps_to_plus_one():
    signs, _ = residual_binarize(np.zeros((1, 3)), planes=1)
    assert (signs == 1).all()


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_shapes_along_any_axis(axis):
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    signs, scales = residual_binarize(x, planes=3, axis=axis)
    assert signs.shape == (3, 5, 7)
    expected = [3, 5, 7]
    expected[1 + axis % 2] = 1
    assert list(scales.shape) == expected
    assert np.isfinite((signs * scales).sum(0)).all()


def test_error_falls_with_planes():
    x = np.random.default_rng(1).normal(size=(64, 128)).astype(np.float32)
    errors = []
    for planes in range(1, 6):
        s, a = residual_binarize(x, planes)
        errors.append(np.linalg.norm(x - (s * a).sum(0)))
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False))


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(2, 40)),
        elements=st.floats(-10, 10, width=32),
    ),
    planes=st.integers(1, 4),
)
def test_refit_is_least_squares_and_never_worse(x, planes):
    signs, greedy = residual_binarize(x, planes)
    refit = refit_scales(x, signs, axis=-1)
    for row in range(x.shape[0]):
        basis = signs[:, row, :].T.astype(np.float64)  # (m, P)
        best, *_ = np.linalg.lstsq(basis, x[row].astype(np.float64), rcond=None)
        err_ls = np.linalg.norm(basis @ best - x[row])
        err_refit = np.linalg.norm(basis @ refit[:, row, 0] - x[row])
        err_greedy = np.linalg.norm(basis @ greedy[:, row, 0] - x[row])
        assert err_refit <= err_ls + 1e-3 * (1 + np.abs(x[row]).max())
        assert err_refit <= err_greedy + 1e-3 * (1 + np.abs(x[row]).max())


def test_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        residual_binarize(np.array([[np.nan, 1.0]]), 1)


def test_torch_path_matches_numpy_path():
    x = np.random.default_rng(2).normal(size=(8, 33)).astype(np.float32)
    signs, scales = residual_binarize(x, 3)
    recon, t_signs, t_scales = residual_binarize_torch(torch.from_numpy(x), 3)
    np.testing.assert_array_equal(t_signs.numpy(), signs)
    np.testing.assert_allclose(t_scales.numpy(), scales, rtol=1e-5)
    np.testing.assert_allclose(recon.numpy(), (signs * scales).sum(0), rtol=1e-5, atol=1e-6)


def test_straight_through_gradient():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    # Gradient passes where |x| <= 1, and is zero outside.
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
