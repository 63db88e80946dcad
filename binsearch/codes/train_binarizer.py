"""Training the recurrent binarizer from float embeddings alone (no labels).

The loss is list-wise distillation: for a batch of anchor embeddings (used as
queries) and a candidate list made of every anchor's float nearest neighbours
plus random rows, the code scores must reproduce the float score distribution::

    T_ij = softmax_j(<x_i, x_j> / tau)                       teacher: float cosine
    S_ij = softmax_j(s * <A(x_i), v_j> / ||v_j||)            student: query vs code value
    loss = mean_i KL(T_i || S_i)                             (self pairs masked out)

``v_j = sum_p alpha_jp s_jp`` is the document's code value (straight-through
sign), ``s`` a learned inverse temperature. Mined neighbours make the
negatives hard, which is what top-10 fidelity needs.

Compatible training adds a cross term: a frozen old model's codes ``v_old``
of the same documents stand in for ``v`` (``loss += cross * KL(T || S_old)``),
so the new model's queries rank old codes as the new float model would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from binsearch.codes.binarizer import BinarizerError, RecurrentBinarizer, _check_rows

MIN_ROWS = 64


@dataclass
class TrainConfig:
    """Training knobs; the defaults train 100k rows in well under two minutes on 2 cores."""

    steps: int = 200
    batch: int = 128  # anchors per step
    neighbours: int = 16  # mined float neighbours per anchor in the candidate list
    randoms: int = 256  # random candidates per step
    tau: float = 0.05  # teacher temperature
    lr: float = 3e-5  # measured: 1e-4 already drifts the rotation and loses recall
    max_rows: int = 20000  # rows used for mining and training (random subset beyond)
    cross: float = 1.0  # weight of the compatibility term
    ridge: float = 0.1  # compatible start: ridge of the least-squares map, relative
    seed: int = 0
    itq_iters: int = 20
    center: bool | None = None  # ITQ start: subtract the mean (None: for <= 2 planes)


def _old_codes(
    old: RecurrentBinarizer, old_x: np.ndarray | None, keep: np.ndarray, n_all: int
) -> tuple[int, Any, np.ndarray]:
    """For compatible training: the old model's ``m``, unit code values and code space of its rows."""
    if old_x is None:
        raise BinarizerError(
            "compatible training needs the old model's embeddings of the same rows"
        )
    old_x = _check_rows(old_x, old.dim)
    if old_x.shape[0] != n_all:
        raise BinarizerError(
            f"old and new embeddings must hold the same rows, got {old_x.shape[0]} and {n_all}"
        )
    old_x = old_x[keep]
    old.eval()
    with torch.no_grad():
        s, a = old(torch.from_numpy(old_x))
        return old.m, _unit_values(s, a), old.code_space(torch.from_numpy(old_x)).numpy()


