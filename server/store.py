"""The served index: an immutable state swapped on every write, a write-ahead log, snapshots.

Readers take ``store.state`` (one attribute read) and search it; writers build
the next state beside it and publish it with one assignment under the write
lock. A published state is never mutated, so a reader sees every document of a
batch or none of them.

A state is a large *base* index plus a small *delta* index for recent writes;
an *overlay* maps each recently written id to its delta key (or ``None`` when
deleted) and hides the base rows it replaces. Writes copy only the delta; the
overlay is folded into a fresh base once it holds ``compact_every`` documents.

On disk (``DIR``):

* ``manifest.json``, arrays, ``documents.jsonl`` — generation 0, as written by
  ``binsearch index`` (or an empty index created on first start);
* ``generations/<n>/`` — later snapshots, same layout; ``CURRENT.json`` names the
  one in force and is replaced atomically, so a crash mid-snapshot leaves the
  previous generation in force;
* ``wal/<n>.log`` — writes after generation ``n`` (see :mod:`server.wal`).
"""

from __future__ import annotations

import base64
import copy
import fcntl
import inspect
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from binsearch.codecs import Codec, codec_from_config, make_codec
from binsearch.pipeline import DOCUMENTS
from index import BinaryIndex, IndexFormatError, code_values, fixed_plane_weights, read_manifest
from index.topk import merge_topk
from server.batching import Coalescer, Outcome
from server.settings import Settings
from server.wal import WriteAheadLog, fsync_dir

log = logging.getLogger("binsearch.server")

CURRENT = "CURRENT.json"
LOCK = "server.lock"
GENERATIONS = "generations"
WAL_DIR = "wal"
RESCORE_FACTOR = 4  # rescoring re-ranks this many times k candidates by the float query


class TextEncoder(Protocol):
    """What the store needs of an encoder (``binsearch.encoder.Encoder`` or a test fake)."""

    name: str

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


class StoreError(ValueError):
    """A request the store cannot carry out as asked (reported as a 4xx)."""


class NotReady(RuntimeError):
    """The index is still loading (reported as 503)."""


@dataclass(frozen=True)
class Hit:
    """One search result: the document row and its score."""

    id: str
    score: float
    row: Mapping[str, Any]


@dataclass(frozen=True)
class State:
    """An immutable view of every live document; see the module docstring."""

    base: BinaryIndex
    base_rows: Mapping[int, dict[str, Any]]  # key -> {key, id, title, text, metadata}
    base_keys: Mapping[str, int]  # id -> key
    delta: BinaryIndex
    delta_rows: Mapping[int, dict[str, Any]]
    delta_codes: Mapping[int, tuple[np.ndarray, np.ndarray | None]]  # key -> raw codes, scales
    overlay: Mapping[str, int | None] = field(default_factory=dict)  # id -> delta key / deleted
    dead: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # hidden base keys

    def __len__(self) -> int:
        return len(self.base) - len(self.dead) + len(self.delta)

    def lookup(self, doc_id: str) -> dict[str, Any] | None:
        """The live row of ``doc_id``, or None."""
        if doc_id in self.overlay:
            key = self.overlay[doc_id]
            return None if key is None else self.delta_rows[key]
        key = self.base_keys.get(doc_id)
        return None if key is None else self.base_rows[key]

    def row(self, key: int) -> dict[str, Any]:
        return self.delta_rows[key] if key in self.delta_rows else self.base_rows[key]


def _settle(index: BinaryIndex) -> BinaryIndex:
    """Finish an index's deferred work before it is published.

    The index may leave deleted rows as tombstones and drop them lazily, on a
    later read; a published index is read by many threads at once, so it must
    have nothing left to do on a read.
    """
    compact = getattr(index, "compact", None)
    if compact is not None:
        compact()
    return index


def _plane_weights(index: BinaryIndex) -> np.ndarray:
    """The fixed plane weights ``index`` scores with (its own, or ``2**-p``)."""
    weights = getattr(index, "plane_weights", None)
    return fixed_plane_weights(index.planes) if weights is None else np.asarray(weights)


