"""The quantizer core: residual binarization ``x ≈ sum_p alpha_p * sign(r_p)``.

One mechanism, two backends. Along a chosen axis (a document's dimensions, or
a weight row's inputs) each *row* ``x`` is approximated greedily::

    r_0 = x
    s_p = sign(r_p)              (+1 where r_p >= 0, else -1)
    alpha_p = mean(|r_p|)        (the L2-optimal scale for fixed signs s_p)
    r_{p+1} = r_p - alpha_p * s_p

optionally followed by a least-squares refit of all ``alpha`` given the signs,
``alpha = argmin ||x - sum_p alpha_p s_p||^2`` (a P x P solve per row).

* :func:`residual_binarize` (numpy) packs embeddings and weights.
* :func:`residual_binarize_torch` is the same computation in torch with a
  straight-through :func:`sign_ste`, for training (the recurrent binarizer,
  the encoder compressor).

Both serve the embedding codecs and the encoder compressor; nothing else
implements residual binarization.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch stays out of module import: the numpy path must not need it
    import torch


def residual_binarize(
    x: np.ndarray, planes: int, axis: int = -1, refit: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy residual binarization of ``x`` along ``axis``.

    Args:
        x: float array, any shape; rows run along ``axis``.
        planes: number of sign planes ``P >= 1``.
        axis: the axis the scales are shared over (one scale per plane per row).
        refit: refit the scales by least squares given the signs.

    Returns:
        ``signs``: int8 ±1, shape ``(P, *x.shape)``;
        ``scales``: float32, shape ``(P, *x.shape)`` with ``axis`` of size 1.
        ``x ≈ (signs * scales).sum(0)``.

    Example:
        >>> s, a = residual_binarize(np.array([[3.0, -1.0]]), planes=2)
        >>> (s * a).sum(0)  # alpha_0 = 2 -> [2, -2]; residual [1, 1] -> alpha_1 = 1
        array([[ 3., -1.]], dtype=float32)
    """
    if planes < 1:
        raise ValueError(f"planes must be at least 1, got {planes}")
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("cannot binarize NaN or infinite values")
    r = x.copy()
    signs = np.empty((planes, *x.shape), dtype=np.int8)
    scales = np.empty((planes, *np.mean(x, axis=axis, keepdims=True).shape), dtype=np.float32)
    for p in range(planes):
        signs[p] = np.where(r >= 0, 1, -1)
        scales[p] = np.mean(np.abs(r), axis=axis, keepdims=True)
        r -= scales[p] * signs[p]
    if refit and planes > 1:
        scales = refit_scales(x, signs, axis)
    return signs, scales


def refit_scales(x: np.ndarray, signs: np.ndarray, axis: int = -1) -> np.ndarray:
    """Least-squares scales for fixed signs: per row, solve ``G alpha = b``.

    ``G_pq = <s_p, s_q>`` and ``b_p = <s_p, x>`` over ``axis``. Shapes as in
    :func:`residual_binarize`.
    """
    x = np.asarray(x, dtype=np.float64)
    axis = axis % x.ndim
    s = np.moveaxis(signs.astype(np.float64), axis + 1, -1)  # (P, ..., m)
    xm = np.moveaxis(x, axis, -1)  # (..., m)
    gram = np.einsum("p...m,q...m->...pq", s, s)
    rhs = np.einsum("p...m,...m->...p", s, xm)
    # Identical planes make G singular; a tiny ridge keeps the solve defined and
    # leaves well-posed rows unchanged to float32 precision.
    gram += 1e-9 * gram.shape[-1] * np.eye(gram.shape[-1])
    alpha = np.linalg.solve(gram, rhs[..., None])[..., 0]  # (..., P)
    alpha = np.moveaxis(alpha, -1, 0)  # (P, ...)
    return np.expand_dims(alpha, axis + 1).astype(np.float32)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """``sign`` (+1 at 0) forward; straight-through gradient where ``|x| <= 1``."""
    import torch

    hard = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    clipped = x.clamp(-1.0, 1.0)
    return clipped + (hard - clipped).detach()


def residual_binarize_torch(
    x: torch.Tensor, planes: int, dim: int = -1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch twin of :func:`residual_binarize` (no refit), differentiable.

    Returns ``(reconstruction, signs, scales)`` with ``signs`` and ``scales``
    stacked on a new leading plane axis, as in the numpy path. Gradients flow
    to ``x`` through the straight-through sign and through the scales.
    """
    import torch

    if planes < 1:
        raise ValueError(f"planes must be at least 1, got {planes}")
    r = x
    recon = torch.zeros_like(x)
    all_signs, all_scales = [], []
    for _ in range(planes):
        s = sign_ste(r)
        a = r.abs().mean(dim=dim, keepdim=True)
        recon = recon + a * s
        r = x - recon
        all_signs.append(s)
        all_scales.append(a)
    return recon, torch.stack(all_signs), torch.stack(all_scales)
