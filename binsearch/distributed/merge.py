"""Merging the shards' top-k lists into one, exactly as one collection would rank them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def merge_packed(packed: Sequence[dict[str, Any]], nq: int, k: int) -> list[tuple]:
    """Merge per-shard packed top-k lists (see :func:`binsearch.distributed.shard.pack_results`).

    Each query's candidates from all shards are ranked by score descending,
    then key ascending, the order one collection's index uses. Every shard
    returns its own best ``k`` in that order, so the first ``k`` of the union
    are the global best ``k``: a document outside its shard's top-``k`` has
    ``k`` better ones in that shard alone.

    Returns one ``(scores float32 (k',), keys int64 (k',), ids list[str], rows list[dict] | None)``
    per query (``rows``: the hits' documents, when every shard sent them).
    """
    parts = []
    with_rows = all(p.get("rows") is not None for p in packed)
    for p in packed:
        counts = np.asarray(p["counts"], dtype=np.int64)
        if counts.shape != (nq,):
            raise ValueError(f"a shard answered {counts.shape[0]} queries, expected {nq}")
        offsets = np.concatenate([[0], np.cumsum(counts)])
        parts.append((offsets, p["scores"], p["keys"], p["ids"], p.get("rows")))
    out = []
    empty_f, empty_i = np.zeros(0, np.float32), np.zeros(0, np.int64)
    for q in range(nq):
        scores = np.concatenate([empty_f] + [s[o[q] : o[q + 1]] for o, s, _, _, _ in parts])
        keys = np.concatenate([empty_i] + [kk[o[q] : o[q + 1]] for o, _, kk, _, _ in parts])
        scores, keys = scores.astype(np.float32), keys.astype(np.int64)
        ids = [i for o, _, _, ii, _ in parts for i in ii[o[q] : o[q + 1]]]
        order = np.lexsort((keys, -scores))[:k]
        rows = None
        if with_rows:
            all_rows = [r for o, _, _, _, rr in parts for r in rr[o[q] : o[q + 1]]]
            rows = [all_rows[j] for j in order]
        out.append((scores[order], keys[order], [ids[j] for j in order], rows))
    return out
