"""The served collection: loading, readiness, shared encoder calls and scans.

All storage — documents, the id ↔ key map, the durable write log, segments,
tombstones, compaction, snapshots — is :class:`binsearch.Collection`'s. This
module adds only what a service needs on top: loading in the background with
an honest readiness (``/ready`` is true once a write can be served: the
collection open *and* its model loaded), 503 until then for every route,
request counters, and coalescing of concurrent encoder calls and scans
(:mod:`server.batching`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from binsearch.collection.collection import (
    Collection,
    CollectionError,
    DiskFull,
    StoreCorruption,
)
from binsearch.collection.protocol import CollectionProtocol
from binsearch.encoder.model import ONNX_MAX_TEXTS
from server.batching import Coalescer, Outcome
from server.settings import Settings

log = logging.getLogger("binsearch.server")

#: Most queries per coalesced scan.
SCAN_MAX_BATCH = 64
#: How long a busy coalescer waits to fill a batch; a lone query never waits.
COALESCE_WINDOW_MS = 1.0
#: Scan threads for a coalesced batch of 2+ queries (a lone query takes every
#: thread, for its latency). Batches come only under concurrency, when the event
#: loop, the encoder and the clients need a core too, so one scan thread leaves
#: them theirs (the measurements: results/serve/notes.md).
SCAN_BATCH_THREADS = 1


class TextEncoder(Protocol):
    """What the store needs of an encoder (``binsearch.encoder.Encoder`` or a test fake)."""

    name: str

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


class NotReady(RuntimeError):
    """The collection is still loading, or cannot serve this yet (reported as 503)."""


@dataclass(frozen=True)
class Hit:
    """One search result: the document's id, score and stored row."""

    id: str
    score: float
    row: Mapping[str, Any]


def _public(message: str, root: Path) -> str:
    """A load error without the server's absolute paths (unauthenticated clients read it)."""
    for where in {str(root.resolve()), str(root)}:
        message = message.replace(where, root.name or ".")
    return message


