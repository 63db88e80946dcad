"""Segment storage of an index: codes, keys (the `ids` arrays), scales and norms in segments, and their writes.

:class:`CodeStore` is the storage half of :class:`index.BinaryIndex`: it holds
the current :class:`index.segments.State` and is the one place rows are added,
replaced, tombstoned and compacted away. Searching and files on disk are the
index's (:mod:`index.flat`, :mod:`index.impl.dispatch`, :mod:`index.segment_files`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

import numpy as np

from index.codes import fixed_plane_weights, words_per_plane
from index.impl.fastscan import FastScanCodes
from index.impl.kernels import code_norms, code_norms_serial
from index.segments import (
    Core,
    Segment,
    State,
    append_rows,
    build_compaction,
    finish_compaction,
    tombstone,
)

#: Compact automatically once this fraction of stored rows are tombstones.
COMPACT_FRACTION = 0.25

Scaling = Literal["fixed", "per_document"]
Metric = Literal["ip", "cosine"]
Compaction = Literal["background", "inline", "off"]

_log = logging.getLogger(__name__)


class CodeStore:
    """Packed codes of ``planes`` x ``m`` bits in segments, with adds, removes and compaction.

    Arguments as :class:`index.BinaryIndex` (which adds search and files to this).

    Thread safety: any number of threads may read while others add, remove or
    compact. A reader takes one immutable snapshot (``self._state``); writers
    build the next snapshot and publish it with one assignment under a lock.
    """

    def __init__(
        self,
        m: int,
        planes: int = 1,
        scaling: Scaling = "fixed",
        metric: Metric = "cosine",
        meta: dict[str, Any] | None = None,
        plane_weights: np.ndarray | None = None,
        compaction: Compaction = "background",
    ) -> None:
        if m <= 0 or planes <= 0:
            raise ValueError(f"m and planes must be positive, got m={m}, planes={planes}")
        if scaling not in ("fixed", "per_document"):
            raise ValueError(f"scaling must be 'fixed' or 'per_document', got {scaling!r}")
        if metric not in ("ip", "cosine"):
            raise ValueError(f"metric must be 'ip' or 'cosine', got {metric!r}")
        if compaction not in ("background", "inline", "off"):
            raise ValueError(
                f"compaction must be 'background', 'inline' or 'off', got {compaction!r}"
            )
        self.compaction = compaction
        self.m = int(m)
        self.planes = int(planes)
        self.n_words = words_per_plane(m)
        self.scaling = scaling
        self.metric = metric
        self.meta: dict[str, Any] = dict(meta or {})
        if plane_weights is None:
            self.plane_weights = fixed_plane_weights(self.planes)
            self.custom_plane_weights = False
        else:
            if scaling != "fixed":
                raise ValueError("plane_weights only apply to scaling='fixed'")
            pw = np.asarray(plane_weights, dtype=np.float32).reshape(-1)
            if pw.shape != (self.planes,) or not np.isfinite(pw).all():
                raise ValueError(
                    f"plane_weights must be {self.planes} finite numbers, got {plane_weights!r}"
                )
            self.plane_weights = pw
            self.custom_plane_weights = True
        self._state = State(())
        # Writers (add, remove, the swap of a compaction, save) hold _lock briefly;
        # searches never take it: they read self._state once and use that snapshot.
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()  # one compaction at a time
        self._save_lock = threading.Lock()  # one save at a time
        self._compactor: threading.Thread | None = None
        #: Whether a search may keep a fast-scan copy of large sealed in-memory
        #: segments (one more byte per code byte) where the kernel chooser found
        #: fast-scan faster; False holds memory at the codes alone.
        self.fastscan = True
        # Fast-scan layouts by segment core uid: (rows, layout). Replaced, never mutated.
        self._layouts: dict[int, tuple[int, FastScanCodes]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # copy.deepcopy and pickle: the current state, without locks or threads.
        with self._lock:
            out = dict(self.__dict__)
        for name in ("_lock", "_compact_lock", "_save_lock", "_compactor", "kernels"):
            out.pop(name, None)
        out["_layouts"] = {}
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._compactor = None

    # ------------------------------------------------------------------ size
    def __len__(self) -> int:
        return self._state.n_live

    @property
    def bits_per_vector(self) -> int:
        """Stored bits per document, keys excluded: codes plus per-document scalars."""
        bits = self.planes * self.n_words * 64
        if self.scaling == "per_document":
            bits += self.planes * 32
        if self._stores_norms:
            bits += 32
        return bits

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays (codes, ids, scales, norms, tombstones).

        Counts whole buffers: the tail segment's spare capacity, tombstoned
        rows not yet compacted away and fast-scan copies are included.
        """
        total = sum(layout.nbytes for _, layout in self._layouts.values())
        for seg in self._state.segments:
            core = seg.core
            total += core.codes.nbytes + core.ids.nbytes + core.scales.nbytes + core.norms.nbytes
            total += 0 if seg.alive_buf is None else seg.alive_buf.nbytes
        return int(total)

    @property
    def segment_count(self) -> int:
        """Segments the index is made of (1 after :meth:`compact` of an in-memory index)."""
        return len(self._state.segments)

    @property
    def _stores_norms(self) -> bool:
        # Per-document scales absorb the norm (they are stored divided by it), and
        # one fixed-weight plane has the same norm sqrt(m) everywhere: only
        # fixed-weight multi-plane cosine codes need a stored norm for cosine.
        return self.metric == "cosine" and self.scaling == "fixed" and self.planes > 1

    # Public arrays never show tombstones: they are the live rows of every segment,
    # in segment order. Reading one changes nothing shared (a search running in
    # another thread is unaffected); the result is cached with the state it came from.
    @property
    def codes(self) -> np.ndarray:
        """uint64 ``(n, planes, words)`` live codes in storage order."""
        return self._live_array(self._state, "codes")

    @property
    def keys(self) -> np.ndarray:
        """int64 ``(n,)`` live keys in storage order (the columns of :meth:`scores`)."""
        return self._live_array(self._state, "ids")

    @property
    def scales(self) -> np.ndarray:
        """float32 ``(n, planes)`` stored per-document scales (empty for fixed weights)."""
        return self._live_array(self._state, "scales")

    @property
    def norms(self) -> np.ndarray:
        """float32 ``(n,)`` stored norms (only fixed-weight multi-plane cosine indexes)."""
        return self._live_array(self._state, "norms")

    def _live_array(self, state: State, name: str) -> np.ndarray:
        cached = state.cache.get(name)
        if cached is None:
            parts = [seg.live(getattr(seg, name)) for seg in state.segments]
            if not parts:
                cached = self._empty_arrays()[name]
            elif len(parts) == 1:
                cached = parts[0]
            else:
                cached = np.concatenate(parts)
            state.cache[name] = cached
        return cached

    def _empty_arrays(self) -> dict[str, np.ndarray]:
        return {
            "codes": np.empty((0, self.planes, self.n_words), dtype=np.uint64),
            "ids": np.empty(0, dtype=np.int64),
            "scales": np.empty((0, self.planes), dtype=np.float32),
            "norms": np.empty(0, dtype=np.float32),
        }

    def db_weights(self, seg: Segment) -> np.ndarray:
        """Document plane weights of ``seg``: float32 ``(n, P)`` scales, or the shared ``(1, P)``."""
        if self.scaling == "per_document":
            return seg.scales
        return self.plane_weights[None, :]

    def default_query_weights(self, query_planes: int) -> np.ndarray:
        """Query plane weights used when none are given, float32 ``(query_planes,)``.

        The index's fixed plane weights (custom or ``2**-p``) for their first
        ``query_planes`` planes; ``2**-p`` when the query has more planes.
        """
        if query_planes <= self.planes:
            return self.plane_weights[:query_planes].copy()
        return fixed_plane_weights(query_planes)

    # ------------------------------------------------------------------ write
    def add(
        self,
        codes: np.ndarray,
        keys: np.ndarray,
        scales: np.ndarray | None = None,
        *,
        stored_scales: bool = False,
    ) -> None:
        """Add codes; a key already in the index is replaced.

        Args:
            codes: uint64 ``(n, planes, ceil(m/64))`` from :func:`index.codes.pack_codes`.
            keys: int64 ``(n,)``, unique within the call.
            scales: float32 ``(n, planes)``, required iff ``weights == "per_document"``.
            stored_scales: the scales are already as stored (as :meth:`get` returns
                them, divided by the code norm for cosine): kept bit for bit, so
                codes moved between indexes (a split into shards) score identically.

        Rows are appended to the tail segment (amortised O(1) per row); a
        replaced key's old row becomes a tombstone. Works after :meth:`load`
        too: a memory-mapped base stays mapped and is never copied.
        """
        codes = np.ascontiguousarray(codes, dtype=np.uint64)
        keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
        expected = (self.planes, self.n_words)
        if codes.ndim != 3 or codes.shape[1:] != expected:
            raise ValueError(
                f"codes must have shape (n, {expected[0]}, {expected[1]}), got {codes.shape}"
            )
        if keys.shape[0] != codes.shape[0]:
            raise ValueError(f"{codes.shape[0]} codes but {keys.shape[0]} keys")
        if np.unique(keys).shape[0] != keys.shape[0]:
            raise ValueError("keys must be unique within one add")
        if self.scaling == "per_document":
            if scales is None:
                raise ValueError("this index stores per-document scales: pass scales")
            scales = np.ascontiguousarray(scales, dtype=np.float32)
            if scales.shape != (codes.shape[0], self.planes):
                raise ValueError(f"scales must have shape (n, {self.planes}), got {scales.shape}")
            if not np.isfinite(scales).all():
                raise ValueError("scales must be finite")
        elif scales is not None:
            raise ValueError("this index uses fixed plane weights: scales must be None")
        stride = int(self.scaling == "per_document")
        weights = scales if stride else self.plane_weights[None, :]
        norms = None
        if self.metric == "cosine" and (stride or self._stores_norms) and codes.shape[0]:
            # Waking the parallel kernel's threads costs more than a few rows' norms
            # on a busy machine: a small add (a single-document write) runs serially.
            norm_kernel = code_norms if codes.shape[0] >= 1024 else code_norms_serial
            norms = norm_kernel(codes, weights, stride, self.m)
            if np.any(norms <= 0):
                raise ValueError("a code has zero norm (all scales zero): cosine is undefined")
            if stride and not stored_scales:
                scales = scales / norms[:, None]
        if not keys.shape[0]:
            return
        rows = {
            "codes": codes,
            "ids": keys,
            "scales": scales if stride else None,
            "norms": norms if self._stores_norms else None,
        }
        with self._lock:
            segments = list(self._state.segments)
            tombstone(segments, keys)
            append_rows(
                segments,
                rows,
                self._tail_core,
                self._empty_arrays(),
                may_merge=not self._compact_lock.locked(),
            )
            self._state = State(tuple(segments))

    def _tail_core(self, capacity: int) -> Core:
        arrays = self._empty_arrays()
        codes = np.empty((capacity, self.planes, self.n_words), dtype=np.uint64)
        keys = np.empty(capacity, dtype=np.int64)
        scales = arrays["scales"]
        if self.scaling == "per_document":
            scales = np.empty((capacity, self.planes), dtype=np.float32)
        norms = np.empty(capacity, dtype=np.float32) if self._stores_norms else arrays["norms"]
        return Core(codes, keys, scales, norms, sealed=False)

    def remove(self, keys: np.ndarray, _compact: bool = True) -> int:
        """Delete documents by key; unknown keys are ignored. Returns how many were removed.

        Rows become tombstones that the scan skips; once a quarter of the stored
        rows are dead a compaction starts (in a background thread unless the
        index was made with ``compaction="inline"``).
        """
        keys = np.unique(np.asarray(keys, dtype=np.int64).reshape(-1))
        with self._lock:
            segments = list(self._state.segments)
            removed = tombstone(segments, keys)
            if removed:
                self._state = State(tuple(segments))
            state = self._state
        if _compact and removed and state.n_dead > COMPACT_FRACTION * state.n_rows:
            if self.compaction == "background":
                self.compact(background=True)
            elif self.compaction == "inline":
                self.compact()
        return removed

    def compact(self, background: bool = False) -> int:
        """Drop tombstoned rows from storage; returns how many rows were reclaimed.

        Builds new segments from a snapshot without holding the writer lock, so
        searches, adds and removes go on meanwhile; rows deleted during the
        build are tombstoned again in the result before it is swapped in. All
        segments are merged into one, without tombstones -- except a
        memory-mapped first segment without tombstones, which stays as it is
        (rewriting it would copy it into memory for nothing).

        Args:
            background: start the compaction in a daemon thread and return 0 at
                once (see :meth:`wait_for_compaction`); if one is already
                running, do nothing.
        """
        if not background:
            return self._compact_now()
        with self._lock:
            if self._compactor is not None and self._compactor.is_alive():
                return 0
            self._compactor = threading.Thread(
                target=self._compact_logged, name="binsearch-compact", daemon=True
            )
            self._compactor.start()
        return 0

    def wait_for_compaction(self, timeout: float | None = None) -> bool:
        """Wait for a background compaction; True when none is running any more."""
        thread = self._compactor
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _compact_logged(self) -> None:
        try:
            self._compact_now()
        except Exception:  # pragma: no cover - a thread has nobody to raise to
            _log.exception("background compaction failed; the index is unchanged")

    def _compact_now(self) -> int:
        with self._compact_lock:
            with self._lock:
                snapshot = tuple(seg.sealed() for seg in self._state.segments)
                self._state = State(snapshot)
            work = build_compaction(snapshot)  # the long part, without the writer lock
            if work is None:
                return 0
            with self._lock:
                done = finish_compaction(self._state.segments, snapshot, work)
                if done is None:  # pragma: no cover - writers do not merge meanwhile
                    return 0
                self._state = State(done[0])
            return done[1]

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``keys`` are in the index."""
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        found = np.zeros(keys.shape[0], dtype=bool)
        with self._lock:  # the tail's id map is current only for the current state
            for seg in self._state.segments:
                found |= seg.rows_of(keys) >= 0
        return found

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Stored ``(codes, scales)`` of ``keys``, in the order given; KeyError if any is absent.

        Scales come back as stored (for cosine indexes, divided by the code norm).
        """
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        codes = np.empty((keys.shape[0], self.planes, self.n_words), dtype=np.uint64)
        scales = np.empty((keys.shape[0], self.planes), dtype=np.float32)
        found = np.zeros(keys.shape[0], dtype=bool)
        with self._lock:
            rows_by_segment = [(seg, seg.rows_of(keys)) for seg in self._state.segments]
        for seg, rows in rows_by_segment:
            hit = rows >= 0
            if hit.any():
                codes[hit] = seg.codes[rows[hit]]
                if self.scaling == "per_document":
                    scales[hit] = seg.scales[rows[hit]]
                found |= hit
        if not found.all():
            raise KeyError(f"keys not in the index: {keys[~found][:10].tolist()}")
        return codes, scales if self.scaling == "per_document" else None
