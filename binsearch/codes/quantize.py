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


# --- Weight-oriented pieces: alternating refinement and per-group scales. ----------------
#
# Greedy residual binarization fixes plane p's signs before it knows the later
# planes; for weights, where one pass is cheap next to the cost of a bad model,
# we alternate two exact steps that can each only lower the squared error:
#
#   1. signs: with the scales fixed, a row can represent the 2^P values
#      ``sum_p alpha_p * s_p`` (s in {±1}^P); give every entry the nearest one;
#   2. scales: with the signs fixed, refit ``alpha`` by least squares.


def sign_patterns(planes: int) -> np.ndarray:
    """All ``2^planes`` sign vectors: int8 ``(2^P, P)``, row ``i`` has bit ``p`` of ``i`` → ±1."""
    codes = np.arange(2**planes)[:, None] >> np.arange(planes)[None, :]
    return np.where(codes & 1, 1, -1).astype(np.int8)


def nearest_planes(x: np.ndarray, scales: np.ndarray, axis: int = -1) -> np.ndarray:
    """Signs that put each entry of ``x`` on its nearest representable value.

    Args:
        x: float array; rows run along ``axis``.
        scales: float ``(P, *x.shape)`` with ``axis`` of size 1, as returned by
            :func:`residual_binarize`.

    Returns:
        int8 ±1 signs ``(P, *x.shape)`` minimising ``|x - sum_p scales_p * s_p|``
        entry by entry (ties go to the smaller value).
    """
    x = np.asarray(x, dtype=np.float64)
    planes = scales.shape[0]
    axis = axis % x.ndim
    xm = np.moveaxis(x, axis, -1)
    rows_shape, m = xm.shape[:-1], xm.shape[-1]
    xr = xm.reshape(-1, m)
    alpha = np.moveaxis(scales.astype(np.float64), axis + 1, -1).reshape(planes, -1).T  # (R, P)
    patterns = sign_patterns(planes)
    values = alpha @ patterns.T.astype(np.float64)  # (R, 2^P) representable values per row
    order = np.argsort(values, axis=1)
    ranked = np.take_along_axis(values, order, axis=1)
    # One global searchsorted: shift each row into its own disjoint interval.
    span = 2.0 * (np.abs(ranked).max(initial=0.0) + np.abs(xr).max(initial=0.0)) + 1.0
    offset = span * np.arange(xr.shape[0], dtype=np.float64)[:, None]
    pos = np.searchsorted((ranked + offset).ravel(), (xr + offset).ravel()).reshape(xr.shape)
    pos -= np.arange(xr.shape[0])[:, None] * ranked.shape[1]
    hi = np.clip(pos, 0, ranked.shape[1] - 1)
    lo = np.clip(pos - 1, 0, ranked.shape[1] - 1)
    pick_lo = np.abs(xr - np.take_along_axis(ranked, lo, 1)) <= np.abs(
        xr - np.take_along_axis(ranked, hi, 1)
    )
    best = np.take_along_axis(order, np.where(pick_lo, lo, hi), 1)  # (R, m) pattern index
    signs = patterns[best]  # (R, m, P)
    signs = np.moveaxis(signs, -1, 0).reshape(planes, *rows_shape, m)
    return np.ascontiguousarray(np.moveaxis(signs, -1, axis + 1))


