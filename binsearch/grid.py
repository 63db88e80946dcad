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
import contextlib
from typing import Any

import numba
import numpy as np

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
def itq_rotation(
    x: np.ndarray, iters: int = 30, seed: int = 0, max_rows: int = 10000
) -> np.ndarray:
    """ITQ rotation (Gong & Lazebnik 2011) of uncentred rows: float32 ``(d, d)``, ``z = x @ R``.

    Alternates ``B = sign(x R)`` and the Procrustes step ``R = U V'`` from
    ``svd(x' B)`` on at most ``max_rows`` random rows. Uncentred on purpose:
    under the cosine metric the code must track ``x`` itself (a centred code
    ranks by the norm of ``x - mean``, measured worse at 2 and 4 planes).
    """
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_rows:
        x = x[np.sort(rng.choice(x.shape[0], max_rows, replace=False))]
    rot = np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))[0]
    for _ in range(iters):
        u, _, vt = np.linalg.svd(x.T @ np.sign(x @ rot))
        rot = u @ vt
    return rot.astype(np.float32)


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


def lstsq_query_map(x: np.ndarray, levels: np.ndarray, planes: int) -> np.ndarray:
    """The linear query map that best reproduces float inner products from the codes.

    With unit code values ``v̂_d`` (what the cosine index scores), the map
    ``M = argmin ||V̂ M - X||^2`` makes ``<M q, v̂_d> ≈ <q, x_d>`` for every
    query. Returns float32 ``(d, m)``: a query ``q`` is written as ``q @ map``.
    """
    v = level_values(levels, planes).astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sol = np.linalg.lstsq(v, np.asarray(x, dtype=np.float64), rcond=None)[0]  # (m, d)
    return np.ascontiguousarray(sol.T, dtype=np.float32)