class Store:
    """One collection served by one process.

    Args:
        settings: where the collection lives, durability, a new collection's codec.
        encoder: the text encoder; default the collection's own model.
    """

    def __init__(self, settings: Settings, encoder: TextEncoder | None = None) -> None:
        self.settings = settings
        self.root = Path(settings.collection_dir)
        self.encoder = encoder
        self.collection: CollectionProtocol | None = None
        self.load_error: str | None = None
        self.model_ready = False
        self.started = time.time()
        self.loaded_in_s: float | None = None
        #: The text encoder: "none" (no model or not warmed), "preparing" (a machine's
        #: first start: its one-time ONNX export runs in a child process), "ready" or
        #: "failed".
        self.encoder_state = "none"
        self.encoder_ready_s: float | None = None
        self._encoder_pending: threading.Thread | None = None
        self._kernels_pending: Callable[[], int] | None = None
        #: "measured": this machine's kernel choices were cached; "measuring": a first
        #: start measures them after /ready; "provisional" never stays long.
        self.kernels_state = "measured"
        self._counter_lock = threading.Lock()
        self.counters = {"queries": 0, "documents_written": 0, "documents_deleted": 0}
        # Coalesced query texts stay within the encoder's fast small-call path
        # (ONNX Runtime up to ONNX_MAX_TEXTS texts); a larger call would load torch.
        self.encoder_batches: Coalescer[list[str], np.ndarray] = Coalescer(
            self._encode_many,
            max_batch=ONNX_MAX_TEXTS,
            window_ms=COALESCE_WINDOW_MS,
            name="binsearch-encode",
        )
        # One scan worker: the batch kernel reads the codes once for up to
        # SCAN_MAX_BATCH queries; a larger batch only lengthens the slowest wait.
        self.scan_batches: Coalescer[tuple[np.ndarray, int], list[Hit]] = Coalescer(
            self._scan_many,
            max_batch=SCAN_MAX_BATCH,
            window_ms=COALESCE_WINDOW_MS,
            name="binsearch-scan",
        )

    # ------------------------------------------------------------------ load
    @property
    def state(self) -> CollectionProtocol:
        """The open collection; raises :class:`NotReady` until it can serve writes."""
        collection = self.collection
        if collection is None or not self.model_ready:
            raise NotReady(self.load_error or "the collection is still loading")
        return collection

    @property
    def ready(self) -> bool:
        collection = self.collection
        if collection is None or not self.model_ready:
            return False
        return collection.ready(timeout=1.0)  # a sharded collection: every shard answers

    def load(self) -> None:
        """Open (or create) the collection, load its model and warm the scan kernels."""
        started = time.perf_counter()
        # numba's first kernel load in a process imports its type registries (about a
        # second of Python): on a second core, while SQLite and zlib check the files.
        preload = threading.Thread(target=_preload_kernels, name="binsearch-preload", daemon=True)
        preload.start()
        try:
            collection = self._open()
            preload.join()
            self._warm(collection)
            self.collection = collection
            self.model_ready = True  # readiness: last, once a write can be served
            if self._kernels_pending is not None:  # after /ready: one-time work
                threading.Thread(
                    target=self._measure_kernels, name="binsearch-kernel-choice", daemon=True
                ).start()
            if self._encoder_pending is not None:  # after /ready: the cores were busy
                self._encoder_pending.start()
        except Exception as exc:
            self.load_error = _public(f"cannot open the index: {exc}", self.root)
            log.error(json.dumps({"event": "load_failed", "error": str(exc)}))
            raise
        self.loaded_in_s = time.perf_counter() - started
        log.info(
            json.dumps(
                {
                    "event": "index_loaded",
                    "documents": len(collection),
                    "replayed_changes": collection.replayed,
                    "seconds": round(self.loaded_in_s, 3),
                }
            )
        )

    def _open(self) -> CollectionProtocol:
        fsync = self.settings.fsync
        if not self.root.exists() or not any(self.root.iterdir()):
            model = self.settings.model or "all-MiniLM-L6-v2"
            if self.encoder is None:
                from binsearch.encoder.model import Encoder

                self.encoder = Encoder(model)
            bits = 1 if self.settings.codec == "sign" else self.settings.bits
            collection = Collection.create(
                self.root,
                self.settings.codec,
                bits,
                self.encoder.name,
                fsync=fsync,
                encoder=self.encoder,
            )
            log.info(json.dumps({"event": "index_created", "dir": str(self.root)}))
        elif self.settings.ray:
            from binsearch.distributed import ShardedCollection

            collection = ShardedCollection.open(self.root, self.settings.ray_address or None)
        else:
            model = self.settings.model if self.encoder is None else None
            collection = Collection.open(self.root, fsync=fsync, encoder=self.encoder, model=model)
        collection.snapshot_every = self.settings.snapshot_every
        return collection

    def _warm(self, collection: CollectionProtocol) -> None:
        # The model loads now, so /ready means a text query or write is served
        # at once (with warm_model off, text requests wait for the model inside
        # their own encode call, and their encode_ms says so); the scan kernels
        # compile (or load from cache) and the index measures its kernel choice
        # here, not in users' first requests.
        if collection.model_name is not None and self.settings.warm_model:
            encoder = collection.encoder
            if getattr(encoder, "onnx_state", lambda: "off")() == "missing":
                # A machine's first start: the one-time ONNX export (torch, seconds, ~1 GB)
                # runs in a child process after /ready, then the session loads; vectors
                # and writes are served meanwhile, text requests wait for it. (With the
                # export on disk, /ready waits for the session as for any model.)
                self.encoder = encoder
                self.encoder_state = "preparing"
                self._encoder_pending = threading.Thread(
                    target=self._prepare_encoder,
                    args=(encoder, collection.dim),
                    name="binsearch-encoder-export",
                    daemon=True,
                )
            else:
                self._check_dim(encoder.dim, collection.dim)
                self.encoder = encoder
                self._encoder_done()
        # The scan kernels compile (or load), and the write path too, before /ready (a
        # sharded collection's shards warm when they start). Kernel choices not yet
        # measured on this machine are measured after /ready (provisional "popcount"
        # meanwhile), as the first start's one-time work.
        finish = collection.warm(defer_measuring=True)
        if finish is not None:
            self._kernels_pending = finish
            self.kernels_state = "measuring"

    def _measure_kernels(self) -> None:
        self.kernels_state = "measuring"
        try:
            self._kernels_pending()
            self.kernels_state = "measured"
        except Exception as exc:  # provisional choices stay: exact, only perhaps slower
            self.kernels_state = "provisional"
            log.error(json.dumps({"event": "kernel_choice_failed", "error": str(exc)}))

    @staticmethod
    def _check_dim(dim: int, index_dim: int) -> None:
        if dim != index_dim:
            raise CollectionError(
                f"the model gives {dim}-d embeddings, the index holds {index_dim}-d codes"
            )

    def _encoder_done(self) -> None:
        self.encoder_state = "ready"
        self.encoder_ready_s = time.time() - self.started

    def _prepare_encoder(self, encoder: TextEncoder, index_dim: int) -> None:
        """Export (in a child process) and load the query encoder after /ready."""
        try:
            self._check_dim(encoder.dim, index_dim)  # the first ONNX call exports
            self._encoder_done()
            log.info(json.dumps({"event": "encoder_ready", "after_s": self.encoder_ready_s}))
        except Exception as exc:
            self.encoder_state = "failed"
            log.error(json.dumps({"event": "encoder_failed", "error": str(exc)}))

    # ------------------------------------------------------------------ encode
    @property
    def dim(self) -> int:
        return self.state.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed texts with the collection's model: float32 ``(n, dim)``. Blocking."""
        return self.encode_timed(texts).result

    def encode_timed(self, texts: list[str]) -> Outcome[np.ndarray]:
        """:meth:`encode`, with the time spent queued and in the (shared) model call."""
        self._require_model()
        return self.encoder_batches.submit(list(texts))

    async def encode_async(self, texts: list[str]) -> Outcome[np.ndarray]:
        """:meth:`encode_timed` for a coroutine (the event loop is never blocked)."""
        self._require_model()
        return await self.encoder_batches.submit_async(list(texts))

    def _require_model(self) -> None:
        if self.state.model_name is None:
            raise CollectionError("this collection has no model: send vectors, not texts")

    def _encode_many(self, requests: Sequence[list[str]]) -> list[np.ndarray]:
        # One model call for every queued request's texts.
        flat = [t for texts in requests for t in texts]
        vectors = self.state.embed(flat)
        out, start = [], 0
        for texts in requests:
            out.append(vectors[start : start + len(texts)])
            start += len(texts)
        return out

    # ------------------------------------------------------------------ read
    def search(
        self,
        vectors: np.ndarray,
        k: int,
        allow: Sequence[str] | None = None,
        rescore: bool = False,
        state: CollectionProtocol | None = None,
        threads: int | None = None,
        where: dict[str, Any] | None = None,
        mode: str = "semantic",
        texts: list[str] | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each float32 query vector ``(nq, dim)`` (None: keyword mode).

        ``threads``: scan threads of a local collection (default: every thread).
        ``where``, ``mode``: as ``Collection.search``; ``texts``: the query texts of a
        keyword or hybrid search.
        """
        collection = state or self.state
        results = collection.search(
            texts if mode != "semantic" else None,
            k=k,
            embeddings=vectors,
            filter=allow,
            rescore=rescore,
            threads=threads,
            where=where,
            mode=mode,
        )
        with self._counter_lock:
            self.counters["queries"] += len(results)
        return [
            [
                Hit(doc_id, float(score), row)
                for doc_id, score, row in zip(r.ids, r.scores, r.documents(), strict=True)
            ]
            for r in results
        ]

    async def scan_coalesced(self, vector: np.ndarray, k: int) -> Outcome[list[Hit]]:
        """Top-``k`` hits of one float32 ``(dim,)`` query, scanned together with concurrent ones.

        For a coroutine: the event loop is never blocked."""
        self.state  # noqa: B018 -- refuse while loading
        return await self.scan_batches.submit_async((np.asarray(vector, dtype=np.float32), int(k)))

    def _scan_many(self, queries: Sequence[tuple[np.ndarray, int]]) -> list[list[Hit]]:
        # One scan for the whole batch at the largest k: each query's top-k is
        # the head of its top-K list (same order, same tie-break).
        vectors = np.stack([v for v, _ in queries])
        threads = SCAN_BATCH_THREADS if len(queries) > 1 else None
        hits = self.search(vectors, max(k for _, k in queries), threads=threads)
        return [h[:k] for h, (_, k) in zip(hits, queries, strict=True)]

    def get(self, doc_id: str) -> dict[str, Any] | None:
        """The stored row of ``doc_id`` or None."""
        return self.state.get(doc_id)

    # ------------------------------------------------------------------ write
    def upsert(self, docs: Sequence[dict[str, Any]], vectors: np.ndarray) -> tuple[int, int]:
        """Add or replace documents; returns ``(added, replaced)`` once the write is durable."""
        collection = self.state
        ids = [d["id"] for d in docs]
        documents = [
            {
                "title": d.get("title") or "",
                "text": d.get("text") or "",
                "metadata": d.get("metadata"),
            }
            for d in docs
        ]
        result = collection.add(ids, embeddings=vectors, documents=documents)
        with self._counter_lock:
            self.counters["documents_written"] += len(ids)
        return result.added, result.replaced

    def delete(self, doc_id: str) -> bool:
        """Delete ``doc_id``; False if it is not there. Durable when it returns."""
        removed = self.state.delete([doc_id])
        with self._counter_lock:
            self.counters["documents_deleted"] += removed
        return bool(removed)

    def snapshot(self) -> dict[str, Any]:
        """Save what changed since the last snapshot (see :meth:`Collection.snapshot`)."""
        try:
            return self.state.snapshot()
        except OSError as exc:
            if getattr(exc, "errno", None) == 28 or "space" in str(exc).lower():
                raise DiskFull(
                    "the disk is full: the snapshot was not written (writes are still "
                    "durable in the log); free space and retry"
                ) from None
            raise

    def close(self, snapshot: bool | None = None) -> None:
        """Snapshot pending changes (default: the ``snapshot_on_shutdown`` setting) and close."""
        if snapshot is None:
            snapshot = self.settings.snapshot_on_shutdown
        for batches in (self.scan_batches, self.encoder_batches):
            batches.close()  # queued requests finish first; a restarted store starts anew
        collection, self.collection = self.collection, None
        self.model_ready = False
        if collection is not None:
            try:
                collection.close(snapshot=snapshot)
            except OSError as exc:  # a full disk: the log still holds every write
                log.error(json.dumps({"event": "close_snapshot_failed", "error": str(exc)}))
                collection.close(snapshot=False)

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict[str, Any]:
        """Counts and sizes for ``GET /stats``."""
        stats = self.state.stats()  # the collection's keys (STATS_KEYS), then the service's
        stats.update(
            queries_served=self.counters["queries"],
            documents_written=self.counters["documents_written"],
            documents_deleted=self.counters["documents_deleted"],
            uptime_s=round(time.time() - self.started, 1),
            encoder_precision=getattr(self.encoder, "precision_used", None),
        )
        onnx = getattr(self.encoder, "_onnx", None) is not None
        stats["startup"] = {
            "ready_after_s": None if self.loaded_in_s is None else round(self.loaded_in_s, 3),
            # "onnx": the cached export (made by `binsearch index` on this machine, or by
            # this start); "torch": the model itself; None: no model.
            "encoder": None
            if self.encoder is None or self.encoder_state == "preparing"
            else ("onnx" if onnx else "torch"),
            # "preparing": the first start on this machine exports the encoder in a child
            # process after /ready; vector queries and writes are served meanwhile, text
            # requests wait for it. "ready" / "failed" / "none" (no model).
            "encoder_state": self.encoder_state,
            # "measuring": a first start times the scan kernels after /ready.
            "kernels": self.kernels_state,
            "encoder_ready_after_s": None
            if self.encoder_ready_s is None
            else round(self.encoder_ready_s, 3),
        }
        stats.update(self.state.filter_stats())
        return stats


def _preload_kernels() -> None:
    """Load one small cached numba kernel (and with it numba's registries)."""
    try:
        from index.impl.gather import score_listed

        codes = np.zeros((1, 1, 1), dtype=np.uint64)
        weights = np.ones((1, 1), dtype=np.float32)
        out = np.empty((1, 1), dtype=np.float32)
        rows = np.zeros(1, dtype=np.int64)
        score_listed(codes, weights, 0, codes, weights, 64, np.empty(0, np.float32), rows, out)
    except Exception:  # only a head start: the warm-up proper loads what it needs
        log.debug("kernel preload failed", exc_info=True)


__all__ = [
    "CollectionError",
    "DiskFull",
    "Hit",
    "NotReady",
    "Store",
    "StoreCorruption",
    "TextEncoder",
]
