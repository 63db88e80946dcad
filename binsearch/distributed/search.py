"""How a :class:`~binsearch.distributed.collection.ShardedCollection` searches: fan out, merge.

The search half of ``ShardedCollection`` (a mixin, as ``Collection``'s is): every
shard (or only the shards owning a filter's ids) scans its own codes; the
coordinator merges the top-k lists exactly as one collection ranks them (ties by
key); with ``rescore`` a second phase has each shard re-score its own share of
the global best candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from binsearch.collection import fusion
from binsearch.collection.collection import RESCORE_FACTOR
from binsearch.collection.types import SearchResult
from binsearch.distributed.errors import ShardUnavailable
from binsearch.distributed.merge import merge_packed
from binsearch.distributed.shard import ShardServer
from binsearch.distributed.shardmap import route

#: Arguments above this many bytes go to the object store once (ray.put) and are
#: passed to every shard by reference, instead of being copied once per shard
#: (Ray's "pass the same large argument by value" anti-pattern).
INLINE_BYTES = 100_000


class ShardedSearchMixin:
    """``search`` of a ``ShardedCollection``."""

    def search(
        self,
        queries: Sequence[str] | None = None,
        k: int = 10,
        *,
        embeddings: np.ndarray | None = None,
        filter: Sequence[str] | None = None,
        rescore: bool = False,
        threads: int | None = None,
        where: dict[str, Any] | None = None,
        mode: str = "semantic",
        partial: bool = False,
        timeout: float | None = None,
        documents: bool = True,
    ) -> list[SearchResult]:
        """Top-``k`` of each query over all shards; the same arguments as ``Collection.search``.

        Args:
            queries: query texts (encoded here, once, with the collection's model), or
            embeddings: float32 ``(nq, dim)`` query embeddings.
            filter: only these ids can be returned; only their shards are asked.
            where: a metadata filter, evaluated by each shard on its own documents.
            mode: ``"semantic"``, ``"keyword"`` (each shard ranks by BM25 over its own
                documents' statistics; the lists are merged by score) or ``"hybrid"``
                (the merged semantic and keyword lists fused here by reciprocal rank).
            threads: accepted for the protocol; each shard scans with the threads
                it was started with (``threads_per_shard``).
            partial: if some shards do not answer, return the others' merged
                answer (each result's ``partial`` is True) instead of raising
                :class:`ShardUnavailable`.
            timeout: seconds to wait for the shards (default: the collection's).
            documents: shards send their hits' documents along (``documents()``
                needs no second round trip); False sends ids, scores and keys only.
        """
        queries, emb = self._check_search(queries, k, embeddings, mode, where)
        if mode == "keyword":
            return self._fan_out(
                None, queries, k, filter, where, False, partial, timeout, documents
            )
        if emb is None:
            emb = self.embed(queries)
        if mode == "hybrid":
            depth = fusion.depth(int(k))
            sem = self.search(
                embeddings=emb,
                k=depth,
                filter=filter,
                rescore=rescore,
                where=where,
                partial=partial,
                timeout=timeout,
                documents=False,
            )
            kw = self._fan_out(None, queries, depth, filter, where, False, partial, timeout, False)
            out = []
            for s, w in zip(sem, kw, strict=True):
                ids = dict(zip(s.keys.tolist(), s.ids, strict=True))
                ids.update(zip(w.keys.tolist(), w.ids, strict=True))
                scores, keys = fusion.rrf([s.keys, w.keys], int(k))
                missing = sorted(set(s.missing_shards) | set(w.missing_shards))
                out.append(
                    self._result([ids[key] for key in keys.tolist()], scores, keys, None, missing)
                )
                if documents:
                    out[-1].documents()
            return out
        return self._fan_out(emb, None, k, filter, where, rescore, partial, timeout, documents)

    def _fan_out(
        self,
        emb: np.ndarray | None,
        texts: list[str] | None,
        k: int,
        filter: Sequence[str] | None,
        where: dict[str, Any] | None,
        rescore: bool,
        partial: bool,
        timeout: float | None,
        documents: bool,
    ) -> list[SearchResult]:
        """The shards' searches (semantic of ``emb``, or keyword of ``texts``), merged."""
        nq = len(texts) if texts is not None else emb.shape[0]
        if filter is not None:
            filter = list(filter)
            owners = route(filter, self.shards)
            calls = {
                int(s): [filter[j] for j in np.flatnonzero(owners == s)] for s in np.unique(owners)
            }
        else:
            calls = {s: None for s in range(self.shards)}
        if not calls:  # an empty filter allows nothing
            return [
                self._result([], np.zeros(0, np.float32), np.zeros(0, np.int64), [], [])
                for _ in range(nq)
            ]
        arg: Any = emb
        if emb is not None and emb.nbytes > INLINE_BYTES and len(calls) > 1:
            import ray

            arg = ray.put(emb)  # one copy in the object store, read by every shard
        # With rescore, phase 1 finds the global best RESCORE_FACTOR * k by code score
        # (as one collection does) and phase 2 has each shard re-score its own.
        kk = int(k) * RESCORE_FACTOR if rescore else int(k)
        answers, missing, reasons = self._call(
            ShardServer.search,
            {
                s: (arg, kk, f, False, documents and not rescore, where, texts)
                for s, f in calls.items()
            },
            timeout,
            partial,
        )
        if not answers:
            raise ShardUnavailable(missing, reasons, self.shards)
        merged = merge_packed([answers[s] for s in sorted(answers)], nq, kk)
        # The slowest shard's own search time: the rest of the call is fan-out and merge.
        shard_seconds = max(float(a.get("seconds", 0.0)) for a in answers.values())
        if rescore:
            owners = [route(ids, self.shards) for _, _, ids, _ in merged]
            candidates = {
                s: ([ks[o == s] for (_, ks, _, _), o in zip(merged, owners, strict=True)],)
                for s in sorted(answers)
            }
            second, missing2, reasons2 = self._call(
                ShardServer.rescore,
                {s: (arg, lists[0], int(k), documents) for s, lists in candidates.items()},
                timeout,
                partial,
            )
            if not second:
                raise ShardUnavailable(missing2, reasons2, self.shards)
            merged = merge_packed([second[s] for s in sorted(second)], nq, int(k))
            missing = sorted(set(missing) | set(missing2))
            shard_seconds += max(float(a.get("seconds", 0.0)) for a in second.values())
        self.last_shard_seconds = shard_seconds
        return [self._result(ids, sc, ks, rows, missing) for sc, ks, ids, rows in merged]

    def _result(
        self,
        ids: list[str],
        scores: np.ndarray,
        keys: np.ndarray,
        rows: list[dict[str, Any]] | None,
        missing: Sequence[int] = (),
    ) -> SearchResult:
        return SearchResult(ids, scores, keys, rows, bool(missing), list(missing), self.get_many)