def listwise_query_map(
    x: np.ndarray,
    values: np.ndarray,
    start: np.ndarray,
    steps: int = 200,
    batch: int = 128,
    neighbours: int = 30,
    randoms: int = 512,
    tau: float = 0.05,
    lr: float = 3e-4,
    max_rows: int = 8000,
    seed: int = 0,
) -> np.ndarray:
    """A query map trained for ranking against fixed document codes (listwise).

    The documents keep their codes; only the query side learns. Each step takes ``batch`` rows as queries and, as
    candidates, their ``neighbours`` float nearest rows plus ``randoms``
    random rows; the loss is the cross-entropy between the softmax of the
    float similarities (temperature ``tau``) and the softmax of the coded
    scores ``<q M, v_d>`` (a learned temperature). ``M`` starts at ``start``. Measured on held-out rows (recall of float top-10): Cranfield
    0.789 -> 0.842 at 1 plane and 0.881 -> 0.912 at 2, SciFact 0.784 -> 0.796
    and 0.884 -> 0.891; at 4 planes it lost 0.02 on both, so :meth:`GridCodec.fit`
    offers it at ``P <= 2`` only. Runs torch on one thread.

    Args:
        x: float32 ``(n, d)`` unit rows (at most ``max_rows`` random ones are used).
        values: float32 ``(n, m)``, the code values of the rows as the index
            scores them (unit rows under cosine; scaled by the per-document
            factors when centred).
        start: float32 ``(d, m)``, the starting map (the rotation).

    Returns:
        float32 ``(d, m)``: a query ``q`` is written as ``q @ map``.
    """
    import torch

    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    v = np.asarray(values, dtype=np.float32)
    if x.shape[0] > max_rows:
        keep = np.sort(rng.choice(x.shape[0], max_rows, replace=False))
        x, v = x[keep], v[keep]
    n = x.shape[0]
    neighbours = min(neighbours, n - 1)
    randoms = min(randoms, n)
    batch = min(batch, n)
    nbr = np.empty((n, neighbours), np.int64)
    for s in range(0, n, 2048):  # float neighbours among the rows, self excluded
        sims = x[s : s + 2048] @ x.T
        sims[np.arange(sims.shape[0]), np.arange(s, s + sims.shape[0])] = -np.inf
        nbr[s : s + 2048] = np.argpartition(-sims, neighbours, 1)[:, :neighbours]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices; a second thread only waits on a busy machine
    try:
        xt, vt = torch.from_numpy(x), torch.from_numpy(v)
        qmap = torch.tensor(start, dtype=torch.float32, requires_grad=True)
        log_scale = torch.tensor(float(np.log(1 / tau)), requires_grad=True)
        opt = torch.optim.Adam([qmap, log_scale], lr=lr)
        for _ in range(steps):
            qi = rng.choice(n, batch, replace=False)
            di = np.unique(np.concatenate([nbr[qi].ravel(), rng.choice(n, randoms, replace=False)]))
            own = torch.from_numpy(di[None, :] == qi[:, None])  # a row is not its own candidate
            pred = (xt[qi] @ qmap) @ vt[di].T * log_scale.exp()
            target = torch.softmax(((xt[qi] @ xt[di].T) / tau).masked_fill(own, -1e9), 1)
            loss = -(target * torch.log_softmax(pred.masked_fill(own, -1e9), 1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return np.ascontiguousarray(qmap.detach().numpy(), dtype=np.float32)
    finally:
        torch.set_num_threads(threads)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def _unb64(blob: str, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        return np.frombuffer(base64.b64decode(blob), dtype="<f4").reshape(shape).astype(np.float32)
    except ValueError as exc:
        raise ValueError(f"grid codec {what} is damaged ({exc})") from exc


def self_recall(q: np.ndarray, docs: np.ndarray, candidates: dict[str, Any]) -> dict[str, float]:
    """Recall of the float top-10 of queries ``q`` among ``docs``, for each candidate codec.

    :meth:`GridCodec.fit` calls it with corpus rows held out of fitting as
    queries (no labels, no evaluation queries) and keeps the best candidate;
    each candidate scores by :meth:`GridCodec.scores`.
    """
    k = min(10, docs.shape[0])
    truth = np.argsort(-(q @ docs.T), axis=1, kind="stable")[:, :k]
    out = {}
    for name, codec in candidates.items():
        ranked = np.argsort(-codec.scores(q, docs), axis=1, kind="stable")[:, :k]
        hits = [len(set(a) & set(b)) for a, b in zip(ranked, truth, strict=True)]
        out[name] = float(np.mean(hits) / k)
    return out


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

    Queries, never stored, are mapped by ``query_map`` (the rotation, or the
    least-squares map of :func:`lstsq_query_map`) and written on a fine uniform
    grid of ``query_planes`` planes (:func:`uniform_query_planes`): asymmetric
    scoring that ranks as the float query does.

    Args:
        rotation: float32 ``(d, m)`` with orthonormal columns (:func:`itq_rotation`).
        planes: bits per dimension ``P``.
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
        self.weights = "fixed" if center is None else "per_document"
        self.metric = "cosine" if center is None else "ip"
        self.fit_report: dict[str, Any] = {}

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        planes: int,
        rotation: str = "itq",
        query_map: str = "auto",
        centring: str = "auto",
        seed: int = 0,
        progress: bool = False,
    ) -> GridCodec:
        """Fit on float32 ``(n, d)`` embeddings (no labels; seconds for 100k rows).

        Args:
            rotation: ``itq`` (default), ``random`` or ``identity``.
            query_map: ``rotation``, ``lstsq`` (:func:`lstsq_query_map` on at
                most 20,000 rows), ``listwise`` (:func:`listwise_query_map`,
                ``P <= 2``) or ``auto``.
            centring: ``no``, ``yes`` (``P <= 2``: centred, unbiased scores) or ``auto``.

        ``auto`` keeps whichever candidate ranks the corpus's own held-out rows
        best (:func:`self_recall`); the figures land in ``fit_report``.
        ``progress`` shows a bar over the candidates and the final fit.
        """
        with _one_blas_thread():
            return cls._fit(x, planes, rotation, query_map, centring, seed, progress)

    @classmethod
    def _fit(
        cls,
        x: np.ndarray,
        planes: int,
        rotation: str,
        query_map: str,
        centring: str,
        seed: int,
        progress: bool = False,
    ) -> GridCodec:
        from tqdm.auto import tqdm

        x = np.asarray(x, dtype=np.float32)
        if query_map not in ("auto", "rotation", "lstsq", "listwise"):
            raise ValueError(
                f"query_map must be auto, rotation, lstsq or listwise, got {query_map!r}"
            )
        if query_map == "listwise" and planes > 2:
            raise ValueError(f"query_map='listwise' needs at most 2 planes, got {planes}")
        if centring not in ("auto", "yes", "no"):
            raise ValueError(f"centring must be auto, yes or no, got {centring!r}")
        rng = np.random.default_rng(seed)
        sub = x[rng.permutation(x.shape[0])[:20000]]  # fitting and choosing need no more
        several = query_map == "auto" or (centring == "auto" and planes <= 2)
        # Held-out rows judge the candidates: rows a candidate was fitted on would
        # favour the least-squares map, which has seen them.
        held = min(500, sub.shape[0] // 10) if several else 0
        kinds = []
        if centring != "yes":
            kinds += [k for k in ("rotation", "lstsq") if query_map in ("auto", k)]
            if planes <= 2 and query_map in ("auto", "listwise"):
                kinds.append("listwise")
        if centring != "no" and planes <= 2:
            if query_map != "listwise":
                kinds.append("centred")
            if query_map in ("auto", "listwise"):
                kinds.append("centred-listwise")
        if not kinds:
            raise ValueError(f"centring='yes' needs at most 2 planes, got {planes}")
        report: dict[str, Any] = {"rotation": rotation}
        best = kinds[0]
        judged = len(kinds) > 1 and held > 0
        bar = tqdm(
            total=len(kinds) * judged + 1,
            desc=f"fitting grid codec ({planes} planes)",
            disable=not progress,
        )
        if judged:
            rest, cache = sub[held:], {}
            candidates = {}
            for k in kinds:
                candidates[k] = cls._candidate(k, rest, planes, rotation, seed, cache)
                bar.update()
            scores = self_recall(sub[:held], rest, candidates)
            report["self_recall@10"] = scores
            best = max(scores, key=lambda name: scores[name])  # first wins a tie
        report["chosen"] = best
        # The winner is fitted again on every row: an ITQ rotation fitted on fewer
        # rows lands in another local optimum (measured: +-0.01 recall of top-10).
        codec = cls._candidate(best, sub, planes, rotation, seed)
        bar.update()
        bar.close()
        codec.fit_report = report
        return codec

    @classmethod
    def _candidate(
        cls,
        kind: str,
        x: np.ndarray,
        planes: int,
        rotation: str,
        seed: int,
        cache: dict[str, Any] | None = None,
    ) -> GridCodec:
        """One candidate of :meth:`fit` fitted on ``x``: ``rotation``, ``lstsq``, ``listwise``,
        ``centred`` or ``centred-listwise``.

        ``cache`` shares the rotations between candidates fitted on the same rows.
        """
        cache = {} if cache is None else cache
        if kind in ("centred", "centred-listwise"):
            mu = x.mean(0)
            if "centred" not in cache:
                cache["centred"] = cls(_rotation(x - mu, rotation, seed), planes, center=mu)
            codec = cache["centred"]
            return codec.with_listwise_map(x, seed) if kind == "centred-listwise" else codec
        if "rot" not in cache:
            cache["rot"] = _rotation(x, rotation, seed)
        rot = cache["rot"]
        if kind == "rotation":
            return cls(rot, planes)
        if kind == "listwise":
            return cls(rot, planes).with_listwise_map(x, seed)
        levels, _ = grid_levels(x @ rot, planes)
        return cls(rot, planes, lstsq_query_map(x, levels, planes))

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

    def with_listwise_map(self, x: np.ndarray, seed: int = 0, **options: Any) -> GridCodec:
        """This codec with the query map of :func:`listwise_query_map` trained on rows ``x``.

        ``options`` go to :func:`listwise_query_map` (``steps``, ``batch``, ...).
        """
        qmap = listwise_query_map(x, self.code_values(x), self.rotation, seed=seed, **options)
        return type(self)(self.rotation, self.planes, qmap, self.query_planes, self.center)

    def encode(self, x: np.ndarray) -> Any:
        """Document codes: uint64 ``(n, P, ceil(m/64))``; centred, scales float32 ``(n, P)``."""
        from binsearch.codecs import Codes

        levels, factor = self._levels(x)
        words = pack_codes(levels_to_signs(levels, self.planes))
        if factor is None:
            return Codes(words, None)
        plane_w = 2.0 ** -np.arange(self.planes, dtype=np.float32)
        return Codes(words, np.ascontiguousarray(factor[:, None] * plane_w[None, :]))

    def encode_queries(self, q: np.ndarray) -> Any:
        """Query codes ``(nq, query_planes, words)`` with per-query plane weights as ``scales``."""
        from binsearch.codecs import Codes

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


def _one_blas_thread() -> Any:
    """Single-threaded BLAS for the fit's small SVDs and products.

    On a busy 2-core machine a 2-thread OpenBLAS SVD of 384 x 384 measured
    1.8 s against 0.12 s single-threaded (its threads spin-wait for each
    other); the fit's matrices are too small to gain from threads anyway.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _rotation(x: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """A ``(d, d)`` rotation fitted on ``x``: ``itq``, ``random`` or ``identity``."""
    d = x.shape[1]
    if kind == "itq":
        return itq_rotation(x, seed=seed)
    if kind == "random":
        rng = np.random.default_rng(seed)
        return np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    if kind == "identity":
        return np.eye(d, dtype=np.float32)
    raise ValueError(f"rotation must be itq, random or identity, got {kind!r}")
