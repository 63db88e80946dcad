"""Bulk encoding split in two steps that can run on different threads.

``sentence-transformers``' ``encode`` tokenises a batch, runs the network on
it, then tokenises the next: the tokenizer and the network take turns on one
core. :func:`tokenize` does the first step for a whole chunk of texts (sorted
by length, cut into batches, as ``encode`` does, so that batches pad little)
and :func:`forward` the second, so that a pipeline (see
:mod:`binsearch.collection.stages`) tokenises chunk i+1 while the network
runs chunk i. The embeddings are ``encode``'s: same batches, same pooling,
normalised in float32 whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Tokenized:
    """A chunk of texts tokenised in batches: ``features[b]`` holds the texts
    ``order[b * batch_size:(b + 1) * batch_size]`` (positions in the chunk)."""

    order: np.ndarray
    features: list[dict[str, Any]]
    sizes: list[int]

    def __len__(self) -> int:
        return len(self.order)


def tokenize(model: Any, texts: Sequence[str], batch_size: int) -> Tokenized:
    """``texts`` tokenised by ``model`` (a ``SentenceTransformer``), longest first,
    in batches of ``batch_size``; runs on any thread (the Rust tokenizer releases the GIL)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    order = np.argsort([-len(t) for t in texts], kind="stable")
    prepare = getattr(model, "preprocess", None) or model.tokenize
    features, sizes = [], []
    for start in range(0, len(texts), batch_size):
        batch = [texts[i] for i in order[start : start + batch_size]]
        features.append(prepare(batch))
        sizes.append(len(batch))
    return Tokenized(order, features, sizes)


def forward(
    model: Any,
    tokens: Tokenized,
    on_batch: Callable[[int], None] | None = None,
    workers: Workers | None = None,
) -> np.ndarray:
    """The embeddings of a :func:`tokenize` d chunk by ``model`` (any precision of the
    model that tokenised it): float32 ``(len(tokens), dim)``, unit rows, in the
    chunk's order. ``on_batch(n)`` is called after each batch of ``n`` texts.
    With ``workers``, its threads run the batches side by side."""
    if not tokens.features:
        return np.empty((0, 0), dtype=np.float32)
    model.eval()  # as encode does (idempotent: the threads below only read the model)
    if workers is None:
        parts = []
        for features, size in zip(tokens.features, tokens.sizes, strict=True):
            parts.append(_embed(model, features))
            if on_batch is not None:
                on_batch(size)
    else:
        futures = [workers.pool.submit(_embed, model, f) for f in tokens.features]
        parts = []
        for future, size in zip(futures, tokens.sizes, strict=True):
            parts.append(future.result())
            if on_batch is not None:
                on_batch(size)
    stacked = np.concatenate(parts)
    result = np.empty_like(stacked)
    result[tokens.order] = stacked
    return result


def _embed(model: Any, features: dict[str, Any]) -> np.ndarray:
    """One batch's embeddings, float32 unit rows."""
    import torch
    from torch.nn.functional import normalize

    device = next(model.parameters()).device
    with torch.inference_mode():
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        out = model(moved)["sentence_embedding"]
        return np.ascontiguousarray(normalize(out.float(), p=2, dim=1).cpu().numpy())


class Workers:
    """``count`` threads that run batches side by side, torch on one thread each.

    On a few cores this beats one stream of batches on torch's ``count``
    threads: no OpenMP barrier per operation (where a thread that lost its core
    to another process stalls its partners), and the small operations between
    the GEMMs run in parallel too. A context manager: torch's thread count is
    1 inside it (process-wide: torch has one setting) and restored after.
    """

    def __init__(self, count: int | None = None) -> None:
        import torch

        self.count = max(1, count or torch.get_num_threads())
        self.pool: ThreadPoolExecutor
        self._saved: int | None = None

    def __enter__(self) -> Workers:
        import torch

        self._saved = torch.get_num_threads()
        torch.set_num_threads(1)  # before the threads start: each reads it once
        self.pool = ThreadPoolExecutor(self.count, thread_name_prefix="encode")
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        self.pool.shutdown(wait=True, cancel_futures=True)
        if self._saved is not None:
            torch.set_num_threads(self._saved)