_HAS_ALLOW_IDS = "allow_ids" in inspect.signature(BinaryIndex.search).parameters


def _search_only(
    index: BinaryIndex, words: np.ndarray, weights: np.ndarray, k: int, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``index`` among the documents ``keys`` only (an exact filtered scan)."""
    if _HAS_ALLOW_IDS:
        return index.search(words, k, weights, allow_ids=keys, method="fast")
    # An index without filtered scans: copy the allowed codes into a small one.
    sub = _empty_like(index)
    codes, scales = index.get(keys)
    sub.add(codes, keys, scales)
    return sub.search(words, k, weights)


def _empty_like(index: BinaryIndex) -> BinaryIndex:
    """An empty index that scores exactly like ``index`` (same layout, metric, plane weights)."""
    if getattr(index, "custom_plane_weights", False):
        return BinaryIndex(
            index.m, index.planes, index.weights, index.metric, index.meta, index.plane_weights
        )
    return BinaryIndex(index.m, index.planes, index.weights, index.metric, index.meta)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def _unb64(text: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(shape).copy()


def apply_upsert(
    state: State,
    rows: Sequence[dict[str, Any]],
    codes: np.ndarray,
    scales: np.ndarray | None,
) -> State:
    """The state after adding ``rows`` (each with its new ``key``), replacing same-id documents."""
    keys = np.array([r["key"] for r in rows], dtype=np.int64)
    ids = [r["id"] for r in rows]
    overlay = dict(state.overlay)
    delta_rows = dict(state.delta_rows)
    delta_codes = dict(state.delta_codes)
    delta = copy.deepcopy(state.delta)
    stale = [overlay[i] for i in ids if overlay.get(i) is not None]
    if stale:
        delta.remove(np.array(stale, dtype=np.int64))
        for key in stale:
            del delta_rows[key], delta_codes[key]
    delta.add(codes, keys, scales)
    _settle(delta)
    for j, row in enumerate(rows):
        overlay[row["id"]] = int(keys[j])
        delta_rows[int(keys[j])] = row
        delta_codes[int(keys[j])] = (codes[j], None if scales is None else scales[j])
    hidden = [state.base_keys[i] for i in ids if i in state.base_keys and i not in state.overlay]
    dead = np.union1d(state.dead, np.array(hidden, dtype=np.int64))
    return State(
        state.base, state.base_rows, state.base_keys, delta, delta_rows, delta_codes, overlay, dead
    )


def apply_delete(state: State, ids: Sequence[str]) -> State:
    """The state after deleting ``ids`` (absent ones are ignored)."""
    overlay = dict(state.overlay)
    delta_rows = dict(state.delta_rows)
    delta_codes = dict(state.delta_codes)
    delta = state.delta
    stale = [overlay[i] for i in ids if overlay.get(i) is not None]
    if stale:
        delta = copy.deepcopy(delta)
        delta.remove(np.array(stale, dtype=np.int64))
        _settle(delta)
        for key in stale:
            del delta_rows[key], delta_codes[key]
    hidden = [state.base_keys[i] for i in ids if i in state.base_keys and i not in state.overlay]
    for i in ids:
        overlay[i] = None
    dead = np.union1d(state.dead, np.array(hidden, dtype=np.int64))
    return State(
        state.base, state.base_rows, state.base_keys, delta, delta_rows, delta_codes, overlay, dead
    )


def compact(state: State) -> State:
    """Fold the overlay into a new base index; the old state stays intact for its readers."""
    if not state.overlay:
        return state
    base = copy.deepcopy(state.base)
    if len(state.dead):
        base.remove(state.dead)
    base_rows = dict(state.base_rows)
    base_keys = dict(state.base_keys)
    for key in state.dead.tolist():
        del base_keys[base_rows.pop(key)["id"]]
    if state.delta_codes:
        keys = np.array(sorted(state.delta_codes), dtype=np.int64)
        codes = np.stack([state.delta_codes[k][0] for k in keys.tolist()])
        scales = None
        if base.weights == "per_document":
            scales = np.stack([state.delta_codes[k][1] for k in keys.tolist()])
        base.add(codes, keys, scales)
        for key in keys.tolist():
            row = state.delta_rows[key]
            base_rows[key] = row
            base_keys[row["id"]] = key
    return State(_settle(base), base_rows, base_keys, _empty_like(base), {}, {}, {})


class Store:
    """The index directory served by one process: load, search, write, snapshot.

    Args:
        settings: where the index lives and how writes are made durable.
        encoder: the text encoder; default the model the index was built with.
    """

    def __init__(self, settings: Settings, encoder: TextEncoder | None = None) -> None:
        self.settings = settings
        self.root = Path(settings.index_dir)
        self.encoder: TextEncoder | None = encoder
        self.codec: Codec | None = None
        self._state: State | None = None
        self._write_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self._snapshotting = False
        self.wal = WriteAheadLog(self.root / WAL_DIR, fsync=settings.fsync)
        self.generation = 0
        self.next_key = 0
        self.load_error: str | None = None
        self.model_ready = False
        self.started = time.time()
        self.counters = {"queries": 0, "documents_written": 0, "documents_deleted": 0}
        self.loaded_in_s: float | None = None
        self.replayed_records = 0
        self._lock_file: Any = None
        # Concurrent requests share encoder calls and scans (see server.batching).
        self.encoder_batches: Coalescer[list[str], np.ndarray] = Coalescer(
            self._encode_many, max_batch=16
        )
        self.scan_batches: Coalescer[tuple[np.ndarray, int], list[Hit]] = Coalescer(
            self._scan_many, max_batch=16
        )

    # ------------------------------------------------------------------ load
    @property
    def state(self) -> State:
        """The current state; raises :class:`NotReady` while loading."""
        state = self._state
        if state is None:
            raise NotReady(self.load_error or "the index is still loading")
        return state

    @property
    def ready(self) -> bool:
        return self._state is not None

    def load(self) -> None:
        """Open (or create) the index directory and replay the write-ahead log."""
        started = time.perf_counter()
        try:
            self._load()
        except Exception as exc:
            self.load_error = f"cannot open {self.root}: {exc}"
            log.error(json.dumps({"event": "load_failed", "error": str(exc)}))
            raise
        self.loaded_in_s = time.perf_counter() - started
        log.info(
            json.dumps(
                {
                    "event": "index_loaded",
                    "documents": len(self.state),
                    "generation": self.generation,
                    "replayed_records": self.replayed_records,
                    "seconds": round(self.loaded_in_s, 3),
                }
            )
        )
        if self.settings.warm_model:
            self.warm_model()

    def warm_model(self) -> None:
        """Load the encoder now so the first text query does not wait for it."""
        try:
            self._check_encoder_dim()
        except Exception as exc:  # the index still serves vector queries
            log.error(json.dumps({"event": "model_failed", "error": str(exc)}))

    def _load(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        current = self.root / CURRENT
        if current.is_file():
            self.generation = int(json.loads(current.read_text())["generation"])
        folder = self._generation_dir(self.generation)
        if not (folder / "manifest.json").is_file():
            if self.generation or any(p.name not in (WAL_DIR, LOCK) for p in self.root.iterdir()):
                read_manifest(folder)  # raises the reader's own explanation
            self._create_empty()
        base, rows = self._read_generation(folder)
        self._set_codec(base)
        keys = {row["id"]: key for key, row in rows.items()}
        state = State(base, rows, keys, _empty_like(base), {}, {}, {})
        self.next_key = (max(rows) + 1) if rows else 0
        for record in self.wal.replay(since=self.generation):
            state = self._replay(state, record)
            self.replayed_records += 1
        self._warm_scan(state)
        self._state = state
        numbers = self.wal.numbers()
        self.wal.open(max([self.generation, *numbers]))
        self.wal.drop_before(self.generation)

    def _warm_scan(self, state: State) -> None:
        # The scan kernels compile on first use (seconds), and the index measures
        # once which kernel is faster for single queries and for batches (about a
        # second each): pay both before /ready says yes, not in users' requests.
        assert self.codec is not None
        dim = getattr(getattr(self.codec, "model", None), "query_dim", self.codec.dim)
        vectors = np.random.default_rng(0).standard_normal((2, dim)).astype(np.float32)
        codes = getattr(self.codec, "encode_queries", self.codec.encode)(vectors)
        weights = codes.scales
        if weights is None:
            weights = np.broadcast_to(_plane_weights(state.base), codes.words.shape[:2])
        for nq in (1, 2):
            self._search_all(state, codes.words[:nq], weights[:nq], 1)

    def _take_lock(self) -> None:
        # Two processes appending to one log would interleave their records
        # and each would miss the other's writes: one server per directory.
        # The kernel drops the lock when the process dies, even by SIGKILL.
        self._lock_file = open(self.root / LOCK, "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise IndexFormatError(
                f"{self.root} is already being served by another process (it holds {LOCK})"
            ) from None

    def _set_codec(self, base: BinaryIndex) -> None:
        meta = base.meta
        if "codec" not in meta or "model" not in meta:
            raise IndexFormatError(f"{self.root}: not built by `binsearch index` (no model/codec)")
        self.codec = codec_from_config(meta["codec"])
        if self.encoder is None:
            from binsearch.encoder import DEFAULT_MODEL, Encoder

            name = self.settings.model or (
                DEFAULT_MODEL if meta["model"] == DEFAULT_MODEL else meta.get("model_path")
            )
            self.encoder = Encoder(name)
        if self.encoder.name != meta["model"]:
            raise IndexFormatError(
                f"{self.root} was built with model {meta['model']!r}, not {self.encoder.name!r}"
            )

    def _create_empty(self) -> None:
        if self.encoder is None:
            from binsearch.encoder import Encoder

            self.encoder = Encoder(self.settings.model)
        bits = 1 if self.settings.codec == "sign" else self.settings.bits
        codec = make_codec(self.settings.codec, self.encoder.dim, bits)
        meta = {"model": self.encoder.name, "codec": codec.config(), "documents": DOCUMENTS}
        path = getattr(self.encoder, "path", None)
        if path is not None and self.encoder.name != "all-MiniLM-L6-v2":
            meta["model_path"] = str(path)
        index = BinaryIndex(codec.m, codec.planes, codec.weights, "cosine", meta=meta)
        self._write_generation(self.root, index, {})
        log.info(json.dumps({"event": "index_created", "dir": str(self.root), **meta}))

    def _generation_dir(self, number: int) -> Path:
        return self.root if number == 0 else self.root / GENERATIONS / f"{number:08d}"

    @staticmethod
    def _read_generation(folder: Path) -> tuple[BinaryIndex, dict[int, dict[str, Any]]]:
        base = BinaryIndex.load(folder)
        rows: dict[int, dict[str, Any]] = {}
        with open(folder / base.meta.get("documents", DOCUMENTS), encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                rows[int(row["key"])] = row
        if len(rows) != len(base):
            raise IndexFormatError(f"{folder}: {len(base)} codes but {len(rows)} documents")
        return base, rows

    @staticmethod
    def _write_generation(folder: Path, index: BinaryIndex, rows: Mapping[int, dict]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{DOCUMENTS}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for key in sorted(rows):
                f.write(json.dumps(rows[key], ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / DOCUMENTS)
        index.save(folder)
        for name in os.listdir(folder):
            if os.path.isfile(folder / name):
                fd = os.open(folder / name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(folder)

    def _replay(self, state: State, record: dict[str, Any]) -> State:
        if record["op"] == "delete":
            return apply_delete(state, record["ids"])
        rows = record["docs"]
        base = state.base
        n = len(rows)
        codes = _unb64(record["codes"], np.uint64, (n, base.planes, base.n_words))
        scales = None
        if record.get("scales") is not None:
            scales = _unb64(record["scales"], np.float32, (n, base.planes))
        self.next_key = max(self.next_key, max(r["key"] for r in rows) + 1)
        return apply_upsert(state, rows, codes, scales)

    # ------------------------------------------------------------------ encode
    def _check_encoder_dim(self) -> None:
        assert self.encoder is not None and self.codec is not None
        with self._encode_lock:
            dim = self.encoder.dim
        if dim != self.codec.dim:
            raise IndexFormatError(
                f"the model gives {dim}-d embeddings, the index holds {self.codec.dim}-d codes"
            )
        self.model_ready = True

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed texts with the index's model: float32 ``(n, dim)``. Blocking; call off the loop."""
        return self.encode_timed(texts).result

    def encode_timed(self, texts: list[str]) -> Outcome[np.ndarray]:
        """:meth:`encode`, with the time spent queued and in the (shared) model call."""
        self.state  # noqa: B018 -- refuse while loading, before touching the model
        if not self.model_ready:
            try:
                self._check_encoder_dim()
            except (ValueError, OSError) as exc:  # a missing or mismatched model
                raise NotReady(f"text encoding is unavailable: {exc}") from exc
        return self.encoder_batches.submit(list(texts))

    def _encode_many(self, requests: Sequence[list[str]]) -> list[np.ndarray]:
        # One model call for every queued request's texts; the coalescer runs
        # one batch at a time, and the model already uses every core.
        assert self.encoder is not None
        flat = [t for texts in requests for t in texts]
        vectors = self.encoder.encode(flat, batch_size=64)
        out, start = [], 0
        for texts in requests:
            out.append(vectors[start : start + len(texts)])
            start += len(texts)
        return out

    @property
    def dim(self) -> int:
        assert self.codec is not None
        return self.codec.dim

    # ------------------------------------------------------------------ read
    def search(
        self,
        vectors: np.ndarray,
        k: int,
        allow: Sequence[str] | None = None,
        rescore: bool = False,
        state: State | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each float32 query vector ``(nq, dim)``, from one consistent state.

        ``allow`` restricts results to those document ids (an allow-list);
        ``rescore`` re-ranks ``4k`` code candidates by the float query against
        the stored code values. Scores are cosines of code values (or of the
        float query with code values, when rescored).
        """
        state = state or self.state
        assert self.codec is not None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        # Learned codecs code queries (never stored) with more planes than documents.
        codes = getattr(self.codec, "encode_queries", self.codec.encode)(vectors)
        weights = codes.scales
        if weights is None:
            weights = np.broadcast_to(_plane_weights(state.base), codes.words.shape[:2])
        q_norm = np.linalg.norm(code_values(codes.words, self.codec.m, weights), axis=1)
        q_norm = np.where(q_norm > 0, q_norm, 1.0)
        kk = k * RESCORE_FACTOR if rescore else k
        if allow is not None:
            scores, keys = self._search_allowed(state, codes.words, weights, kk, allow)
        else:
            scores, keys = self._search_all(state, codes.words, weights, kk)
        with self._counter_lock:
            self.counters["queries"] += len(vectors)
        out = []
        for qi in range(len(vectors)):
            s, ks = scores[qi] / q_norm[qi], keys[qi]
            if rescore and len(ks):
                s, ks = self._rescore(state, vectors[qi], ks, k)
            out.append(
                [
                    Hit(state.row(int(key))["id"], float(score), state.row(int(key)))
                    for score, key in zip(s, ks, strict=True)
                ]
            )
        return out

    def search_plain(self, vector: np.ndarray, k: int) -> Outcome[list[Hit]]:
        """Top-``k`` hits of one float32 ``(dim,)`` query, scanned together with concurrent ones."""
        self.state  # noqa: B018 -- refuse while loading
        return self.scan_batches.submit((np.asarray(vector, dtype=np.float32), int(k)))

    def _scan_many(self, queries: Sequence[tuple[np.ndarray, int]]) -> list[list[Hit]]:
        # One scan for the whole batch, at the largest k: each query's top-k is
        # the head of its top-K list (same order, same tie-break).
        vectors = np.stack([v for v, _ in queries])
        hits = self.search(vectors, max(k for _, k in queries))
        return [h[:k] for h, (_, k) in zip(hits, queries, strict=True)]

    @staticmethod
    def _search_all(
        state: State, words: np.ndarray, weights: np.ndarray, k: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        # Ask the base for enough extra results to survive dropping its hidden rows.
        bs, bk = state.base.search(words, k + len(state.dead), weights, method="fast")
        ds, dk = state.delta.search(words, k, weights, method="fast")
        scores, keys = [], []
        for qi in range(words.shape[0]):
            live = ~np.isin(bk[qi], state.dead) if len(state.dead) else slice(None)
            s, ks = merge_topk([bs[qi][live], ds[qi]], [bk[qi][live], dk[qi]], k)
            scores.append(s)
            keys.append(ks)
        return scores, keys

    @staticmethod
    def _search_allowed(
        state: State, words: np.ndarray, weights: np.ndarray, k: int, allow: Sequence[str]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        base_keys, delta_keys = [], []
        for doc_id in dict.fromkeys(allow):
            if doc_id in state.overlay:
                if state.overlay[doc_id] is not None:
                    delta_keys.append(state.overlay[doc_id])
            elif doc_id in state.base_keys:
                base_keys.append(state.base_keys[doc_id])
        nq = words.shape[0]
        parts = []
        for index, keys in ((state.base, base_keys), (state.delta, delta_keys)):
            if keys:
                parts.append(_search_only(index, words, weights, k, np.array(keys, np.int64)))
        if not parts:  # none of the allowed ids is in the index
            return [np.empty(0, np.float32)] * nq, [np.empty(0, np.int64)] * nq
        scores, out_keys = [], []
        for qi in range(nq):
            s, ks = merge_topk([p[0][qi] for p in parts], [p[1][qi] for p in parts], k)
            scores.append(s)
            out_keys.append(ks)
        return scores, out_keys

    def _rescore(
        self, state: State, query: np.ndarray, keys: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.codec is not None
        in_delta = np.array([int(key) in state.delta_rows for key in keys])
        values = np.empty((len(keys), self.codec.m), dtype=np.float32)
        for index, mask in ((state.base, ~in_delta), (state.delta, in_delta)):
            if mask.any():
                c, s = index.get(keys[mask])
                w = s if s is not None else _plane_weights(index)
                values[mask] = code_values(c, index.m, w)
        norms = np.linalg.norm(values, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
        scores = values @ query / np.where(norms > 0, norms, 1.0)
        order = np.lexsort((keys, -scores))[:k]
        return scores[order], keys[order]

    def get(self, doc_id: str) -> dict[str, Any] | None:
        """The stored row of ``doc_id`` or None."""
        return self.state.lookup(doc_id)

    # ------------------------------------------------------------------ write
    def upsert(self, docs: Sequence[dict[str, Any]], vectors: np.ndarray) -> tuple[int, int]:
        """Add or replace documents; returns ``(added, replaced)`` once the write is durable.

        ``docs`` are ``{id, title, text, metadata}``; ``vectors`` float32 ``(n, dim)``.
        """
        assert self.codec is not None
        ids = [d["id"] for d in docs]
        if len(set(ids)) != len(ids):
            raise StoreError("document ids must be unique within one request")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not np.all(np.linalg.norm(vectors, axis=1) > 0):
            raise StoreError("a document vector is all zeros; cosine similarity is undefined")
        codes = self.codec.encode(vectors)
        with self._write_lock:
            state = self.state
            replaced = sum(state.lookup(i) is not None for i in ids)
            rows = [
                {
                    "key": self.next_key + j,
                    "id": d["id"],
                    "title": d.get("title", ""),
                    "text": d.get("text", ""),
                    "metadata": d.get("metadata"),
                }
                for j, d in enumerate(docs)
            ]
            # Build the next state first (this is where bad input fails), then
            # log it durably, then publish: nothing unlogged is ever visible.
            new_state = apply_upsert(state, rows, codes.words, codes.scales)
            record = {
                "op": "upsert",
                "docs": rows,
                "codes": _b64(codes.words),
                "scales": None if codes.scales is None else _b64(codes.scales),
            }
            self.wal.append(record)
            self.next_key += len(rows)
            self._publish(new_state)
            with self._counter_lock:
                self.counters["documents_written"] += len(rows)
        self._maybe_snapshot()
        return len(rows) - replaced, replaced

    def delete(self, doc_id: str) -> bool:
        """Delete ``doc_id``; False if it is not there. Durable when it returns."""
        with self._write_lock:
            state = self.state
            if state.lookup(doc_id) is None:
                return False
            new_state = apply_delete(state, [doc_id])
            self.wal.append({"op": "delete", "ids": [doc_id]})
            self._publish(new_state)
            with self._counter_lock:
                self.counters["documents_deleted"] += 1
        self._maybe_snapshot()
        return True

    def _publish(self, state: State) -> None:
        if len(state.overlay) >= self.settings.compact_every:
            state = compact(state)
        self._state = state

    def _maybe_snapshot(self) -> None:
        if self.wal.records < self.settings.snapshot_every or self._snapshotting:
            return
        self._snapshotting = True
        threading.Thread(target=self._background_snapshot, daemon=True).start()

    def _background_snapshot(self) -> None:
        try:
            self.snapshot()
        except Exception as exc:  # the log still holds every write; try again later
            log.error(json.dumps({"event": "snapshot_failed", "error": str(exc)}))
        finally:
            self._snapshotting = False

    def snapshot(self) -> dict[str, Any]:
        """Write a consistent generation to disk and drop the logs it covers.

        Writes continue meanwhile: they go to a fresh log that applies on top
        of the new generation.
        """
        started = time.perf_counter()
        with self._snapshot_lock:
            with self._write_lock:
                state = compact(self.state)
                self._state = state
                number = self.wal.number + 1
                self.wal.open(number)
            folder = self._generation_dir(number)
            if folder.exists():  # left half-written by a crash; never in force
                shutil.rmtree(folder)
            self._write_generation(folder, state.base, state.base_rows)
            fsync_dir(folder.parent)
            tmp = self.root / f".{CURRENT}.tmp"
            with open(tmp, "w") as f:
                json.dump({"generation": number}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / CURRENT)
            fsync_dir(self.root)
            self.generation = number
            self.wal.drop_before(number)
            gens = self.root / GENERATIONS
            for old in gens.iterdir() if gens.is_dir() else []:
                if old.name.isdigit() and int(old.name) < number:
                    shutil.rmtree(old, ignore_errors=True)
        info = {
            "generation": number,
            "documents": len(state),
            "seconds": round(time.perf_counter() - started, 3),
        }
        log.info(json.dumps({"event": "snapshot", **info}))
        return info

    def close(self, snapshot: bool | None = None) -> None:
        """Snapshot pending writes, close the log and let another process serve the directory.

        ``snapshot`` defaults to the ``snapshot_on_shutdown`` setting; ``False``
        leaves the directory as a crash would (everything still in the log).
        """
        if snapshot is None:
            snapshot = self.settings.snapshot_on_shutdown
        if self._state is not None and snapshot and (self.wal.records or self.replayed_records):
            self.snapshot()
        self.wal.close()
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the lock
            self._lock_file = None

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict[str, Any]:
        """Counts and sizes for ``GET /stats``."""
        state = self.state
        assert self.codec is not None
        n = len(state)
        bits = state.base.bits_per_vector
        return {
            "documents": n,
            "bits_per_vector": bits,
            "codec": self.codec.config(),
            "model": state.base.meta.get("model"),
            "dim": self.codec.dim,
            "index_bytes": n * (bits // 8 + 8),  # codes, scales, norms + the int64 id
            "generation": self.generation,
            "wal_bytes": self.wal.size(),
            "pending_writes": len(state.overlay),
            "queries_served": self.counters["queries"],
            "documents_written": self.counters["documents_written"],
            "documents_deleted": self.counters["documents_deleted"],
            "uptime_s": round(time.time() - self.started, 1),
        }
