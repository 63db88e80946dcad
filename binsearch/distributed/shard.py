"""The shard server: one Ray actor that owns one ordinary collection directory.

The class is plain Python; :mod:`binsearch.distributed.collection` wraps it with
``ray.remote`` (so this module imports neither Ray nor numba at its top). Its
constructor opens the directory memory-mapped, so when Ray restarts a dead
actor (``max_restarts``) the new process rebuilds the shard from its own
durable log: every write a shard acknowledged is in that log.

Only small things cross the wire: query embeddings in, top-k lists out
(:func:`pack_results`), and the documents of a write in.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def pack_results(results: Sequence[Any], documents: bool = False) -> dict[str, Any]:
    """One shard's top-k lists as flat arrays (cheap to serialize; no Python object per score).

    Returns ``{"counts": int64 (nq,), "scores": float32 (sum,), "keys": int64 (sum,),
    "ids": list[str], "rows": list[dict] | None}``: query ``q``'s hits are the
    ``counts[q]`` entries after the first ``counts[:q].sum()``. ``rows`` (the hits'
    documents) only with ``documents=True``.
    """
    counts = np.array([len(r.ids) for r in results], dtype=np.int64)
    if len(results):
        scores = np.concatenate([np.asarray(r.scores, dtype=np.float32) for r in results])
        keys = np.concatenate([np.asarray(r.keys, dtype=np.int64) for r in results])
    else:
        scores, keys = np.zeros(0, np.float32), np.zeros(0, np.int64)
    ids = [i for r in results for i in r.ids]
    rows = [d for r in results for d in r.documents()] if documents else None
    return {"counts": counts, "scores": scores, "keys": keys, "ids": ids, "rows": rows}


def _limit_threads(threads: int) -> None:
    """Scan threads of this actor: numba reads ``NUMBA_NUM_THREADS`` once, at import.

    Unpickling this class imports binsearch, and with it numba, before this
    constructor runs, so a thread count other than the machine's comes through
    the actor's Ray ``runtime_env`` instead (see ``ShardedCollection.open``); a
    late change of the variable would make numba refuse its next parallel call.
    Here only the OpenMP wait policy is set: idle OpenMP threads (numba's
    threading layer) would otherwise spin after each scan and take the cores
    from the thread that sends the answer back.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(threads)


def _set_niceness(niceness: int) -> None:
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != niceness:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError:
        pass  # lowering it needs privileges: keep Ray's


