"""What a sharded collection's writes and searches return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ShardedAddResult:
    """What :meth:`ShardedCollection.add` did: ``added`` new ids, ``replaced`` existing ones.

    ``keys``: the global int64 keys the documents were stored under, in input order.
    """

    added: int
    replaced: int
    keys: np.ndarray = field(repr=False)


@dataclass
class ShardedSearchResult:
    """One query's merged hits, best first (score descending, ties by key ascending).

    ``scores``: float32 ``(k',)``; ``keys``: int64 ``(k',)``; ``ids``: ``k'`` external ids.
    ``partial``: True when some shards did not answer (only with ``partial=True``);
    ``missing_shards`` lists them.
    """

    ids: list[str]
    scores: np.ndarray
    keys: np.ndarray
    partial: bool = False
    missing_shards: list[int] = field(default_factory=list)
    rows: list[dict[str, Any]] | None = field(default=None, repr=False)

    def documents(self) -> list[dict[str, Any]]:
        """The hits' documents ``{"id", "title", "text", "metadata"}`` (sent with the hits)."""
        return [dict(r) for r in self.rows or []]

    def __len__(self) -> int:
        return len(self.ids)
