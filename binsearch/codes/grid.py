"""The jointly optimal per-vector grid: ``P`` planes with fixed weights ``2^-p`` and one scale.

A code of ``P`` planes with the fixed plane weights ``w_p = 2^-p`` (DESIGN.md's
code format) takes, in each dimension, one of the ``2^P`` values
``sum_p 2^-p (2 bit_p - 1)``: a uniform grid symmetric about zero. In units of
the finest step (``2^-(P-1)``) these are the half-integers
``±1/2, ±3/2, …, ±(2^P - 1)/2``; the level ``k = 0 … 2^P - 1`` of a dimension
has value ``k - (2^P - 1)/2`` and its bits ``bit_p`` are the binary digits of
``k``, most significant first (plane 0 is the coarsest).

For a (rotated) vector ``z`` the code is ``v(t) = round_grid(t z)``, and the
scale ``t > 0`` is chosen to maximise ``cos(z, v(t))`` exactly (extended
RaBitQ, Gao et al. 2024): ``v(t)`` only changes where some ``t |z_i|`` crosses
an integer ``j`` (the boundary between levels ``j - 1/2`` and ``j + 1/2``), so
the critical points ``t = j / |z_i|`` (``j = 1 … 2^(P-1) - 1``) are swept in
increasing order while ``<z, v>`` and ``|v|^2`` are updated in O(1) per point::

    crossing t = j / |z_i|:   <z, v> += |z_i|,   |v|^2 += 2 j

The scale itself needs no storing: under the cosine metric it cancels, and the
index keeps the code's norm for that (32 bits per vector for ``P > 1``).
"""

from __future__ import annotations

import base64
from typing import Any

import numba
import numpy as np

from binsearch.codes.base import Codes
from index import pack_codes


@numba.njit(cache=True, nogil=True)
def _best_levels(z: np.ndarray, planes: int, out: np.ndarray, cos_out: np.ndarray) -> None:
    """Fill ``out`` uint8 ``(n, m)`` with grid levels and ``cos_out`` with ``cos(z, v)``."""
    n, m = z.shape
    half = 2 ** (planes - 1)  # levels per sign
    jmax = half - 1  # integer boundaries per dimension
    for r in range(n):
        a = np.abs(z[r])
        norm = np.sqrt((a * a).sum())
        ip = 0.5 * a.sum()
        n2 = 0.25 * m
        best_cos = ip / np.sqrt(n2)
        best_t = 0.0
        if jmax > 0:
            # The critical points j / |z_i| for one j increase along |z| sorted in
            # decreasing order: merge the jmax sorted streams (jmax <= 127, tiny).
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
        # Just past the best critical point: every boundary at or below it is crossed.
        tb = best_t * (1.0 + 1e-9)
        for i in range(m):
            lvl = min(int(np.floor(a[i] * tb)), jmax)  # 0 .. jmax: magnitude lvl + 1/2
            out[r, i] = half + lvl if z[r, i] >= 0 else half - 1 - lvl


def grid_levels(z: np.ndarray, planes: int) -> tuple[np.ndarray, np.ndarray]:
    """The cosine-optimal uniform grid code of each row of ``z``.

    Args:
        z: float ``(n, m)`` vectors (any norm; the scale is chosen per row).
        planes: ``P >= 1``; the grid has ``2^P`` levels (``P <= 8``).

    Returns:
        ``levels`` uint8 ``(n, m)`` in ``0 … 2^P - 1`` (value ``k - (2^P - 1)/2``)
        and ``cos`` float64 ``(n,)``, the cosine between each row and its code.

    Example: ``grid_levels(np.array([[0.9, -0.1]]), 2)`` gives levels
    ``[[3, 1]]`` (values ``1.5, -0.5``).
    """
    if not 1 <= planes <= 8:
        raise ValueError(f"planes must be 1..8, got {planes}")
    z = np.ascontiguousarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected a 2-d array (n, m), got shape {z.shape}")
    out = np.empty(z.shape, dtype=np.uint8)
    cos = np.empty(z.shape[0], dtype=np.float64)
    _best_levels(z, planes, out, cos)
    return out, cos


def level_values(levels: np.ndarray, planes: int) -> np.ndarray:
    """Grid values ``k - (2^P - 1)/2`` of levels, float32, same shape (half-integers)."""
    return levels.astype(np.float32) - np.float32((2**planes - 1) / 2)