class ShardServer:
    """Serves one shard: a :class:`binsearch.Collection` opened memory-mapped from ``path``.

    Args:
        path: the shard's collection directory, as seen from the node the actor runs on.
        index: the shard's position in the shard map (only for messages and stats).
        threads: scan threads of this actor (default: numba's default, all cores).
        niceness: the coordinator's; the actor takes it where it may (Ray starts
            workers at nice 15, which on a shared machine starves a shard's scans
            against the process that queries it).
    """

    def __init__(
        self, path: str, index: int, threads: int | None = None, niceness: int | None = None
    ) -> None:
        if threads is not None:
            _limit_threads(threads)
        if niceness is not None:
            _set_niceness(niceness)
        from binsearch.collection.collection import Collection

        self.path = path
        self.index = index
        self._bulk: Any = None
        self.open_error: str | None = None
        try:
            self.collection = Collection.open(path, mmap=True)
        except Exception as exc:  # noqa: BLE001 - reported by ping, in one line
            # Raising here would make Ray restart the actor forever on a directory
            # that cannot open (damaged, or held by another process); instead the
            # actor stays up and says why, and the coordinator refuses to open.
            self.open_error = f"{type(exc).__name__}: {exc}"
        else:
            self._warm()
        try:
            import ray

            self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        except Exception:  # noqa: BLE001 - used outside Ray (tests of the class itself)
            self.restarted = False

    def _warm(self) -> None:
        """Compile (or load) the scan kernels and take the kernel choices now, before the
        first ping answers: a (re)started shard is ready when it says so."""
        self.collection.warm()

    def ping(self) -> dict[str, Any]:
        """Liveness and identity: ``{"index", "pid", "restarted", "documents", "replayed", "error"}``."""
        if self.open_error is not None:
            return {"index": self.index, "pid": os.getpid(), "error": self.open_error}
        return {
            "index": self.index,
            "pid": os.getpid(),
            "restarted": self.restarted,
            "documents": len(self.collection),
            "replayed": int(getattr(self.collection, "replayed", 0)),
            "error": None,
        }

    def search(
        self,
        embeddings: np.ndarray,
        k: int,
        filter: Sequence[str] | None,
        rescore: bool,
        documents: bool = False,
    ) -> dict[str, Any]:
        """Top-``k`` of float32 query embeddings ``(nq, d)`` in this shard, packed by :func:`pack_results`.

        The packed answer also holds ``"seconds"``: the time spent in this
        shard's search, so a caller can tell the scan from the fan-out around it.
        """
        started = time.perf_counter()
        results = self.collection.search(embeddings=embeddings, k=k, filter=filter, rescore=rescore)
        packed = pack_results(results, documents)
        packed["seconds"] = time.perf_counter() - started
        return packed

    def rescore(
        self, embeddings: np.ndarray, keys: list[np.ndarray], k: int, documents: bool
    ) -> dict[str, Any]:
        """Re-rank candidate ``keys`` (one int64 array per query, this shard's) by the float query.

        The second phase of a sharded ``rescore=True`` search: the coordinator
        picks the global best ``RESCORE_FACTOR * k`` candidates by code score,
        each shard re-scores its own with :meth:`Collection.rescore` (exactly what
        one collection does), and the coordinator merges the best ``k``.
        """
        from binsearch.collection.types import unit_vectors

        started = time.perf_counter()
        c = self.collection
        vectors = unit_vectors(embeddings, len(embeddings), c.dim, "query embeddings")
        packed = pack_results(c.rescore(vectors, keys, k), documents)
        packed["seconds"] = time.perf_counter() - started
        return packed

    def add(
        self,
        ids: list[str],
        embeddings: np.ndarray | None,
        documents: list[dict[str, Any]] | None,
        keys: np.ndarray,
    ) -> tuple[int, int, np.ndarray]:
        """Upsert; durable when it returns. Returns ``(added, replaced, stored keys)``.

        A replaced id keeps the key it had (as in one collection), so the stored
        keys can differ from ``keys``.
        """
        c = self.collection
        res = c.add(ids, embeddings=embeddings, documents=documents, keys=keys)
        stored = keys if c._bulk else c.store.keys_of(ids)
        if isinstance(stored, dict):
            stored = np.array([stored[i] for i in ids], dtype=np.int64)
        return int(res.added), int(res.replaced), stored

    # -- bulk loading (building or splitting into new, empty shards) --------------
    def begin_bulk(self) -> None:
        """Enter ``Collection.bulk()``: no journal, one snapshot at :meth:`end_bulk`.

        If the actor dies before :meth:`end_bulk`, the directory refuses to open
        (the build must be run again) rather than serving part of it.
        """
        self._bulk = self.collection.bulk()
        self._bulk.__enter__()

    def add_codes(
        self,
        ids: list[str],
        documents: list[dict[str, Any]],
        codes: np.ndarray,
        scales: np.ndarray | None,
        keys: np.ndarray,
    ) -> int:
        """Bulk-add already binarized codes (a split moves codes, it does not re-encode)."""
        self.collection.add_codes(ids, documents, codes, scales, keys, stored_scales=True)
        return len(ids)

    def end_bulk(self) -> dict[str, Any]:
        self._bulk.__exit__(None, None, None)
        self._bulk = None
        return self.stats()

    def delete(self, ids: list[str]) -> int:
        return int(self.collection.delete(ids))

    def get(self, ids: list[str]) -> list[dict[str, Any] | None]:
        return [self.collection.get(i) for i in ids]

    def count(self) -> int:
        return len(self.collection)

    def stats(self) -> dict[str, Any]:
        out = dict(self.collection.stats())
        out.update(index=self.index, pid=os.getpid(), restarted=self.restarted)
        return out

    def snapshot(self) -> dict[str, Any]:
        return dict(self.collection.snapshot() or {})

    def set_snapshot_every(self, changes: int) -> None:
        self.collection.snapshot_every = int(changes)

    def close(self, snapshot: bool = True) -> None:
        if self.open_error is None:
            self.collection.close(snapshot=snapshot)

    def add_rows(
        self,
        ids: list[str],
        documents: list[dict[str, Any]],
        keys: np.ndarray,
        vectors: np.ndarray | None,
        embeddings_path: str | None,
        rows: np.ndarray | None = None,
    ) -> int:
        """Bulk-add new documents under the given global ``keys``.

        Embeddings come from ``vectors``, else rows ``rows`` of the ``.npy`` at
        ``embeddings_path`` (memory-mapped here, so only row numbers travelled),
        else the collection's model embeds the documents (in this actor: the
        shards embed in parallel).
        """
        if vectors is None and embeddings_path is not None:
            where = keys if rows is None else rows
            vectors = np.asarray(np.load(embeddings_path, mmap_mode="r")[where], dtype=np.float32)
        self.collection.add(ids, embeddings=vectors, documents=documents, keys=keys)
        return len(ids)
