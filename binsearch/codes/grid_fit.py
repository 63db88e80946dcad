"""Fitting the grid codec: rotations, bit allocation, query maps, and the held-out judge.

:func:`fit_grid` builds candidate
codecs on the corpus's own rows and keeps the one that best ranks rows held out
of fitting (recall of their float top-10; no labels, no evaluation queries):

* the **shape** ``P' x m`` for a budget of ``P`` bits per dimension: the full
  width ``P x d``, or fewer dimensions (the top principal directions) with more
  planes, ``P' x m <= P x d`` code bits with ``m`` a multiple of 64 (the index
  stores whole 64-bit words). Measured on held-out rows, the narrower, finer
  grid wins at every width: fewer bits are lost to the low-variance
  directions than are saved by a finer grid in the others;
* the **query map** (the rotation, least squares, or trained listwise) and
  **centring** (extended RaBitQ's unbiased estimate, ``P' <= 2``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from binsearch.codes.grid import GridCodec, grid_levels, level_values

MAX_PLANES = 6  # the exact grid sweep costs O(m 4^P) a row: 6 planes is ~1 s per 5k rows


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


def pca_basis(x: np.ndarray, m: int) -> np.ndarray:
    """The top ``m`` principal directions of uncentred rows: float32 ``(d, m)``, orthonormal."""
    x = np.asarray(x, dtype=np.float64)
    _, vectors = np.linalg.eigh(x.T @ x)
    return np.ascontiguousarray(vectors[:, ::-1][:, :m], dtype=np.float32)


def grid_shapes(planes: int, d: int) -> list[tuple[int, int]]:
    """Shapes ``(P', m)`` within ``planes x d`` code bits: the full width, then narrower ones.

    The narrower shapes keep ``m`` a multiple of 64 and take as many planes as
    fit (at most :data:`MAX_PLANES`), the two widest such. For ``d = 384``:
    1 bit ``1x384, 2x192, 3x128``; 2 bits ``2x384, 3x256, 4x192``; 4 bits
    ``4x384, 6x256``.
    """
    out = [(planes, d)]
    budget = planes * 64 * -(-d // 64)  # whole words, as the index stores them
    for m in range(64 * ((d - 1) // 64), 0, -64):
        p = budget // m
        if planes < p <= MAX_PLANES and len(out) < 3:
            out.append((p, m))
    return out


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
    and 0.884 -> 0.891; at 4 planes it lost 0.02 on both, so :func:`fit_grid`
    offers it at ``P' <= 2`` only. Runs torch on one thread.

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


def self_recall(q: np.ndarray, docs: np.ndarray, candidates: dict[str, Any]) -> dict[str, float]:
    """Recall of the float top-10 of queries ``q`` among ``docs``, for each candidate codec.

    :func:`fit_grid` calls it with corpus rows held out of fitting as
    queries (no labels, no evaluation queries) and keeps the best candidate;
    each candidate scores by :meth:`GridCodec.scores`.
    """
    return {name: float(r.mean()) for name, r in self_recall_per_query(q, docs, candidates).items()}


def self_recall_per_query(
    q: np.ndarray, docs: np.ndarray, candidates: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Per-query recall of the float top-10, float64 ``(nq,)`` per candidate (see :func:`self_recall`)."""
    k = min(10, docs.shape[0])
    truth = np.argsort(-(q @ docs.T), axis=1, kind="stable")[:, :k]
    out = {}
    for name, codec in candidates.items():
        ranked = np.argsort(-codec.scores(q, docs), axis=1, kind="stable")[:, :k]
        hits = [len(set(a) & set(b)) for a, b in zip(ranked, truth, strict=True)]
        out[name] = np.asarray(hits, dtype=np.float64) / k
    return out


def widest_within_noise(per_query: dict[str, np.ndarray]) -> str:
    """The first (widest) shape whose held-out recall is within one standard error of the best.

    A narrower shape keeps only the corpus's top principal directions; the
    held-out rows are corpus rows, so they cannot see what real queries lose
    in the dropped directions. It must therefore win by more than the noise
    of the paired difference (``std(best - shape) / sqrt(nq)``), or the wider
    shape stays (measured: on SciFact, 3x128 and 2x192 tie on held-out rows,
    0.837 vs 0.834, while on the judged queries 2x192 is ahead).
    """
    names = list(per_query)
    best = max(names, key=lambda n: per_query[n].mean())
    for name in names:
        diff = per_query[best] - per_query[name]
        if diff.mean() <= diff.std() / np.sqrt(len(diff)):
            return name
    return best


def fit_grid(
    x: np.ndarray,
    planes: int,
    rotation: str = "itq",
    query_map: str = "auto",
    centring: str = "auto",
    widths: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> GridCodec:
    """Fit a :class:`~binsearch.codes.grid.GridCodec` of ``planes`` bits per dimension (see the module).

    Args:
        x: float32 ``(n, d)`` embeddings (at most 20,000 random rows are used).
        planes: the budget, ``P`` bits per dimension (``P x d`` code bits).
        rotation: ``itq`` (default), ``random`` or ``identity``.
        query_map: ``rotation``, ``lstsq`` (:func:`lstsq_query_map`), ``listwise``
            (:func:`listwise_query_map`, ``P' <= 2``) or ``auto``.
        centring: ``no``, ``yes`` (``P' <= 2``: centred, unbiased scores) or ``auto``.
        widths: ``auto`` (judge the shapes of :func:`grid_shapes`) or ``full`` (``P x d``).

    Two rounds on 10% held-out rows (at most 500): the shapes with the plain
    rotation (a narrower one must win by more than the noise:
    :func:`widest_within_noise`), then the query maps and centring at that shape; the
    winner is fitted again on all rows. ``fit_report`` holds the figures.
    """
    with _one_blas_thread():
        return _fit(x, planes, rotation, query_map, centring, widths, seed, progress)


def _kinds(planes: int, query_map: str, centring: str) -> list[str]:
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
    return kinds


def _fit(
    x: np.ndarray,
    planes: int,
    rotation: str,
    query_map: str,
    centring: str,
    widths: str,
    seed: int,
    progress: bool,
) -> GridCodec:
    from tqdm.auto import tqdm

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected at least 2 embeddings as an (n, d) array, got {x.shape}")
    if not 1 <= planes <= 8:
        raise ValueError(f"the grid codec takes 1 to 8 bits per dimension, not {planes}")
    if query_map not in ("auto", "rotation", "lstsq", "listwise"):
        raise ValueError(f"query_map must be auto, rotation, lstsq or listwise, got {query_map!r}")
    if centring not in ("auto", "yes", "no"):
        raise ValueError(f"centring must be auto, yes or no, got {centring!r}")
    if widths not in ("auto", "full"):
        raise ValueError(f"widths must be auto or full, got {widths!r}")
    shapes = grid_shapes(planes, x.shape[1]) if widths == "auto" else [(planes, x.shape[1])]
    if query_map == "listwise" or centring == "yes":  # both need P' <= 2
        shapes = [s for s in shapes if s[0] <= 2]
        if not shapes:
            raise ValueError(
                f"query_map='listwise' and centring='yes' need at most 2 planes, got {planes}"
            )
    rng = np.random.default_rng(seed)
    sub = x[rng.permutation(x.shape[0])[:20000]]  # fitting and choosing need no more
    # Held-out rows judge the candidates: rows a candidate was fitted on would
    # favour the least-squares map, which has seen them.
    held = min(500, sub.shape[0] // 10)
    rest, cache = sub[held:], {}
    report: dict[str, Any] = {"rotation": rotation}
    first_kinds = _kinds(shapes[0][0], query_map, centring)
    bar = tqdm(
        total=len(shapes) * (len(shapes) > 1) + len(first_kinds) + 1,
        desc=f"fitting grid codec ({planes} bits per dimension)",
        disable=not progress,
    )
    shape = shapes[0]
    if len(shapes) > 1 and held > 0:
        kind0 = "centred" if centring == "yes" else "rotation"
        if query_map not in ("auto", "rotation"):
            kind0 = "centred-listwise" if centring == "yes" else query_map
        found = {}
        for p, m in shapes:
            found[f"{p}x{m}"] = _candidate(kind0, rest, p, m, rotation, seed, cache)
            bar.update()
        per_query = self_recall_per_query(sub[:held], rest, found)
        report["shape_self_recall@10"] = {k: float(v.mean()) for k, v in per_query.items()}
        shape = shapes[list(per_query).index(widest_within_noise(per_query))]
    p, m = shape
    report["shape"] = f"{p}x{m}"
    kinds = _kinds(p, query_map, centring)
    best = kinds[0]
    if len(kinds) > 1 and held > 0:
        candidates = {}
        for k in kinds:
            candidates[k] = _candidate(k, rest, p, m, rotation, seed, cache)
            bar.update()
        scores = self_recall(sub[:held], rest, candidates)
        report["self_recall@10"] = scores
        best = max(scores, key=lambda name: scores[name])  # first wins a tie
    report["chosen"] = best
    # The winner is fitted again on every row: an ITQ rotation fitted on fewer
    # rows lands in another local optimum (measured: +-0.01 recall of top-10).
    codec = _candidate(best, sub, p, m, rotation, seed)
    bar.update(bar.total - bar.n)
    bar.close()
    codec.fit_report = report
    return codec


def _candidate(
    kind: str,
    x: np.ndarray,
    planes: int,
    m: int,
    rotation: str,
    seed: int,
    cache: dict[str, Any] | None = None,
) -> GridCodec:
    """One candidate fitted on ``x``: ``rotation``, ``lstsq``, ``listwise``, ``centred`` or
    ``centred-listwise``, of ``planes`` planes over ``m`` dimensions.

    ``cache`` shares the rotations between candidates fitted on the same rows.
    """
    cache = {} if cache is None else cache
    if kind in ("centred", "centred-listwise"):
        mu = x.mean(0)
        key = f"centred{planes}x{m}"
        if key not in cache:
            cache[key] = GridCodec(_rotation(x - mu, rotation, seed, m), planes, center=mu)
        codec = cache[key]
        return with_listwise_map(codec, x, seed) if kind == "centred-listwise" else codec
    key = f"rot{m}"
    if key not in cache:
        cache[key] = _rotation(x, rotation, seed, m)
    rot = cache[key]
    if kind == "rotation":
        return GridCodec(rot, planes)
    if kind == "listwise":
        return with_listwise_map(GridCodec(rot, planes), x, seed)
    levels, _ = grid_levels(x @ rot, planes)
    return GridCodec(rot, planes, lstsq_query_map(x, levels, planes))


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


def _rotation(x: np.ndarray, kind: str, seed: int, m: int | None = None) -> np.ndarray:
    """A ``(d, m)`` map with orthonormal columns fitted on ``x``: ``itq``, ``random`` or ``identity``.

    With ``m < d`` the rows are first projected on their top ``m`` principal
    directions (:func:`pca_basis`), and the rotation acts within them.
    """
    d = x.shape[1]
    if m is not None and m < d:
        basis = pca_basis(x, m)
        return np.ascontiguousarray(basis @ _rotation(x @ basis, kind, seed), dtype=np.float32)
    if kind == "itq":
        return itq_rotation(x, seed=seed)
    if kind == "random":
        rng = np.random.default_rng(seed)
        return np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    if kind == "identity":
        return np.eye(d, dtype=np.float32)
    raise ValueError(f"rotation must be itq, random or identity, got {kind!r}")


def with_listwise_map(codec: GridCodec, x: np.ndarray, seed: int = 0, **options: Any) -> GridCodec:
    """``codec`` with the query map of :func:`listwise_query_map` trained on rows ``x``.

    ``options`` go to :func:`listwise_query_map` (``steps``, ``batch``, ...).
    """
    qmap = listwise_query_map(x, codec.code_values(x), codec.rotation, seed=seed, **options)
    return GridCodec(codec.rotation, codec.planes, qmap, codec.query_planes, codec.center)
