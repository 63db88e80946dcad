"""Compatible queries for varwidth codes: a new model's queries scored against an old model's codes.

The old collection keeps its document codes (:class:`~binsearch.codes.varwidth.VarWidthCodec`
of the old model); only the query side is learned. A query of the new model
becomes slot values ``Q = q_new @ W @ S``: ``S`` is the old codec's own slot
map (:func:`slot_map`, ``<q S, 2 bits - 1> = <q, x̂>``) and ``W`` ``(d_new, d_old)``
is learned in two steps on rows both models embedded (never on the queries
an evaluation judges):

1. **bridge**: a ridge regression from the new model's embeddings to the old
   model's (:func:`bridge`), on the corpus rows and any paired query texts;
2. **listwise**: ``W`` then learns to rank the old *codes* as the new float model
   ranks the documents. Training queries are corpus rows (their own row left
   out) and the paired query texts; every training row is a candidate; the loss
   is the cross-entropy between the softmax of the new model's float
   similarities (temperature ``tau``) and the softmax of ``<q W, x̂>`` (a learned
   temperature), by Adam. Optional relevance labels on the paired queries add a
   supervised term (the softmax of ``<q W, x̂>`` against the judged documents).

Measured (``benchmarks/compat_varwidth.py``, ``results/quality/compat/``): the
listwise step is what lifts the bridge, and real query texts help more than
corpus rows; the labels help most, and help the old model's own queries as much.

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
    lr: float = 1e-3,
    tau: float = 0.05,
    batch: int = 128,
    ridge: float = 0.1,
    max_rows: int = 8000,
    seed: int = 0,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    labels: list[list[int]] | None = None,
    label_weight: float = 1.0,
    progress: bool = False,
) -> np.ndarray:
    """The map ``(d_new, m)`` of new-model queries onto the old codes (see the module).

    Args:
        new_x, old_x: float32 ``(n, d_new)`` and ``(n, d_old)``, the same corpus rows
            embedded by the new and the old model (at most ``max_rows`` random ones train).
        old: the old model's codec, whose document codes stay as they are.
        steps: listwise steps (0: the bridge alone).
        pairs: optional ``(new_q, old_q)``, other texts (e.g. past queries, never the
            evaluated ones) embedded by both models: bridge rows and listwise queries.
        labels: optional, per row of ``pairs``, the indices (rows of ``new_x``) of
            documents judged relevant to it; ``label_weight`` weighs that term.
    """
    import torch
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    new_x, old_x = np.asarray(new_x, dtype=np.float32), np.asarray(old_x, dtype=np.float32)
    pq_new, pq_old = (np.zeros((0, new_x.shape[1]), np.float32), None) if pairs is None else pairs
    pq_new = np.asarray(pq_new, dtype=np.float32)
    rows_new = np.vstack([new_x, pq_new]) if len(pq_new) else new_x
    rows_old = np.vstack([old_x, np.asarray(pq_old, np.float32)]) if len(pq_new) else old_x
    start = bridge(rows_new, rows_old, ridge)
    smap = slot_map(old)
    if steps == 0:
        return (start @ smap).astype(np.float32)
    keep = np.arange(new_x.shape[0])
    if new_x.shape[0] > max_rows:
        keep = np.sort(rng.choice(new_x.shape[0], max_rows, replace=False))
    n = len(keep)
    judged = [] if labels is None else [i for i, rel in enumerate(labels) if len(rel)]
    target_rel = None
    if judged:
        where = {int(r): j for j, r in enumerate(keep)}
        target_rel = np.zeros((len(judged), n), np.float32)
        for row, i in enumerate(judged):
            cols = [where[int(d)] for d in labels[i] if int(d) in where]
            target_rel[row, cols] = 1.0 / max(len(cols), 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        docs_new = torch.from_numpy(new_x[keep])
        # the old codes as they are stored: <q W, x̂> is what the index computes for q W
        codes = torch.from_numpy(old.reconstruct(old_x[keep]).astype(np.float32).T.copy())
        queries = torch.from_numpy(pq_new)
        weight = torch.tensor(start.astype(np.float32), requires_grad=True)
        log_scale = torch.tensor(float(np.log(1 / tau)), requires_grad=True)
        opt = torch.optim.Adam([weight, log_scale], lr=lr)

        def listwise(q: torch.Tensor, target: torch.Tensor, own: np.ndarray | None) -> torch.Tensor:
            pred = (q @ weight) @ codes * log_scale.exp()
            if own is not None:  # a corpus row is not its own candidate
                pred = pred.clone()
                pred[np.arange(len(own)), own] = -1e9
            return -(target * torch.log_softmax(pred, 1)).sum(1).mean()

        def soft(q: torch.Tensor, own: np.ndarray | None) -> torch.Tensor:
            sims = q @ docs_new.T
            if own is not None:
                sims[np.arange(len(own)), own] = -1e9
            return torch.softmax(sims / tau, 1)

        for _ in tqdm(range(steps), desc="compatible queries", disable=not progress):
            own = rng.choice(n, min(batch, n), replace=False)
            loss = listwise(docs_new[own], soft(docs_new[own], own), own)
            if len(pq_new):
                b = rng.choice(len(pq_new), min(batch, len(pq_new)), replace=False)
                loss = loss + listwise(queries[b], soft(queries[b], None), None)
            if target_rel is not None:
                b = rng.choice(len(judged), min(batch, len(judged)), replace=False)
                rel = torch.from_numpy(target_rel[b])
                loss = loss + label_weight * listwise(queries[np.asarray(judged)[b]], rel, None)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (weight.detach().numpy().astype(np.float64) @ smap).astype(np.float32)
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

    def query_values(self, q: np.ndarray) -> np.ndarray:
        """Float64 ``(nq, m)`` slot values of the new model's queries against the old codes."""
        return check_embeddings(q, self.query_dim).astype(np.float64) @ self.query_map

    def float_queries(self, q: np.ndarray) -> np.ndarray:
        """Float32 ``(nq, m)`` slot values, scanned as float queries (``CodedIndex.topk``)."""
        return self.query_values(q).astype(np.float32)

    def encode_queries(self, q: np.ndarray) -> Codes:
        return quantize_query_values(self.query_values(q), self.old.query_planes)

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