def levels_to_signs(levels: np.ndarray, planes: int) -> np.ndarray:
    """Plane bits of levels: bool ``(n, P, m)``, plane 0 = most significant bit.

    With plane weights ``2^-p`` the code value is ``sum_p 2^-p (2 bit_p - 1)
    = level_values(levels) / 2^(P-2)``.
    """
    shifts = np.arange(planes - 1, -1, -1, dtype=np.uint8)
    return ((levels[:, None, :] >> shifts[None, :, None]) & 1).astype(bool)


def signs_to_levels(signs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`levels_to_signs`: bool ``(n, P, m)`` to uint8 ``(n, m)``."""
    planes = signs.shape[1]
    weights = (1 << np.arange(planes - 1, -1, -1)).astype(np.uint8)
    return (signs.astype(np.uint8) * weights[None, :, None]).sum(1).astype(np.uint8)


# --------------------------------------------------------------- the codec
def uniform_query_planes(z: np.ndarray, planes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Queries on a uniform ``2^planes``-level grid scaled to each row's largest entry.

    Queries are never stored, so they get many planes; at 8 the written query
    ranks as the float one does (measured: recall of float top-10 equal to
    three decimals at 1, 2 and 4 document planes, where 8 greedy residual
    planes lost 0.014-0.022 at 4 document planes).

    Returns:
        ``signs`` bool ``(n, planes, m)`` and per-query plane weights float32
        ``(n, planes)`` with ``sum_p w_p (2 bit_p - 1) ≈ z``.
    """
    z = np.asarray(z, dtype=np.float64)
    half = 2 ** (planes - 1)
    peak = np.abs(z).max(1, keepdims=True)
    t = (half - 0.5) / np.where(peak > 0, peak, 1.0)  # grid steps per unit of z
    levels = np.clip(np.floor(z * t) + half, 0, 2 * half - 1).astype(np.uint8)
    # level value k - (2^P - 1)/2 = 2^(P-2) sum_p 2^-p (2 bit_p - 1), in units of 1/t
    w = 2.0 ** (planes - 2 - np.arange(planes))[None, :] / t
    return levels_to_signs(levels, planes), w.astype(np.float32)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def _unb64(blob: str, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        return np.frombuffer(base64.b64decode(blob), dtype="<f4").reshape(shape).astype(np.float32)
    except ValueError as exc:
        raise ValueError(f"grid codec {what} is damaged ({exc})") from exc


class GridCodec:
    """Rotation, then the cosine-optimal uniform grid of ``P`` planes (weights ``2^-p``).

    Documents: ``z = (x - center) @ rotation``, coded by :func:`grid_levels` as
    ``P`` planes. Two scorings, both ranking by an estimate of ``<q, x>``:

    * uncentred (``center is None``): fixed plane weights under the cosine
      metric, no per-document scales (the grid's scale cancels), so a code is
      ``P x m`` bits plus the index's norm (32 bits, for ``P > 1``);
    * centred (``P <= 2``): the unbiased estimator of extended RaBitQ,
      ``<q, x - c> ≈ |z|^2 <q', v> / <v, z>``, as per-document scales
      ``f_d 2^-p`` under the inner-product metric (``32 P <= 64`` bits). The
      index's scores are then ``<q, x>`` less the per-query constant ``<q, c>``.

    Queries, never stored, are mapped by ``query_map`` (the rotation, or a map
    fitted by :mod:`binsearch.codes.grid_fit`: least squares or listwise) and written on a fine uniform
    grid of ``query_planes`` planes (:func:`uniform_query_planes`): asymmetric
    scoring that ranks as the float query does.

    Args:
        rotation: float32 ``(d, m)`` with orthonormal columns (ITQ, within the top
            ``m`` principal directions when ``m < d``: :mod:`binsearch.codes.grid_fit`).
        planes: planes per code ``P`` (``m`` bits each).
        query_map: float32 ``(d, m)``; default the rotation.
        query_planes: planes per query (default 8).
        center: float32 ``(d,)`` subtracted before the rotation (``P <= 2``), or None.
    """

    name = "grid"

    def __init__(
        self,
        rotation: np.ndarray,
        planes: int,
        query_map: np.ndarray | None = None,
        query_planes: int = 8,
        center: np.ndarray | None = None,
    ) -> None:
        rotation = np.ascontiguousarray(rotation, dtype=np.float32)
        if rotation.ndim != 2:
            raise ValueError(f"rotation must be a (d, m) matrix, got shape {rotation.shape}")
        if not 1 <= planes <= 8:
            raise ValueError(f"the grid codec takes 1 to 8 bits per dimension, not {planes}")
        if not 1 <= query_planes <= 8:
            raise ValueError(f"query_planes must be 1 to 8, not {query_planes}")
        qmap = rotation if query_map is None else np.ascontiguousarray(query_map, np.float32)
        if qmap.shape != rotation.shape:
            raise ValueError(f"query_map must have shape {rotation.shape}, got {qmap.shape}")
        if center is not None:
            center = np.ascontiguousarray(center, dtype=np.float32).reshape(-1)
            if center.shape != (rotation.shape[0],):
                raise ValueError(f"center must have {rotation.shape[0]} entries")
            if planes > 2:  # 32 bits of scale per plane: more than 64 extra bits a vector
                raise ValueError("a centred grid code stores 32 bits per plane: at most 2 planes")
        self.rotation, self.query_map, self.center = rotation, qmap, center
        self.dim, self.m = rotation.shape
        self.planes = int(planes)
        self.query_planes = int(query_planes)
        self.scaling = "fixed" if center is None else "per_document"
        self.metric = "cosine" if center is None else "ip"
        self.fit_report: dict[str, Any] = {}

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (n, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("embeddings contain NaN or infinite values")
        return x

    def _levels(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Grid levels uint8 ``(n, m)`` and, centred, the unbiased factors ``f_d`` ``(n,)``."""
        x = self._check(x)
        z = x @ self.rotation if self.center is None else (x - self.center) @ self.rotation
        levels, cos = grid_levels(z, self.planes)
        if self.center is None:
            return levels, None
        # value in plane-weight units: level_values / 2^(P-2); f = |z|^2 / <v, z>
        v_norm = np.linalg.norm(level_values(levels, self.planes), axis=1) / 2.0 ** (
            self.planes - 2
        )
        znorm = np.linalg.norm(z, axis=1)
        factor = znorm / np.maximum(cos * v_norm, 1e-12)
        return levels, factor.astype(np.float32)

    def scores(self, q: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Float scores ``(nq, n)`` of float queries against the codes of ``x``, by numpy.

        What the index computes (up to its query quantization): cosine of the
        mapped query with the code value, or the centred unbiased estimate.
        """
        return (self._check(q) @ self.query_map).astype(np.float64) @ self.code_values(x).T

    def code_values(self, x: np.ndarray) -> np.ndarray:
        """The code values of ``x`` as the index scores them: float64 ``(n, m)``.

        Unit rows under cosine; centred, ``f_d`` times the value in plane-weight
        units (so ``<q @ query_map, value>`` estimates ``<q, x - center>``).
        """
        levels, factor = self._levels(x)
        v = level_values(levels, self.planes).astype(np.float64) / 2.0 ** (self.planes - 2)
        v *= (1 / np.linalg.norm(v, axis=1) if factor is None else factor)[:, None]
        return v

    def encode(self, x: np.ndarray) -> Codes:
        """Document codes: uint64 ``(n, P, ceil(m/64))``; centred, scales float32 ``(n, P)``."""
        levels, factor = self._levels(x)
        words = pack_codes(levels_to_signs(levels, self.planes))
        if factor is None:
            return Codes(words, None)
        plane_w = 2.0 ** -np.arange(self.planes, dtype=np.float32)
        return Codes(words, np.ascontiguousarray(factor[:, None] * plane_w[None, :]))

    def encode_queries(self, q: np.ndarray) -> Codes:
        """Query codes ``(nq, query_planes, words)`` with per-query plane weights as ``scales``."""
        signs, weights = uniform_query_planes(self._check(q) @ self.query_map, self.query_planes)
        return Codes(pack_codes(signs), weights)

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "codec": self.name,
            "dim": self.dim,
            "m": self.m,
            "planes": self.planes,
            "query_planes": self.query_planes,
            "rotation": _b64(self.rotation),
        }
        if self.query_map is not self.rotation:
            out["query_map"] = _b64(self.query_map)
        if self.center is not None:
            out["center"] = _b64(self.center[None, :])
        return out

    @classmethod
    def from_config_parts(
        cls,
        dim: int,
        planes: int,
        rotation: str,
        query_map: str | None = None,
        query_planes: int = 8,
        m: int | None = None,
        center: str | None = None,
    ) -> GridCodec:
        """Rebuild from :meth:`config`'s fields (matrices as base64 little-endian float32)."""
        shape = (dim, dim if m is None else m)
        rot = _unb64(rotation, shape, "rotation")
        qmap = None if query_map is None else _unb64(query_map, shape, "query map")
        mu = None if center is None else _unb64(center, (1, dim), "center")[0]
        return cls(rot, planes, qmap, query_planes, mu)
