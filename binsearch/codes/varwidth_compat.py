"""Compatible queries for varwidth codes: a new model's queries scored against an old model's codes.

The old collection keeps its document codes (:class:`~binsearch.codes.varwidth.VarWidthCodec`
of the old model); only the query side is learned. A query of the new model
becomes slot values ``Q = q_new @ M`` for a map ``M`` ``(d_new, m)``:

1. **bridge**: a ridge regression ``T`` from the new model's embeddings to the
   old model's, fitted on the corpus rows both models embedded (no labels), so
   ``M_0 = T @ S`` with ``S`` the old codec's own slot map;
2. **listwise**: ``M`` then learns to rank the old codes as the new float model
   ranks the documents: rows of the new corpus act as queries, their float
   neighbours plus random rows as candidates, and the loss is the cross-entropy
   between the softmax of the new model's float similarities and the softmax of
   ``<q M, code>`` (a learned temperature).

:class:`CompatibleQueries` is the resulting codec: the old codec's document
side with the new query side, for an index of old codes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from binsearch.codes.base import Codes, check_embeddings
from binsearch.codes.varwidth import VarWidthCodec, _b64, _unb64, quantize_query_values


def slot_map(codec: VarWidthCodec) -> np.ndarray:
    """The old codec's linear query side, float64 ``(d, m)``: ``codec.query_values(q) = q @ map``."""
    out = np.zeros((codec.dim, codec.m))
    basis = codec.basis.astype(np.float64)
    out[:, : codec.n_slots - 1] = basis[:, codec.slot_dim] * codec.slot_coef[None, :]
    out[:, codec.n_slots - 1] = basis @ codec.offsets + codec.rest
    return out


def bridge(new_x: np.ndarray, old_x: np.ndarray, ridge: float = 0.1) -> np.ndarray:
    """Ridge map ``T`` ``(d_new, d_old)`` with ``new_x @ T ≈ old_x`` (the same rows, two models)."""
    a = np.asarray(new_x, dtype=np.float64)
    b = np.asarray(old_x, dtype=np.float64)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"the two models embedded {a.shape[0]} and {b.shape[0]} rows")
    return np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)


def compatible_query_map(
    new_x: np.ndarray,
    old_x: np.ndarray,
    old: VarWidthCodec,
    steps: int = 300,
    lr: float = 3e-5,
    tau: float = 0.05,
    batch: int = 128,
    neighbours: int = 30,
    randoms: int = 512,
    ridge: float = 0.1,
    max_rows: int = 8000,
    seed: int = 0,
) -> np.ndarray:
    """The map ``M`` ``(d_new, m)`` of new-model queries onto the old codes (see the module).

    Args:
        new_x, old_x: float32 ``(n, d_new)`` and ``(n, d_old)``, the same corpus rows
            embedded by the new and the old model (at most ``max_rows`` random ones train).
        old: the old model's codec, whose document codes stay as they are.
        steps: listwise steps (0: the bridge alone).
    """
    import torch

    rng = np.random.default_rng(seed)
    new_x = np.asarray(new_x, dtype=np.float32)
    start = bridge(new_x, old_x, ridge) @ slot_map(old)
    if steps == 0:
        return start.astype(np.float32)
    if new_x.shape[0] > max_rows:
        keep = np.sort(rng.choice(new_x.shape[0], max_rows, replace=False))
        new_x, old_x = new_x[keep], np.asarray(old_x)[keep]
    codes = 2.0 * old.signs(old_x).astype(np.float32) - 1.0
    n = new_x.shape[0]
    neighbours, randoms, batch = min(neighbours, n - 1), min(randoms, n), min(batch, n)
    sims = new_x @ new_x.T
    np.fill_diagonal(sims, -np.inf)
    nbr = np.argpartition(-sims, neighbours, 1)[:, :neighbours]
    np.fill_diagonal(sims, 1.0)
    # Columns at unit norm, so Adam's step means the same on every slot.
    scale = np.linalg.norm(start, axis=0) + 1e-12
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        xt = torch.from_numpy(new_x)
        vt = torch.from_numpy(codes * scale[None, :].astype(np.float32))
        qmap = torch.tensor((start / scale).astype(np.float32), requires_grad=True)
        log_scale = torch.tensor(float(np.log(1 / tau)), requires_grad=True)
        opt = torch.optim.Adam([qmap, log_scale], lr=lr)
        for _ in range(steps):
            qi = rng.choice(n, batch, replace=False)
            di = np.unique(np.concatenate([nbr[qi].ravel(), rng.choice(n, randoms, replace=False)]))
            own = torch.from_numpy(di[None, :] == qi[:, None])
            target = torch.softmax(
                torch.from_numpy(sims[np.ix_(qi, di)] / tau).masked_fill(own, -1e9), 1
            )
            pred = (xt[qi] @ qmap) @ vt[di].T * log_scale.exp()
            loss = -(target * torch.log_softmax(pred.masked_fill(own, -1e9), 1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (qmap.detach().numpy().astype(np.float64) * scale).astype(np.float32)
    finally:
        torch.set_num_threads(threads)


class CompatibleQueries:
    """The old codec's documents, the new model's queries (``q_new @ query_map``).

    Documents are encoded as the old codec does (an old collection is never
    re-indexed); :meth:`encode_queries` takes the new model's embeddings.
    """

    def __init__(self, old: VarWidthCodec, query_map: np.ndarray) -> None:
        self.old = old
        self.query_map = np.ascontiguousarray(query_map, dtype=np.float32)
        if self.query_map.ndim != 2 or self.query_map.shape[1] != old.m:
            raise ValueError(f"query_map must be (d_new, {old.m}), got {self.query_map.shape}")
        self.name, self.dim, self.m = "varwidth-compat", old.dim, old.m
        self.query_dim = self.query_map.shape[0]
        self.planes, self.scaling, self.metric = old.planes, old.scaling, old.metric

    def encode(self, x: np.ndarray) -> Codes:
        return self.old.encode(x)

    def encode_queries(self, q: np.ndarray) -> Codes:
        values = check_embeddings(q, self.query_dim).astype(np.float64) @ self.query_map
        return quantize_query_values(values, self.old.query_planes)

    def config(self) -> dict[str, Any]:
        return {
            **self.old.config(),
            "codec": self.name,
            "query_dim": self.query_dim,
            "query_map": _b64(self.query_map),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CompatibleQueries:
        """Rebuild from :meth:`config`."""
        parts = {k: v for k, v in config.items() if k not in ("codec", "planes")}
        qdim, qmap = parts.pop("query_dim"), parts.pop("query_map")
        old = VarWidthCodec.from_config_parts(parts.pop("dim"), **parts)
        return cls(old, _unb64(qmap, (qdim, old.m), "query map"))
