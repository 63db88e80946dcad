"""``ShardedCollection``: N collection directories on Ray actors, with one collection's surface.

Layout of a sharded collection directory::

    shards.json                 the shard map (binsearch.distributed.shardmap)
    shard-000/ shard-001/ ...   ordinary collection directories, one per shard

The coordinator (this object, in the caller's process) routes writes, deletes
and gets by a stable hash of the id, hands every new document a key of one
global int64 key space, fans searches out to every shard at once and merges
their top-k lists. Because each shard ranks by (score descending, key
ascending) and the keys are global, the merged list is exactly what one
collection holding the same documents with the same keys returns.

Faults: every call to a shard waits at most ``timeout`` seconds. A shard that
does not answer (dead, being restarted by Ray, or stuck) makes the call raise
:class:`ShardUnavailable` (the service's 503), or, for a search with
``partial=True``, returns the other shards' merged answer flagged
``partial``. Shard actors are created with ``max_restarts``: Ray restarts a dead
one, which reopens its directory and replays its own durable log.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from binsearch.collection.collection import SNAPSHOT_EVERY, CollectionError
from binsearch.collection.protocol import CollectionProtocol
from binsearch.collection.types import AddResult, content
from binsearch.distributed.errors import ShardUnavailable
from binsearch.distributed.rpc import call_shards
from binsearch.distributed.search import ShardedSearchMixin
from binsearch.distributed.shard import ShardServer
from binsearch.distributed.shardmap import (
    KEY_BLOCK,
    ShardMap,
    is_sharded,
    route,
    shard_names,
)


@cache
def _actor_class() -> Any:
    import ray

    return ray.remote(ShardServer)


class ShardedCollection(ShardedSearchMixin, CollectionProtocol):
    """A collection split over Ray actors; use :meth:`create`, :meth:`open` or :meth:`split`.

    Thread-safe: a server may call it from many threads (keys are handed out
    under a lock; Ray handles are thread-safe).
    """

    def __init__(
        self,
        path: Path,
        shard_map: ShardMap,
        handles: list[Any],
        timeout: float,
        started_ray: bool,
    ) -> None:
        self.path = path
        self.shard_map = shard_map
        self._handles = handles
        self.timeout = float(timeout)
        self._started_ray = started_ray
        self._key_lock = threading.Lock()
        self._next_key = shard_map.reserved_keys
        self._encoder: Any = None
        self._closed = False
        #: Seconds the slowest shard spent in its own search during the last
        #: :meth:`search` (for measuring the fan-out overhead; 0 before any).
        self.last_shard_seconds = 0.0
        self.replayed = 0
        self._snapshot_every = SNAPSHOT_EVERY
        cfg = shard_map.config
        self.codec_name: str = cfg.get("codec", "")
        self.model_name: str | None = cfg.get("model")
        self.dim: int = int(cfg.get("dim", 0))

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        shards: int,
        codec: Any = "residual",
        bits: int = 2,
        model: str | None = "all-MiniLM-L6-v2",
        dim: int | None = None,
        address: str | None = None,
        **open_options: Any,
    ) -> ShardedCollection:
        """Create ``shards`` empty shard collections under ``path`` and open them on Ray.

        ``codec`` (a name or a codec object, e.g. a trained ``rbe``), ``bits``,
        ``model`` and ``dim`` mean what they mean for ``Collection.create``. ``address``: a running Ray cluster to join
        (``"auto"``, ``"ray://host:10001"``, ...); None starts a local Ray unless
        one is already initialised in this process.
        """

        if shards < 1:
            raise CollectionError(f"shards must be at least 1, got {shards}")
        root = Path(path)
        if root.exists() and any(root.iterdir()):
            raise CollectionError(f"{root} exists and is not empty; pick a new directory")
        existed = root.exists()
        root.mkdir(parents=True, exist_ok=True)
        try:
            return cls._create_in(root, shards, codec, bits, model, dim, address, **open_options)
        except BaseException:  # e.g. Ray unreachable: leave no half-made directory behind
            shutil.rmtree(root, ignore_errors=True)
            if existed:
                root.mkdir(exist_ok=True)
            raise

    @classmethod
    def _create_in(
        cls,
        root: Path,
        shards: int,
        codec: Any,
        bits: int,
        model: str | None,
        dim: int | None,
        address: str | None,
        **open_options: Any,
    ) -> ShardedCollection:
        from binsearch.collection.collection import Collection

        names = shard_names(shards)
        encoder = None
        if model is not None:
            from binsearch.encoder.model import Encoder

            encoder = Encoder(model)  # resolved once, not once per shard
        for name in names:
            c = Collection.create(
                root / name, codec=codec, bits=bits, model=model, dim=dim, encoder=encoder
            )
            manifest = dict(c.manifest)
            c.close()
        config = {
            "codec": manifest["codec"]["codec"],
            "bits": bits,
            "model": manifest.get("model"),
            "model_path": manifest.get("model_path"),
            "dim": int(manifest["dim"]),
        }
        ShardMap(names, config, reserved_keys=0).save(root)
        return cls.open(root, address=address, **open_options)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        address: str | None = None,
        *,
        timeout: float = 30.0,
        threads_per_shard: int | None = None,
        max_restarts: int = -1,
        num_cpus: float = 0,
    ) -> ShardedCollection:
        """Open a sharded directory: one actor per shard, each opening its directory memory-mapped.

        Args:
            path: the directory holding ``shards.json``. Shard actors open their
                directories at the same absolute path, so on a multi-node cluster
                it must be on a shared filesystem (or the same path on every node).
            address: Ray cluster to join (``"auto"``: the one ``ray start`` runs on
                this machine; ``"HOST:PORT"``; ``"ray://HOST:10001"``); None starts
                a new local Ray (or uses the one this process already initialised).
            timeout: seconds any call waits for a shard before
                :class:`ShardUnavailable`.
            threads_per_shard: scan threads of each actor; default the machine's
                cores divided by the number of shards (at least 1), right for one node.
            max_restarts: how often Ray restarts a dead shard actor (-1: always).
            num_cpus: CPUs each actor reserves in Ray's scheduler. 0 (default)
                lets any number of shards share a small machine; actors are
                spread over the nodes either way.
        """
        try:
            import ray
        except ImportError:
            raise CollectionError(
                "a sharded collection needs Ray: pip install 'binsearch[distributed]'"
            ) from None

        root = Path(path)
        shard_map = ShardMap.load(root)
        niceness = os.getpriority(os.PRIO_PROCESS, 0)
        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                # "local": a new Ray of this process's own, even when another one runs
                # on this machine (a bare init would join the newest local cluster).
                address = "local"
                kwargs["num_cpus"] = os.cpu_count() or 1
                # Ray adds 15 to its workers' niceness (background batch work); shard
                # actors serve queries, so they keep this process's priority (which
                # the local Ray's processes inherit).
                kwargs["_system_config"] = {"worker_niceness": 0}
            ray.init(address=address, **kwargs)
            started = True
        n = len(shard_map.shards)
        threads = threads_per_shard or max(1, (os.cpu_count() or 1) // n)
        options: dict[str, Any] = {}
        if threads != (os.cpu_count() or 1):
            # numba reads its thread count at import, before the actor's constructor
            # runs, so a non-default count must be in the worker's environment from
            # the start (Ray then starts a worker pool for it: a few seconds).
            env = {"NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
            options["runtime_env"] = {"env_vars": {**env, "OMP_WAIT_POLICY": "PASSIVE"}}
        actor = _actor_class().options(
            max_restarts=max_restarts,
            max_task_retries=0,  # at-most-once: a write is never applied twice or out of order
            num_cpus=num_cpus,
            scheduling_strategy="SPREAD",
            **options,
        )
        paths = shard_map.shard_paths(root)
        handles = [actor.remote(str(p), i, threads, niceness) for i, p in enumerate(paths)]
        coll = cls(root, shard_map, handles, timeout, started)
        try:
            coll._wait_ready(max(timeout, 120.0))
        except BaseException:
            coll.close()
            raise
        return coll

    def _wait_ready(self, timeout: float) -> None:
        pings = self._call_all(ShardServer.ping, [() for _ in self._handles], timeout)
        for p in pings:
            if p.get("error"):
                name = self.shard_map.shards[p["index"]]
                raise CollectionError(f"shard {name} of {self.path} cannot open: {p['error']}")
        #: Journal entries the shards re-applied when they opened (as ``Collection.replayed``).
        self.replayed = sum(int(p.get("replayed", 0)) for p in pings)

    def close(self, snapshot: bool = True) -> None:
        """Close every shard (each snapshots unless ``snapshot=False``), end the actors and a Ray we started."""
        if self._closed:
            return
        import ray

        try:
            self._call_all(ShardServer.close, [(snapshot,) for _ in self._handles], self.timeout)
        except ShardUnavailable:
            pass  # a dead shard has nothing to flush: its log is already durable
        finally:
            self._closed = True
        for h in self._handles:
            ray.kill(h, no_restart=True)
        if self._started_ray:
            ray.shutdown()

    def __enter__(self) -> ShardedCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ calls to shards
    @property
    def shards(self) -> int:
        return len(self._handles)

    @property
    def handles(self) -> list[Any]:
        """The shard actors' Ray handles, in shard-map order (for tests and tools)."""
        return list(self._handles)

    def _call(
        self,
        method: Callable[..., Any],
        calls: dict[int, tuple],
        timeout: float | None = None,
        partial: bool = False,
    ) -> tuple[dict[int, Any], list[int], list[str]]:
        """:func:`call_shards` on this collection's actors, with its default timeout."""
        if self._closed:
            raise RuntimeError("the sharded collection is closed")
        timeout = self.timeout if timeout is None else timeout
        return call_shards(self._handles, method, calls, timeout, partial)

    def _call_all(
        self, method: Callable[..., Any], args: list[tuple], timeout: float | None = None
    ) -> list[Any]:
        answers, _, _ = self._call(method, dict(enumerate(args)), timeout)
        return [answers[s] for s in range(self.shards)]

    # ------------------------------------------------------------------ reads
    def warm(self, defer_measuring: bool = False) -> Callable[[], int] | None:
        """Nothing to do here: each shard warms its own kernels before it answers a ping."""
        return None

    def ready(self, timeout: float = 2.0) -> bool:
        """True when every shard answers a ping within ``timeout`` seconds."""
        try:
            self._call_all(ShardServer.ping, [() for _ in self._handles], timeout)
        except ShardUnavailable:
            return False
        return True

    def __len__(self) -> int:
        return int(sum(self._call_all(ShardServer.count, [() for _ in self._handles])))

    def get(self, id: str) -> dict[str, Any] | None:
        """The document ``{"id","title","text","metadata"}`` of ``id``, read from its shard, or None."""
        return self.get_many([id])[0]

    def get_many(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Documents of several ids (None where absent), one call per owning shard."""
        ids = list(ids)
        owners = route(ids, self.shards)
        calls = {
            int(s): ([ids[j] for j in np.flatnonzero(owners == s)],) for s in np.unique(owners)
        }
        answers, _, _ = self._call(ShardServer.get, calls)
        out: list[dict[str, Any] | None] = [None] * len(ids)
        for s, docs in answers.items():
            for j, doc in zip(np.flatnonzero(owners == s), docs, strict=True):
                out[int(j)] = doc
        return out

    def embed(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """Embed texts with the collection's model (here, in the caller's process): ``(n, dim)``."""
        vectors = self._encoder_for().encode(list(texts), batch_size=batch_size, progress=progress)
        return self._check_embedded(vectors, len(texts))

    @property
    def encoder(self) -> Any:
        """The text encoder of the shards' model, loaded on first use in this process."""
        return self._encoder_for()

    @property
    def snapshot_every(self) -> int:
        """Changes after which each shard starts a background snapshot (``Collection``'s)."""
        return self._snapshot_every

    @snapshot_every.setter
    def snapshot_every(self, changes: int) -> None:
        self._call_all(ShardServer.set_snapshot_every, [(int(changes),) for _ in self._handles])
        self._snapshot_every = int(changes)

    def _encoder_for(self) -> Any:
        if self.model_name is None:
            raise CollectionError("this collection has no model (vectors only): pass embeddings")
        if self._encoder is None:
            from binsearch.encoder.model import Encoder

            # The same model the shards were made with (a directory, for a non-default one).
            self._encoder = Encoder(self.shard_map.config.get("model_path") or self.model_name)
        return self._encoder

    # ------------------------------------------------------------------ writes
    def _allocate_keys(self, n: int) -> np.ndarray:
        with self._key_lock:
            start = self._next_key
            self._next_key += n
            if self._next_key > self.shard_map.reserved_keys:
                # Reserve a block ahead in the durable map before any shard sees a key,
                # so a crashed coordinator never hands the same key out twice.
                self.shard_map.reserved_keys = self._next_key + KEY_BLOCK
                self.shard_map.save(self.path)
        return np.arange(start, start + n, dtype=np.int64)

    def _reserve_given(self, keys: np.ndarray) -> None:
        with self._key_lock:
            top = int(keys.max()) + 1 if len(keys) else 0
            if top > self._next_key:
                self._next_key = top
                if top > self.shard_map.reserved_keys:
                    self.shard_map.reserved_keys = top + KEY_BLOCK
                    self.shard_map.save(self.path)

    def add(
        self,
        ids: Sequence[str],
        embeddings: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        documents: Sequence[dict[str, Any]] | None = None,
        keys: np.ndarray | None = None,
        *,
        timeout: float | None = None,
    ) -> AddResult:
        """Upsert documents, each on the shard its id hashes to (so a replace stays on one shard).

        Same arguments as ``Collection.add``. Every document gets a new global key
        (in input order) unless ``keys`` are given. Durable when it returns: each
        shard committed its part to its own log. On :class:`ShardUnavailable`
        the parts of the answering shards are stored; retry the whole call.
        """
        ids, documents, embeddings, keys = self._check_add(ids, embeddings, texts, documents, keys)
        n = len(ids)
        if embeddings is None and n:
            # Encoded here once with the whole machine, not in every shard actor.
            embeddings = self.embed([content(d) for d in documents])
        if keys is None:
            keys = self._allocate_keys(n)
        else:
            self._reserve_given(keys)
        if n == 0:
            return AddResult(0, 0, keys)
        owners = route(ids, self.shards)
        calls = {}
        for s in np.unique(owners):
            rows = np.flatnonzero(owners == s)
            calls[int(s)] = (
                [ids[j] for j in rows],
                None if embeddings is None else embeddings[rows],
                None if documents is None else [documents[j] for j in rows],
                keys[rows],
            )
        answers, _, _ = self._call(ShardServer.add, calls, timeout)
        stored = keys.copy()
        for s, (_, _, shard_keys) in answers.items():
            stored[owners == s] = shard_keys  # a replaced id keeps its old key
        added = sum(a for a, _, _ in answers.values())
        replaced = sum(r for _, r, _ in answers.values())
        return AddResult(added, replaced, stored)

    def delete(self, ids: Sequence[str], *, timeout: float | None = None) -> int:
        """Delete ids from their shards; returns how many were present."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        if not ids:
            return 0
        owners = route(ids, self.shards)
        calls = {
            int(s): ([ids[j] for j in np.flatnonzero(owners == s)],) for s in np.unique(owners)
        }
        answers, _, _ = self._call(ShardServer.delete, calls, timeout)
        return int(sum(answers.values()))

    def snapshot(self) -> dict[str, Any]:
        """Snapshot every shard's directory (each writes only what changed).

        Consistent per shard, not across shards: each shard's snapshot holds a
        prefix of that shard's acknowledged writes; a write racing the snapshot
        may be in one shard's snapshot and not another's. Every acknowledged
        write is in the shards' logs either way.
        """
        answers = self._call_all(ShardServer.snapshot, [() for _ in self._handles])
        return {
            "consistency": "per-shard",
            "shards": answers,
        }

    def stats(self) -> dict[str, Any]:
        """``Collection.stats()`` summed over the shards, plus ``per_shard`` (one entry each).

        Totals: ``documents``, ``index_bytes``, ``database_bytes``, ``segments``,
        ``pending_changes``; shared: ``dim``, ``model``, ``codec``, ``bits_per_vector``;
        ``generation``: the highest of the shards' (each shard snapshots on its own).
        Each shard's entry adds its ``index``, actor ``pid`` and ``restarted``.
        """
        per_shard = self._call_all(ShardServer.stats, [() for _ in self._handles])
        first = per_shard[0]
        out: dict[str, Any] = {
            name: sum(int(s.get(name, 0)) for s in per_shard)
            for name in (
                "documents",
                "index_bytes",
                "database_bytes",
                "segments",
                "pending_changes",
            )
        }
        out.update(
            {name: first.get(name) for name in ("dim", "model", "codec", "bits_per_vector")},
            generation=max(int(s.get("generation", 0)) for s in per_shard),
            shards=self.shards,
            per_shard=per_shard,
        )
        return out


__all__ = ["ShardedCollection", "is_sharded"]