def alternating_binarize(
    x: np.ndarray, planes: int, axis: int = -1, iters: int = 10, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Residual binarization refined by alternating sign assignment and scale refit.

    Starts from greedy :func:`residual_binarize` with a least-squares refit,
    then repeats (:func:`nearest_planes`, :func:`refit_scales`) up to ``iters``
    times, stopping early once the squared error improves by less than ``tol``
    relative. Each row keeps its best iterate, so no row ends worse than the
    greedy start. Shapes and dtypes as in :func:`residual_binarize`.
    """
    if iters < 0:
        raise ValueError(f"iters must be at least 0, got {iters}")
    signs, scales = residual_binarize(x, planes, axis=axis, refit=True)
    x = np.asarray(x, dtype=np.float32)

    def row_error(s: np.ndarray, a: np.ndarray) -> np.ndarray:
        diff = x.astype(np.float64) - (s * a.astype(np.float64)).sum(0)
        return np.sum(diff**2, axis=axis, keepdims=True)  # rows, axis kept as size 1

    best = row_error(signs, scales)
    for _ in range(iters):
        new_signs = nearest_planes(x, scales, axis)
        new_scales = refit_scales(x, new_signs, axis)
        err = row_error(new_signs, new_scales)
        better = err < best
        signs = np.where(better[None], new_signs, signs)
        scales = np.where(better[None], new_scales, scales)
        gain = float(best.sum() - np.minimum(err, best).sum())
        best = np.minimum(err, best)
        if gain <= tol * max(float(best.sum()), 1e-30):
            break
    return signs, scales


def group_rows(w: np.ndarray, group_size: int | None) -> np.ndarray:
    """View a 2-D weight ``(rows, cols)`` as ``(rows, cols // g, g)`` scale groups.

    ``group_size=None`` (or ``>= cols``) keeps one group per row. Binarizing the
    result along its last axis gives per-group scales ``(P, rows, groups, 1)``.
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {w.shape}")
    rows, cols = w.shape
    if group_size is None or group_size >= cols:
        return w.reshape(rows, 1, cols)
    if group_size < 1 or cols % group_size:
        raise ValueError(f"group size {group_size} does not divide the {cols} columns")
    return w.reshape(rows, cols // group_size, group_size)


def binarize_weight(
    w: np.ndarray, planes: int, group_size: int | None = None, iters: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a weight matrix to ``planes`` residual sign planes with alternating refit.

    Args:
        w: float ``(rows, cols)``; one scale per plane per row (a Linear layer's
            output unit, an embedding's token) or per ``group_size`` columns of it.
        planes: bits per weight ``P``.
        group_size: columns sharing a scale; None for one per row.
        iters: alternating refinement rounds (0 = greedy + least-squares refit).

    Returns:
        ``signs`` int8 ±1 ``(P, rows, cols)`` and ``scales`` float32
        ``(P, rows, groups)``; :func:`dequantize_weight` rebuilds ``w``.
    """
    grouped = group_rows(w, group_size)
    signs, scales = alternating_binarize(grouped, planes, axis=-1, iters=iters)
    return signs.reshape(planes, *np.shape(w)), scales[..., 0]


def dequantize_weight(signs: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``sum_p scales_p * signs_p``: float32 ``(rows, cols)`` from ``(P, rows, cols)`` ±1
    signs and ``(P, rows, groups)`` scales (groups evenly split the columns)."""
    planes, rows, cols = signs.shape
    groups = scales.shape[-1]
    s = signs.reshape(planes, rows, groups, cols // groups).astype(np.float32)
    return (s * scales[..., None].astype(np.float32)).sum(0).reshape(rows, cols)


def nearest_planes_torch(x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`nearest_planes` along the last dim (no gradient).

    ``x``: ``(..., m)``; ``scales``: ``(P, ..., 1)``. Returns ±1 signs
    ``(P, ..., m)`` in ``x.dtype``.
    """
    import torch

    with torch.no_grad():
        planes, m = scales.shape[0], x.shape[-1]
        patterns = torch.as_tensor(sign_patterns(planes), dtype=x.dtype, device=x.device)
        alpha = scales[..., 0].reshape(planes, -1).T  # (R, P)
        values = alpha @ patterns.T  # (R, 2^P)
        ranked, order = values.sort(dim=1)
        xr = x.reshape(-1, m).contiguous()
        pos = torch.searchsorted(ranked.contiguous(), xr)
        hi = pos.clamp(max=ranked.shape[1] - 1)
        lo = (pos - 1).clamp(min=0)
        pick_lo = (xr - ranked.gather(1, lo)).abs() <= (xr - ranked.gather(1, hi)).abs()
        best = order.gather(1, torch.where(pick_lo, lo, hi))
        signs = patterns[best]  # (R, m, P)
        return signs.permute(2, 0, 1).reshape(planes, *x.shape)


def quantize_ste(x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``sum_p scales_p * s_p`` with ``s`` the nearest-value signs of ``x``, trainable.

    Forward: the quantized tensor. Backward: straight through to ``x`` (identity)
    and exact to ``scales`` (signs held fixed), so calibration can move both the
    latent weights and the scales. Shapes as in :func:`nearest_planes_torch`.
    """
    signs = nearest_planes_torch(x, scales)
    return (x - x.detach()) + (signs * scales).sum(0)
