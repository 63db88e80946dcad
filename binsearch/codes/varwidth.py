"""Bits where the variance is: planes of decreasing width over principal directions.

The ``varwidth`` codec projects an embedding on its principal directions
(uncentred, ordered by variance) and gives direction ``k`` its own number of
bits ``b_k`` (0 to :data:`MAX_BITS`). Direction ``k``'s value is written as
``c0_k + sum_i c_{k,i} s_i`` with ``s_i = ±1``: an additive binary scalar
quantizer whose offset and coefficients are fitted to that direction
(alternating nearest-level assignment and least squares, started from the
MSE-optimal uniform grid for a Gaussian). The widths ``b_k`` are an exact
allocation (:func:`allocate_bits`, dynamic programming) that minimises the
estimated inner-product error ``sum_k E[z_k^2] mse_k(b_k)`` under the budget
of stored bits; the high-variance directions get many bits, the tail none.

**Layout in the code format.** Bit ``i`` of every direction with ``b_k > i``
forms plane ``i``: plane 0 spans every kept direction, plane 1 those with two
bits or more, and so on, a plane narrower than the last. ``BinaryIndex`` stores
planes of one width, so the planes are stored back to back as *one* plane of
``m = sum_k b_k + 1`` bits (the extra bit is always set: it carries the offset
``<q, c0>``, so scores estimate ``<q, x>``), padded once to whole 64-bit words.
The padding bits are clear in every document and are counted in ``m``: the
index's ``bits_per_vector`` is every stored bit, and nothing else is stored
(no norm, no scale: ``metric="ip"``, fixed weights). A narrower plane costs
proportionally fewer popcounts, since the scan's work is the code's words.

Queries are never stored: a query ``q`` becomes the slot values
``Q_s = <q, u_k> c_{k,i}`` (``u_k`` the direction of slot ``s``), so
``score = sum_s Q_s (2 bit_s - 1) = <q, x̂>``. ``CodedIndex.topk`` scans them as
a float query (:meth:`VarWidthCodec.float_queries`, fast-scan tables and exact
re-scoring); :meth:`VarWidthCodec.encode_queries` writes them on a uniform grid
of :data:`QUERY_PLANES` planes (16: the slot values span a wide range, and 8
planes measured 0.02-0.12 below float recall at 4 bits) for code-query paths.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from binsearch.codes.base import Codes, check_embeddings
from index import pack_codes

MAX_BITS = 8  # bits one direction may take
QUERY_PLANES = 16
# MSE-optimal uniform quantizer step of a unit Gaussian, by bits (Max 1960): the starting grid.
GAUSS_STEP = {1: 1.596, 2: 0.996, 3: 0.586, 4: 0.335, 5: 0.188, 6: 0.104, 7: 0.057, 8: 0.031}


def allocate_bits(cost: np.ndarray, budget: int) -> tuple[np.ndarray, float]:
    """The exact allocation: ``b_k`` minimising ``sum_k cost[k, b_k]`` with ``sum_k b_k <= budget``.

    Dynamic programming over directions and bits used (``O(d * budget * B)``);
    ties keep the fewest bits on later directions.

    Args:
        cost: float ``(d, B + 1)``, the error of direction ``k`` at ``b`` bits.
        budget: total bits (``>= 0``).

    Returns:
        ``bits`` int64 ``(d,)`` and the minimal total cost.

    Example: ``allocate_bits(np.array([[4.0, 1, 0], [2.0, 0.5, 0]]), 2)`` gives
    ``([1, 1], 1.5)``.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[1] < 1:
        raise ValueError(f"cost must be a (d, B + 1) array, got shape {cost.shape}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    d, nb = cost.shape
    best = np.full(budget + 1, np.inf)
    best[0] = 0.0  # best[u]: least cost of the directions so far using exactly u bits
    choice = np.zeros((d, budget + 1), dtype=np.int8)
    for k in range(d):
        nxt = np.full(budget + 1, np.inf)
        for b in range(min(nb, budget + 1)):
            cand = np.full(budget + 1, np.inf)
            cand[b:] = best[: budget + 1 - b] + cost[k, b]
            better = cand < nxt
            nxt[better] = cand[better]
            choice[k, better] = b
        best = nxt
    used = int(np.argmin(best))
    total = float(best[used])
    bits = np.zeros(d, dtype=np.int64)
    for k in range(d - 1, -1, -1):
        bits[k] = choice[k, used]
        used -= bits[k]
    return bits, total


def _sign_table(b: int) -> np.ndarray:
    """``(2^b, b)`` ±1: the bits of level ``l`` (most significant first) as signs."""
    lv = np.arange(2**b)
    return (2 * ((lv[:, None] >> np.arange(b - 1, -1, -1)[None, :]) & 1) - 1).astype(np.float64)


def _nearest_level(z: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the nearest of ``levels`` (any order) to each of ``z``."""
    order = np.argsort(levels, kind="stable")
    mids = (levels[order][1:] + levels[order][:-1]) / 2
    return order[np.searchsorted(mids, z)]


def nearest_signs(z: np.ndarray, offset: float, coefs: np.ndarray) -> np.ndarray:
    """Signs ``(n, b)`` of the level ``offset + sum_i coefs_i s_i`` nearest to each of ``z``."""
    table = _sign_table(len(coefs))
    levels = offset + table @ np.asarray(coefs, dtype=np.float64)
    return table[_nearest_level(np.asarray(z, dtype=np.float64), levels)]


def fit_levels(z: np.ndarray, bits: int, iters: int = 4) -> tuple[float, np.ndarray, float]:
    """An additive binary quantizer of ``bits`` bits for the values ``z`` ``(n,)``.

    Starts from the Gaussian MSE-optimal uniform grid (coefficients
    ``step * 2^(b-2-i)``, offset the mean) and alternates nearest levels with a
    least-squares refit of the offset and coefficients (each step can only
    lower the error; the normal equations are summed per level, O(n + 4^b)).
    Returns ``(offset, coefs (bits,), mse)``; at 0 bits the offset is the mean
    and the error the variance.
    """
    z = np.asarray(z, dtype=np.float64)
    if bits == 0:
        return float(z.mean()), np.zeros(0), float(z.var())
    design = np.concatenate([np.ones((2**bits, 1)), _sign_table(bits)], axis=1)  # per level
    step = (z.std() + 1e-12) * GAUSS_STEP[bits]
    sol = np.concatenate([[z.mean()], step * 2.0 ** (bits - 2 - np.arange(bits))])
    for _ in range(iters):
        idx = _nearest_level(z, design @ sol)
        count = np.bincount(idx, minlength=2**bits).astype(np.float64)
        total = np.bincount(idx, weights=z, minlength=2**bits)
        gram = design.T @ (design * count[:, None])
        sol = np.linalg.lstsq(gram, design.T @ total, rcond=None)[0]
    levels = design @ sol
    err = float(((z - levels[_nearest_level(z, levels)]) ** 2).mean())
    return float(sol[0]), sol[1:], err


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def _unb64(blob: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        return np.frombuffer(base64.b64decode(blob), dtype="<f4").reshape(shape).astype(np.float32)
    except ValueError as exc:
        raise ValueError(f"varwidth codec {what} is damaged ({exc})") from exc


class VarWidthCodec:
    """Principal directions with their own bit widths, as one plane of concatenated planes.

    Args:
        basis: float32 ``(d, r)`` orthonormal columns, the kept directions.
        bits: int ``(r,)``, bits per kept direction (1 .. :data:`MAX_BITS`).
        offsets: float32 ``(r,)``, each direction's level offset ``c0_k``.
        coefs: float32 ``(r, MAX_BITS)``, level coefficients (``coefs[k, :bits[k]]`` used).
        rest: float32 ``(d,)``, the mean of the dropped directions (a constant of every code).
        query_planes: planes of a written query (default 16).
    """

    name = "varwidth"
    planes = 1
    scaling = "fixed"
    metric = "ip"

    def __init__(
        self,
        basis: np.ndarray,
        bits: np.ndarray,
        offsets: np.ndarray,
        coefs: np.ndarray,
        rest: np.ndarray | None = None,
        query_planes: int = QUERY_PLANES,
    ) -> None:
        self.basis = np.ascontiguousarray(basis, dtype=np.float32)
        if self.basis.ndim != 2:
            raise ValueError(f"basis must be a (d, r) matrix, got shape {self.basis.shape}")
        self.dim, r = self.basis.shape
        self.bits = np.asarray(bits, dtype=np.int64).reshape(-1)
        if self.bits.shape != (r,) or (self.bits < 1).any() or (self.bits > MAX_BITS).any():
            raise ValueError(f"bits must be {r} integers in 1..{MAX_BITS}")
        self.offsets = np.asarray(offsets, dtype=np.float32).reshape(r)
        self.coefs = np.asarray(coefs, dtype=np.float32).reshape(r, MAX_BITS)
        self.rest = np.zeros(self.dim, np.float32) if rest is None else np.asarray(rest, np.float32)
        if self.rest.shape != (self.dim,):
            raise ValueError(f"rest must have {self.dim} entries")
        if not 2 <= query_planes <= 24:
            raise ValueError(f"query_planes must be 2 to 24, not {query_planes}")
        self.query_planes = int(query_planes)
        # Plane-major slots: plane i holds bit i of every direction with more than i bits.
        self.widths = [int((self.bits > i).sum()) for i in range(int(self.bits.max(initial=0)))]
        self.slot_dim = np.concatenate(
            [np.flatnonzero(self.bits > i) for i in range(len(self.widths))]
        )
        self.slot_plane = np.repeat(np.arange(len(self.widths)), self.widths)
        self.slot_coef = self.coefs[self.slot_dim, self.slot_plane].astype(np.float64)
        self.slot_of = np.full((r, MAX_BITS), -1, dtype=np.int64)  # slot of bit i of direction k
        self.slot_of[self.slot_dim, self.slot_plane] = np.arange(len(self.slot_dim))
        self.n_slots = len(self.slot_dim) + 1  # + the constant bit
        self.m = 64 * -(-self.n_slots // 64)
        self.fit_report: dict[str, Any] = {}

    @classmethod
    def fit(cls, x: np.ndarray, budget: int, **options: Any) -> VarWidthCodec:
        """Fit on float32 ``(n, d)`` rows within ``budget`` stored bits per vector (see :func:`fit_varwidth`)."""
        return fit_varwidth(x, budget, **options)

    @property
    def bits_per_vector(self) -> int:
        """Every stored bit of a document: the code words (padding included), nothing else."""
        return self.m

    def _check(self, x: np.ndarray) -> np.ndarray:
        return check_embeddings(x, self.dim)

    def signs(self, x: np.ndarray) -> np.ndarray:
        """The document bits, bool ``(n, m)`` in slot order (constant bit set, padding clear)."""
        z = self._check(x).astype(np.float64) @ self.basis.astype(np.float64)
        out = np.zeros((z.shape[0], self.m), dtype=bool)
        out[:, self.n_slots - 1] = True
        for k in range(z.shape[1]):
            b = int(self.bits[k])
            s = nearest_signs(z[:, k], float(self.offsets[k]), self.coefs[k, :b])
            out[:, self.slot_of[k, :b]] = s > 0
        return out

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """What a code stands for, float64 ``(n, d)``: ``x̂`` with ``<q, x̂>`` the index's score."""
        s = 2.0 * self.signs(x)[:, : self.n_slots - 1] - 1.0
        z = np.tile(self.offsets.astype(np.float64), (s.shape[0], 1))
        np.add.at(z.T, self.slot_dim, (s * self.slot_coef[None, :]).T)
        return z @ self.basis.T.astype(np.float64) + self.rest

    def scores(self, q: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Float scores ``(nq, n)``: ``<q, x̂>``, what the index computes up to query rounding."""
        return self._check(q).astype(np.float64) @ self.reconstruct(x).T

    def query_values(self, q: np.ndarray) -> np.ndarray:
        """Float64 ``(nq, m)`` slot values ``Q`` with ``<Q, 2 bits - 1> = <q, x̂>``."""
        q = self._check(q).astype(np.float64)
        zq = q @ self.basis.astype(np.float64)
        out = np.zeros((q.shape[0], self.m))
        out[:, : self.n_slots - 1] = zq[:, self.slot_dim] * self.slot_coef[None, :]
        out[:, self.n_slots - 1] = zq @ self.offsets + q @ self.rest
        return out

    def float_queries(self, q: np.ndarray) -> np.ndarray:
        """Float32 ``(nq, m)`` slot values, scanned as float queries (``CodedIndex.topk``)."""
        return self.query_values(q).astype(np.float32)

    def encode(self, x: np.ndarray) -> Codes:
        """Document codes: uint64 ``(n, 1, m / 64)``; no scales."""
        return Codes(pack_codes(self.signs(x)[:, None, :]), None)

    def encode_queries(self, q: np.ndarray) -> Codes:
        """Query codes ``(nq, query_planes, m / 64)`` and per-query plane weights (uniform grid)."""
        return quantize_query_values(self.query_values(q), self.query_planes)

    def config(self) -> dict[str, Any]:
        return {
            "codec": self.name,
            "dim": self.dim,
            "planes": 1,
            "direction_bits": [int(b) for b in self.bits],
            "basis": _b64(self.basis),
            "offsets": _b64(self.offsets),
            "coefs": _b64(self.coefs),
            "rest": _b64(self.rest),
            "query_planes": self.query_planes,
        }

    @classmethod
    def from_config_parts(
        cls,
        dim: int,
        direction_bits: list[int],
        basis: str,
        offsets: str,
        coefs: str,
        rest: str,
        query_planes: int = QUERY_PLANES,
    ) -> VarWidthCodec:
        """Rebuild from :meth:`config`'s fields (arrays as base64 little-endian float32)."""
        r = len(direction_bits)
        return cls(
            _unb64(basis, (dim, r), "basis"),
            np.asarray(direction_bits),
            _unb64(offsets, (r,), "offsets"),
            _unb64(coefs, (r, MAX_BITS), "coefficients"),
            _unb64(rest, (dim,), "rest"),
            query_planes,
        )


def quantize_query_values(values: np.ndarray, planes: int) -> Codes:
    """Slot values ``(nq, m)`` on a uniform grid of ``planes`` planes: codes and plane weights.

    ``sum_p w_p (2 bit_p - 1)`` is within half a step (``peak / (2^planes - 1)``) of each value.
    """
    half = 2 ** (planes - 1)
    peak = np.abs(values).max(1, keepdims=True)
    t = (half - 0.5) / np.where(peak > 0, peak, 1.0)
    levels = np.clip(np.floor(values * t) + half, 0, 2 * half - 1).astype(np.int64)
    shifts = np.arange(planes - 1, -1, -1)
    signs = ((levels[:, None, :] >> shifts[None, :, None]) & 1).astype(bool)
    weights = 2.0 ** (planes - 2 - np.arange(planes))[None, :] / t
    return Codes(pack_codes(signs), weights.astype(np.float32))


def fit_varwidth(
    x: np.ndarray,
    budget: int,
    max_bits: int = MAX_BITS,
    iters: int = 4,
    max_rows: int = 20000,
    seed: int = 0,
    progress: bool = False,
) -> VarWidthCodec:
    """Fit a :class:`VarWidthCodec` storing at most ``budget`` bits per vector.

    Principal directions of the uncentred rows (at most ``max_rows`` random
    ones), each direction's quantizer at every width 0 .. ``max_bits``
    (:func:`fit_levels`), then the exact allocation (:func:`allocate_bits`) of
    ``64 * floor(budget / 64) - 1`` bits (whole words, less the constant bit)
    weighted by each direction's second moment ``E[z_k^2]``. No labels.
    """
    from tqdm.auto import tqdm

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected at least 2 embeddings as an (n, d) array, got {x.shape}")
    if budget < 64:
        raise ValueError(f"a varwidth code needs a budget of at least 64 bits, got {budget}")
    if not 1 <= max_bits <= MAX_BITS:
        raise ValueError(f"max_bits must be 1 to {MAX_BITS}, got {max_bits}")
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_rows:
        x = x[np.sort(rng.choice(x.shape[0], max_rows, replace=False))]
    xd = x.astype(np.float64)
    vectors = np.linalg.eigh(xd.T @ xd)[1][:, ::-1]  # by decreasing second moment
    z = xd @ vectors
    d = z.shape[1]
    fits: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
    cost = np.empty((d, max_bits + 1))
    weight = (z**2).mean(0)  # a query's expected energy along the direction
    for k in tqdm(range(d), desc="fitting varwidth levels", disable=not progress):
        for b in range(max_bits + 1):
            offset, coefs, mse = fit_levels(z[:, k], b, iters)
            fits[k, b] = (offset, coefs)
            cost[k, b] = weight[k] * mse
    bits, err = allocate_bits(cost, 64 * (budget // 64) - 1)
    keep = np.flatnonzero(bits)
    coefs = np.zeros((len(keep), MAX_BITS))
    for j, k in enumerate(keep):
        coefs[j, : bits[k]] = fits[k, int(bits[k])][1]
    dropped = np.flatnonzero(bits == 0)
    rest = vectors[:, dropped] @ np.array([fits[k, 0][0] for k in dropped])
    codec = VarWidthCodec(
        vectors[:, keep], bits[keep], [fits[k, int(bits[k])][0] for k in keep], coefs, rest
    )
    codec.fit_report = {
        "budget": int(budget),
        "bits_per_vector": codec.m,
        "plane_widths": codec.widths,
        "directions_by_bits": {int(b): int((bits == b).sum()) for b in np.unique(bits)},
        "estimated_error": err,
        "error_all_dropped": float(cost[:, 0].sum()),
    }
    return codec
