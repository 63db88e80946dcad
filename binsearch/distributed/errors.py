"""Errors of a sharded collection (importable without Ray, e.g. by the server's error mapping)."""

from __future__ import annotations

from collections.abc import Sequence


class ShardUnavailable(RuntimeError):
    """One or more shards did not answer in time (dead, restarting, or overloaded).

    The service maps it to HTTP 503. A search raises it rather than return a
    silently incomplete top-k; pass ``partial=True`` to get the answer of the
    shards that did answer instead. A write that raises it was acknowledged by
    none of the listed shards (its other shards' parts are durable); retrying
    the whole write is safe, since ``add`` is an upsert and ``delete`` is
    idempotent.

    Attributes:
        shards: indexes of the shards that failed, ascending.
        reasons: one short reason per failed shard, same order.
    """

    def __init__(self, shards: Sequence[int], reasons: Sequence[str], total: int) -> None:
        self.shards = list(shards)
        self.reasons = list(reasons)
        self.total = total
        what = ", ".join(f"{s} ({r})" for s, r in zip(self.shards, self.reasons, strict=True))
        super().__init__(
            f"{len(self.shards)} of {total} shards unavailable: {what}; "
            "retry shortly (Ray restarts dead shards)"
        )
