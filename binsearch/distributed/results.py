"""What a sharded collection's writes and searches return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from binsearch.distributed.collection import ShardedCollection


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
    _owner: ShardedCollection | None = field(default=None, repr=False, compare=False)

    def documents(self) -> list[dict[str, Any]]:
        """The hits' documents ``{"id", "title", "text", "metadata"}``.

        Sent with the hits by default; else read from their shards now.
        """
        if self.rows is not None:
            return [dict(r) for r in self.rows]
        if self._owner is None:
            raise RuntimeError("this result is not attached to a collection")
        docs = self._owner.get_many(self.ids)
        return [d for d in docs if d is not None]

    def __len__(self) -> int:
        return len(self.ids)
