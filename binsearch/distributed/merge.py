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
    with_rows = all(p.get("rows") is not None for p in packed)
    scores_l, keys_l, query_l = [], [], []
    ids: list[str] = []
    rows: list[dict[str, Any]] = []
    for p in packed:
        counts = np.asarray(p["counts"], dtype=np.int64)
        if counts.shape != (nq,):
            raise ValueError(f"a shard answered {counts.shape[0]} queries, expected {nq}")
        scores_l.append(np.asarray(p["scores"], dtype=np.float32))
        keys_l.append(np.asarray(p["keys"], dtype=np.int64))
        query_l.append(np.repeat(np.arange(nq, dtype=np.int64), counts))
        ids.extend(p["ids"])
        if with_rows:
            rows.extend(p["rows"])
    scores = np.concatenate([np.zeros(0, np.float32), *scores_l])
    keys = np.concatenate([np.zeros(0, np.int64), *keys_l])
    query = np.concatenate([np.zeros(0, np.int64), *query_l])
    # One sort of every candidate: by query, then score descending, then key ascending;
    # then the first k of each query's run.
    order = np.lexsort((keys, -scores, query))
    sorted_query = query[order]
    starts = np.searchsorted(sorted_query, np.arange(nq + 1))
    out = []
    for q in range(nq):
        chosen = order[starts[q] : min(starts[q] + k, starts[q + 1])]
        out.append(
            (
                scores[chosen],
                keys[chosen],
                [ids[j] for j in chosen],
                [rows[j] for j in chosen] if with_rows else None,
            )
        )
    return out