def _batch(
    rng: np.random.Generator, cfg: TrainConfig, xt: Any, knn: Any, qt: Any, qknn: Any
) -> tuple[Any, Any, Any]:
    """One step's anchors, candidate rows (anchors, their float neighbours, random rows) and
    the mask of each anchor's own row; with query anchors ``qt``, half a batch of those too."""
    n = xt.shape[0]
    anchors = torch.from_numpy(rng.choice(n, min(cfg.batch, n), replace=False))
    extra = torch.from_numpy(rng.choice(n, min(cfg.randoms, n), replace=False))
    cand = torch.unique(torch.cat([anchors, knn[anchors].reshape(-1), extra]))
    anchor_x = xt[anchors]
    self_mask = anchors[:, None] == cand[None, :]
    if qt is not None:
        qa = torch.from_numpy(rng.choice(len(qt), min(cfg.batch // 2, len(qt)), replace=False))
        cand = torch.unique(torch.cat([cand, qknn[qa].reshape(-1)]))
        anchor_x = torch.cat([anchor_x, qt[qa]])
        self_mask = torch.cat(
            [anchors[:, None] == cand[None, :], torch.zeros(len(qa), len(cand), dtype=torch.bool)]
        )
    return anchor_x, cand, self_mask


def train_binarizer(
    x: np.ndarray,
    planes: int = 1,
    m: int | None = None,
    hidden: int = 0,
    init: str = "itq",
    config: TrainConfig | None = None,
    query_planes: int | None = None,
    progress: bool = True,
    old: RecurrentBinarizer | None = None,
    old_x: np.ndarray | None = None,
    query_x: np.ndarray | None = None,
) -> tuple[RecurrentBinarizer, list[float]]:
    """Fit a :class:`RecurrentBinarizer` on float32 ``(n, d)`` embeddings.

    Args:
        x: training embeddings, unit rows, ``n >= 64``.
        planes, m, hidden, query_planes: the model's shape (see the class).
        init: ``"itq"`` (rotation; default) or ``"identity"`` (plain residual binarization).
        config: training knobs (:class:`TrainConfig`).
        old: a frozen earlier model; the new one is trained to be compatible
            with it: its queries score the old model's document codes.
            ``m`` is then the old model's and ``init`` the least-squares map
            from ``x`` into the old code space.
        old_x: the same documents as ``x``, row for row, embedded by the old
            model's encoder ``(n, old.dim)``; required with ``old``.
        query_x: optional query embeddings ``(nq, d)`` (no labels: e.g. a query
            log, never the evaluation queries) used as extra anchors, half a
            batch per step, so the query map also learns the query distribution.

    Returns:
        The trained model (eval mode) and the loss of each step.
    """
    cfg = config or TrainConfig()
    if np.ndim(x) != 2:
        raise BinarizerError(f"expected embeddings of shape (n, d), got {np.shape(x)}")
    x = _check_rows(x, np.shape(x)[1], minimum=MIN_ROWS)
    if init not in ("itq", "identity"):
        raise BinarizerError(f"init must be 'itq' or 'identity', got {init!r}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n_all = x.shape[0]
    if n_all > cfg.max_rows:
        keep = np.sort(rng.choice(x.shape[0], cfg.max_rows, replace=False))
    else:
        keep = np.arange(x.shape[0])
    x = x[keep]
    old_v = target_z = None
    if old is not None:
        m, old_v, target_z = _old_codes(old, old_x, keep, n_all)
    dim = x.shape[1]
    model = RecurrentBinarizer(dim, m, planes, hidden, query_planes)
    if old is not None:
        _init_least_squares(model, x, target_z, cfg.ridge)
    elif init == "itq":
        # Centring + training wins at 1-2 planes; at 4 planes the uncentred start is
        # ahead and training does not close the gap (docs/binarizer.md).
        center = planes <= 2 if cfg.center is None else cfg.center
        model.init_itq(x, iters=cfg.itq_iters, seed=cfg.seed, center=center)
    elif model.m != dim:
        raise BinarizerError(f"init='identity' needs m == dim, got m={model.m}, dim={dim}")

    xt = torch.from_numpy(x)
    knn = _float_neighbours(xt, cfg.neighbours)
    qt = qknn = None
    if query_x is not None:
        qt = torch.from_numpy(_check_rows(query_x, dim, minimum=1))
        qknn = _float_neighbours(qt, cfg.neighbours, corpus=xt)
    log_scale = torch.nn.Parameter(torch.tensor(float(np.log(1.0 / cfg.tau))))
    opt = torch.optim.Adam([*model.parameters(), log_scale], lr=cfg.lr)
    model.train()
    losses: list[float] = []
    for _ in tqdm(range(cfg.steps), desc="training binarizer", disable=not progress):
        anchor_x, cand, self_mask = _batch(rng, cfg, xt, knn, qt, qknn)
        teacher = (anchor_x @ xt[cand].T) / cfg.tau
        teacher = teacher.masked_fill(self_mask, float("-inf"))
        target = torch.softmax(teacher, -1)
        zq = model.query(anchor_x)
        s, a = model(xt[cand])
        loss = _kl(target, zq @ _unit_values(s, a).T * log_scale.exp(), self_mask)
        if old_v is not None:
            cross = zq @ old_v[cand].T * log_scale.exp()
            loss = loss + cfg.cross * _kl(target, cross, self_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not np.isfinite(losses[-1]):
            raise BinarizerError("training diverged (loss is not finite); lower the learning rate")
    model.eval()
    model.version = _fingerprint(model)
    if old is not None:
        model.compatible_with = [old.version, *old.compatible_with]
    return model, losses


def distillation_loss(
    model: RecurrentBinarizer, x: np.ndarray, tau: float = 0.05, old_v: torch.Tensor | None = None
) -> float:
    """The training loss over all of ``x`` as anchors and candidates (for checks; ``n`` small)."""
    model.eval()
    with torch.no_grad():
        xt = torch.from_numpy(_check_rows(x, model.dim))
        teacher = (xt @ xt.T) / tau
        mask = torch.eye(len(xt), dtype=torch.bool)
        target = torch.softmax(teacher.masked_fill(mask, float("-inf")), -1)
        s, a = model(xt)
        return float(_kl(target, model.query(xt) @ _unit_values(s, a).T / tau, mask))


def _kl(target: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.masked_fill(mask, float("-inf")), -1)
    # 0 * log 0 terms (masked self pairs) are defined as 0.
    terms = torch.where(target > 0, target * (torch.log(target.clamp_min(1e-30)) - logp), 0.0)
    return terms.sum(-1).mean()


def _unit_values(signs: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Code values ``sum_p alpha_p s_p`` ``(n, m)`` divided by their norm (the index's cosine)."""
    v = (signs * scales[..., None]).sum(1)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _float_neighbours(
    x: torch.Tensor, k: int, chunk: int = 2048, corpus: torch.Tensor | None = None
) -> torch.Tensor:
    """Each row's ``k`` nearest other rows (or ``corpus`` rows) by cosine, int64 ``(n, k)``."""
    ref = x if corpus is None else corpus
    k = min(k, ref.shape[0] - 1)
    out = []
    for start in range(0, x.shape[0], chunk):
        sims = x[start : start + chunk] @ ref.T
        rows = torch.arange(start, min(start + chunk, x.shape[0]))
        if corpus is None:
            sims[torch.arange(len(rows)), rows] = float("-inf")
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


def _init_least_squares(
    model: RecurrentBinarizer, x: np.ndarray, target_z: np.ndarray, ridge: float
) -> None:
    """Set ``W`` and ``A`` to the ridge-regularised affine map from ``x`` to ``target_z``.

    ``min ||[x 1] S - z||^2 + lam ||S||^2`` with ``lam = ridge * trace(x'x) / d``:
    a few thousand rows cannot pin down a ``d x m`` map unregularised (it
    interpolates the training rows and transfers badly to queries).
    """
    xa = np.concatenate([x, np.ones((x.shape[0], 1), np.float32)], 1).astype(np.float64)
    gram = xa.T @ xa
    lam = ridge * np.trace(gram[:-1, :-1]) / x.shape[1]
    reg = lam * np.eye(gram.shape[0])
    reg[-1, -1] = 0.0  # the bias is not shrunk
    sol = np.linalg.solve(gram + reg, xa.T @ target_z.astype(np.float64))
    weight, bias = sol[:-1].T.astype(np.float32), sol[-1].astype(np.float32)
    model.W.set_linear(weight, bias)
    model.A.set_linear(weight)


def _fingerprint(model: RecurrentBinarizer) -> str:
    """A short content hash of the weights: the identity of a code space."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.weights().items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]
