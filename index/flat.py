"""An exhaustive scan index over packed multi-plane codes, with persistence."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numba
import numpy as np

from index.codes import (
    byte_tables,
    fixed_plane_weights,
    quantize_query,
    words_per_plane,
)
from index.fastscan import (
    HAS_AVX2,
    FastScanCodes,
    exact_tables_possible,
    fastscan_topk,
    fastscan_topk_float,
)
from index.kernels import (
    code_norms,
    hamming_topk_scan,
    plane_markers,
    score_codes,
    score_rows,
    table_topk_scan,
    topk_scan,
    words_marker,
)
from index.segments import (
    MIN_CAPACITY,
    SEGMENT_ROWS,
    Core,
    SavedFiles,
    Segment,
    State,
    file_stat,
    merge_segments,
    sealed_segment,
)
from index.topk import merge_heaps

FORMAT_NAME = "binsearch-index"
FORMAT_VERSION = 3
#: Versions :meth:`BinaryIndex.load` reads: 1 (no checksums, fixed file names), 2 (one
#: generation of checksummed files) and 3 (segments, each its own immutable files).
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
#: Compact automatically once this fraction of stored rows are tombstones.
COMPACT_FRACTION = 0.25
#: Sealed segments kept before the smallest adjacent pair is merged (at a seal or save).
MAX_SEGMENTS = 8

Weights = Literal["fixed", "per_document"]
Metric = Literal["ip", "cosine"]
Compaction = Literal["background", "inline", "off"]
#: Where a scan may use the fast-scan SDC kernel: no segment, large in-memory sealed
#: segments (the rest by popcount), or every segment.
FastScan = Literal["never", "sealed", "always"]

_log = logging.getLogger(__name__)


class IndexFormatError(ValueError):
    """An index directory that cannot be read: missing, damaged, or another format."""


def default_threads() -> int:
    """Threads a search uses unless told otherwise: every thread numba was started with.

    Splitting one query's scan over the cores pays when they are free:
    ``benchmarks/scan.py`` measured a single 1-plane query 1.4-1.9x faster
    with 2 threads than with 1 on a 2-core machine (docs/index.md). Pass
    ``threads=`` to share cores deliberately.
    """
    return int(numba.config.NUMBA_NUM_THREADS)


class BinaryIndex:
    """Packed codes of ``planes`` x ``m`` bits, ranked by exhaustive scan.

    Args:
        m: bits per plane.
        planes: planes per code (bits per dimension).
        weights: ``"fixed"`` plane weights ``2**-p`` shared by all documents,
            or ``"per_document"`` scales stored with each code.
        metric: ``"ip"`` ranks by the inner product of code values;
            ``"cosine"`` divides it by the stored document norm.
        meta: free-form JSON metadata kept in the manifest (model, codec, ...).
        plane_weights: custom shared plane weights, float ``(planes,)``, used
            instead of ``2**-p`` when ``weights == "fixed"`` (e.g. weights a
            binarizer learned); stored in the manifest.
        compaction: what :meth:`remove` does once a quarter of the stored rows
            are tombstones: start a ``"background"`` compaction thread, compact
            ``"inline"``, or nothing (``"off"``; call :meth:`compact` yourself).

    Search returns plain ``(scores, ids)`` arrays, best first, ties broken by
    id ascending, so results from several indexes merge with
    :func:`index.topk.merge_topk`.

    Storage is a tuple of segments (see :mod:`index.segments`): sealed ones
    (possibly memory-mapped files) and an in-memory tail that ``add`` appends
    to. Deletes are tombstones: :meth:`remove` marks rows dead, the scan skips
    them, and :meth:`compact` (started automatically once a quarter of the rows
    are dead, or on demand, in the background or not) reclaims the space.

    Thread safety: any number of threads may search while others add, remove,
    compact or save. A search reads one immutable snapshot of the segments;
    writers build the next snapshot and publish it with one assignment under a
    lock.
    """

    def __init__(
        self,
        m: int,
        planes: int = 1,
        weights: Weights = "fixed",
        metric: Metric = "cosine",
        meta: dict[str, Any] | None = None,
        plane_weights: np.ndarray | None = None,
        compaction: Compaction = "background",
    ) -> None:
        if m <= 0 or planes <= 0:
            raise ValueError(f"m and planes must be positive, got m={m}, planes={planes}")
        if weights not in ("fixed", "per_document"):
            raise ValueError(f"weights must be 'fixed' or 'per_document', got {weights!r}")
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
        self.weights = weights
        self.metric = metric
        self.meta: dict[str, Any] = dict(meta or {})
        if plane_weights is None:
            self.plane_weights = fixed_plane_weights(self.planes)
            self.custom_plane_weights = False
        else:
            if weights != "fixed":
                raise ValueError("plane_weights only apply to weights='fixed'")
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
        #: Whether ``method="auto"`` may keep a fast-scan copy of large sealed
        #: in-memory segments (one more byte per code byte) where that kernel
        #: measured faster; False holds memory at the codes alone.
        self.fastscan = True
        # Fast-scan layouts by segment core uid: (rows, layout). Replaced, never mutated.
        self._layouts: dict[int, tuple[int, FastScanCodes]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # copy.deepcopy and pickle: the current state, without locks or threads.
        with self._lock:
            out = dict(self.__dict__)
        for name in ("_lock", "_compact_lock", "_save_lock", "_compactor"):
            out.pop(name)
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
        """Stored bits per document, ids excluded: codes plus per-document scalars."""
        bits = self.planes * self.n_words * 64
        if self.weights == "per_document":
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
        return self.metric == "cosine" and self.weights == "fixed" and self.planes > 1

    # Public arrays never show tombstones: they are the live rows of every segment,
    # in segment order. Reading one changes nothing shared (a search running in
    # another thread is unaffected); the result is cached with the state it came from.
    @property
    def codes(self) -> np.ndarray:
        """uint64 ``(n, planes, words)`` live codes in storage order."""
        return self._live_array(self._state, "codes")

    @property
    def ids(self) -> np.ndarray:
        """int64 ``(n,)`` live ids in storage order (the columns of :meth:`scores`)."""
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

    def _db_weights(self, seg: Segment) -> np.ndarray:
        if self.weights == "per_document":
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
    def add(self, codes: np.ndarray, ids: np.ndarray, scales: np.ndarray | None = None) -> None:
        """Add codes; an id already in the index is replaced.

        Args:
            codes: uint64 ``(n, planes, ceil(m/64))`` from :func:`index.codes.pack_codes`.
            ids: int64 ``(n,)``, unique within the call.
            scales: float32 ``(n, planes)``, required iff ``weights == "per_document"``.

        Rows are appended to the tail segment (amortised O(1) per row); a
        replaced id's old row becomes a tombstone. Works after :meth:`load`
        too: a memory-mapped base stays mapped and is never copied.
        """
        codes = np.ascontiguousarray(codes, dtype=np.uint64)
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        expected = (self.planes, self.n_words)
        if codes.ndim != 3 or codes.shape[1:] != expected:
            raise ValueError(
                f"codes must have shape (n, {expected[0]}, {expected[1]}), got {codes.shape}"
            )
        if ids.shape[0] != codes.shape[0]:
            raise ValueError(f"{codes.shape[0]} codes but {ids.shape[0]} ids")
        if np.unique(ids).shape[0] != ids.shape[0]:
            raise ValueError("ids must be unique within one add")
        if self.weights == "per_document":
            if scales is None:
                raise ValueError("this index stores per-document scales: pass scales")
            scales = np.ascontiguousarray(scales, dtype=np.float32)
            if scales.shape != (codes.shape[0], self.planes):
                raise ValueError(f"scales must have shape (n, {self.planes}), got {scales.shape}")
            if not np.isfinite(scales).all():
                raise ValueError("scales must be finite")
        elif scales is not None:
            raise ValueError("this index uses fixed plane weights: scales must be None")
        stride = int(self.weights == "per_document")
        weights = scales if stride else self.plane_weights[None, :]
        norms = None
        if self.metric == "cosine" and (stride or self._stores_norms) and codes.shape[0]:
            norms = code_norms(codes, weights, stride, self.m)
            if np.any(norms <= 0):
                raise ValueError("a code has zero norm (all scales zero): cosine is undefined")
            if stride:
                scales = scales / norms[:, None]
        if not ids.shape[0]:
            return
        rows = {
            "codes": codes,
            "ids": ids,
            "scales": scales if stride else None,
            "norms": norms if self._stores_norms else None,
        }
        with self._lock:
            segments = list(self._state.segments)
            _tombstone(segments, ids)
            self._append(segments, rows)
            self._state = State(tuple(segments))

    def _append(self, segments: list[Segment], rows: dict[str, np.ndarray | None]) -> None:
        """Append ``rows`` to the tail of ``segments`` (in place; caller holds the lock)."""
        a = rows["ids"].shape[0]
        tail = segments[-1] if segments and not segments[-1].core.sealed else None
        if a >= SEGMENT_ROWS:  # a big batch is a segment of its own
            if tail is not None:
                segments[-1] = tail.sealed()
            arrays = {k: np.array(v, copy=True) for k, v in rows.items() if v is not None}
            arrays = {**self._empty_arrays(), **arrays}
            segments.append(
                sealed_segment(arrays["codes"], arrays["ids"], arrays["scales"], arrays["norms"])
            )
            self._merge_small(segments)
            return
        if tail is not None and tail.n + a > SEGMENT_ROWS:
            segments[-1] = tail.sealed()
            self._merge_small(segments)
            tail = None
        if tail is None:
            tail = Segment(self._tail_core(max(MIN_CAPACITY, _pow2(a))), 0)
            segments.append(tail)
        n, core = tail.n, tail.core
        alive_buf = tail.alive_buf
        if n + a > core.codes.shape[0]:  # grow: copy into a buffer twice as large
            grown = self._tail_core(max(2 * core.codes.shape[0], _pow2(n + a)))
            for name in ("codes", "ids", "scales", "norms"):
                if getattr(core, name).shape[0]:
                    getattr(grown, name)[:n] = getattr(core, name)[:n]
            grown.tail_rows = core.tail_rows
            if alive_buf is not None:
                alive_buf = np.concatenate(
                    [alive_buf[:n], np.ones(grown.codes.shape[0] - n, dtype=np.uint8)]
                )
            core = grown
        # Rows n..n+a are beyond every published view of this buffer: invisible until published.
        for name, values in rows.items():
            if values is not None:
                getattr(core, name)[n : n + a] = values
        if alive_buf is not None:
            alive_buf[n : n + a] = 1
        core.tail_rows.update(zip(rows["ids"].tolist(), range(n, n + a), strict=True))
        segments[-1] = Segment(core, n + a, alive_buf, tail.n_dead)

    def _tail_core(self, capacity: int) -> Core:
        arrays = self._empty_arrays()
        codes = np.empty((capacity, self.planes, self.n_words), dtype=np.uint64)
        ids = np.empty(capacity, dtype=np.int64)
        scales = arrays["scales"]
        if self.weights == "per_document":
            scales = np.empty((capacity, self.planes), dtype=np.float32)
        norms = np.empty(capacity, dtype=np.float32) if self._stores_norms else arrays["norms"]
        return Core(codes, ids, scales, norms, sealed=False)

    def _merge_small(self, segments: list[Segment]) -> None:
        """Keep at most MAX_SEGMENTS in-memory sealed segments: merge the smallest adjacent pair.

        Runs in the writer (caller holds the lock), and not while a compaction
        is building from a snapshot of these segments.
        """
        if self._compact_lock.locked():
            return
        while True:
            # Memory-mapped segments are never merged here: that would copy them into memory.
            small = [i for i, seg in enumerate(segments) if seg.core.sealed and not seg.core.mapped]
            pairs = [(segments[i].n + segments[i + 1].n, i) for i in small if i + 1 in small]
            if len(small) <= MAX_SEGMENTS or not pairs:
                return
            _, i = min(pairs)
            segments[i : i + 2] = [merge_segments(segments[i : i + 2])[0]]

    def remove(self, ids: np.ndarray, _compact: bool = True) -> int:
        """Delete documents by id; unknown ids are ignored. Returns how many were removed.

        Rows become tombstones that the scan skips; once a quarter of the stored
        rows are dead a compaction starts (in a background thread unless the
        index was made with ``compaction="inline"``).
        """
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        with self._lock:
            segments = list(self._state.segments)
            removed = _tombstone(segments, ids)
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
                segments = [seg.sealed() for seg in self._state.segments]
                self._state = State(tuple(segments))
            snapshot = tuple(segments)
            if not snapshot:
                return 0
            if snapshot[0].core.mapped and snapshot[0].n_dead == 0 and len(snapshot) > 1:
                groups = [[0], list(range(1, len(snapshot)))]
            else:
                groups = [list(range(len(snapshot)))]
            built = []
            for group in groups:
                if len(group) == 1 and snapshot[group[0]].n_dead == 0:
                    built.append(None)  # nothing to gain: keep the segment as it is
                else:
                    built.append(merge_segments([snapshot[i] for i in group]))
            if all(b is None for b in built):
                return 0
            with self._lock:
                current = self._state.segments
                if len(current) < len(snapshot) or any(
                    current[i].core is not snapshot[i].core for i in range(len(snapshot))
                ):  # pragma: no cover - writers do not merge while a compaction runs
                    return 0
                out, reclaimed = [], 0
                for group, result in zip(groups, built, strict=True):
                    if result is None:
                        out.append(current[group[0]])
                        continue
                    merged, parts = result
                    # Re-apply the deletes made since the snapshot.
                    died = [
                        offset + np.flatnonzero(current[i].alive[rows] == 0)
                        for i, (offset, rows) in zip(group, parts, strict=True)
                        if current[i].alive is not snapshot[i].alive
                    ]
                    died = [d for d in died if d.shape[0]]
                    if died:
                        merged = merged.with_dead(np.concatenate(died))
                    out.append(merged)
                    reclaimed += sum(snapshot[i].n_dead for i in group)
                self._state = State(tuple(out) + tuple(current[len(snapshot) :]))
            return reclaimed

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` are in the index."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        found = np.zeros(ids.shape[0], dtype=bool)
        with self._lock:  # the tail's id map is current only for the current state
            for seg in self._state.segments:
                found |= seg.rows_of(ids) >= 0
        return found

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Stored ``(codes, scales)`` of ``ids``, in the order given; KeyError if any is absent.

        Scales come back as stored (for cosine indexes, divided by the code norm).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        codes = np.empty((ids.shape[0], self.planes, self.n_words), dtype=np.uint64)
        scales = np.empty((ids.shape[0], self.planes), dtype=np.float32)
        found = np.zeros(ids.shape[0], dtype=bool)
        with self._lock:
            rows_by_segment = [(seg, seg.rows_of(ids)) for seg in self._state.segments]
        for seg, rows in rows_by_segment:
            hit = rows >= 0
            if hit.any():
                codes[hit] = seg.codes[rows[hit]]
                if self.weights == "per_document":
                    scales[hit] = seg.scales[rows[hit]]
                found |= hit
        if not found.all():
            raise KeyError(f"ids not in the index: {ids[~found][:10].tolist()}")
        return codes, scales if self.weights == "per_document" else None

    # ------------------------------------------------------------------ read
    def scores(
        self, query_codes: np.ndarray, query_weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Scores of every document for each query, float32 ``(nq, n)``, in storage order."""
        query_codes, query_weights = self._check_queries(query_codes, query_weights)
        state = self._state
        parts = [np.empty((query_codes.shape[0], 0), dtype=np.float32)]
        for seg in state.segments:
            if seg.n_live:
                full = self._score_segment(seg, query_codes, query_weights)
                parts.append(full if seg.alive is None else full[:, seg.alive.view(bool)])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def search(
        self,
        query_codes: np.ndarray,
        k: int = 10,
        query_weights: np.ndarray | None = None,
        batch_size: int = 256,
        *,
        allow_ids: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        cascade: int | None = None,
        threads: int | None = None,
        method: Literal["auto", "fast", "popcount", "sdc"] = "auto",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` documents for each query, by a fused scan (no full score matrix).

        Args:
            query_codes: uint64 ``(nq, Pq, ceil(m/64))``; ``Pq`` may differ from
                the index's planes (the plane-pair sum covers any pairing).
            k: results per query, ``k >= 1``; fewer come back when the index
                (or the filtered part of it) is smaller.
            query_weights: float32 ``(nq, Pq)``; default :meth:`default_query_weights`.
            batch_size: queries per scan of the database (each scan reads the
                codes from memory once for the whole batch).
            allow_ids: int64 ids; only these documents can be returned (exact:
                the scan skips the others rather than filtering a top-k).
            mask: bool ``(len(self),)`` over :attr:`ids` order; only ``True``
                documents can be returned. Combines with ``allow_ids``.
            cascade: if set to ``c``, scan plane 0 of documents and queries only,
                keep the best ``k * c`` and re-rank them with all planes. Exact
                for ``k * c >= len(self)``; otherwise an approximation that is
                cheaper because it reads one plane per document.
            threads: threads splitting the database; default :func:`default_threads`.
            method: ``"popcount"`` (plane-pair popcounts), ``"sdc"`` (BEBR's
                symmetric distance calculation by per-query nibble tables held in
                SIMD registers, :mod:`index.fastscan`, on every segment) or
                ``"auto"``: fast-scan on large in-memory sealed segments where it
                is exact for these query weights (integer multiples of a power of
                two, e.g. the default ``2**-p``) and measured faster on this
                machine for this code shape (:func:`measured_method`), popcount
                otherwise. ``"sdc"`` with other weights scans by quantized tables
                and re-scores ``4 k`` candidates exactly: the scores are exact, the
                top-k almost always is (``benchmarks/sdc.py`` recall). ``"fast"``:
                ``"auto"``'s choice, but where the tables would not be exact it
                may still take fast-scan with quantized tables and that re-scoring
                (if measured faster): the speed of ``"sdc"`` where it pays, with
                ``"auto"``'s placement (never the tail, never a mapped segment).
                binsearch's pipeline and service use it: their queries are
                binarized floats, and on SciFact it returned the same top-100
                lists as popcount for every query.

        Returns:
            ``scores`` float32 ``(nq, k')`` and ``ids`` int64 ``(nq, k')``,
            ``k' = min(k, number of searchable documents)``, best first, ties by id.

        The whole search reads one snapshot of the segments, taken at its start:
        adds, removes and compactions in other threads do not affect it.
        """
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if cascade is not None and int(cascade) < 1:
            raise ValueError(f"cascade must be a positive oversampling factor, got {cascade}")
        if method not in ("auto", "fast", "popcount", "sdc"):
            raise ValueError(f"method must be 'auto', 'fast', 'popcount' or 'sdc', got {method!r}")
        query_codes, query_weights = self._check_queries(query_codes, query_weights)
        if method == "sdc" and cascade is not None:
            raise ValueError("cascade search runs on popcounts: use method='popcount'")
        threads = self._check_threads(threads)
        state = self._state
        fast: FastScan = "always" if method == "sdc" else "never"
        if method in ("auto", "fast") and cascade is None:
            fast = self._auto_fastscan(state, query_codes, query_weights, method == "fast")
        masks, counts = self._scan_masks(state, allow_ids, mask)
        n_live = sum(counts)
        nq = query_codes.shape[0]
        kk = min(int(k), n_live)
        if kk == 0 or nq == 0:
            return np.empty((nq, kk), dtype=np.float32), np.empty((nq, kk), dtype=np.int64)
        out_scores = np.empty((nq, kk), dtype=np.float32)
        out_ids = np.empty((nq, kk), dtype=np.int64)
        for start in range(0, nq, int(batch_size)):
            stop = min(start + int(batch_size), nq)
            q, qw = query_codes[start:stop], query_weights[start:stop]
            if cascade is None or kk * int(cascade) >= n_live:
                s, ids = self._topk(
                    state, masks, counts, kk, threads, q, qw, self.planes, fast=fast
                )[:2]
            else:
                _, _, cand_seg, cand_rows = self._topk(
                    state,
                    masks,
                    counts,
                    min(kk * int(cascade), n_live),
                    threads,
                    np.ascontiguousarray(q[:, :1]),
                    np.ascontiguousarray(qw[:, :1]),
                    1,
                )
                s, ids = self._rerank(state, q, qw, cand_seg, cand_rows, kk)
            out_scores[start:stop] = s
            out_ids[start:stop] = ids
        return out_scores, out_ids

    def search_float(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        method: Literal["auto", "fastscan", "tables", "slices"] = "auto",
        bits: int = 4,
        **kwargs: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for float queries against the codes (asymmetric scoring).

        Args:
            queries: float ``(nq, m)`` query vectors (e.g. unquantized embeddings).
            k: results per query.
            method: ``"tables"`` scores the float query exactly with per-byte
                float lookup tables (a scalar kernel). ``"fastscan"`` scans by
                int8 nibble tables in SIMD registers (:mod:`index.fastscan`)
                and re-scores the best ``4 k`` exactly by the float tables: exact
                scores, and the exact top-k unless a true top-k document ranked
                below ``4 k`` by the quantized tables (recall 1.000 at every
                shape ``benchmarks/sdc.py`` measured). ``"auto"``: fast-scan on
                large in-memory sealed segments (with AVX2), ``"tables"`` on the
                rest. ``"slices"`` quantizes each query to ``bits`` sign planes
                (:func:`index.codes.quantize_query`) and reuses the popcount
                kernel: exact only for the quantized query.
            bits: query planes for ``"slices"``.
            **kwargs: ``allow_ids``, ``mask``, ``threads`` (and for ``"slices"``
                also ``cascade``, ``batch_size``), as in :meth:`search`.

        Returns:
            ``(scores, ids)`` as :meth:`search`; scores are inner products of the
            query (quantized for ``"slices"``) with the code values, over the
            norm for cosine.
        """
        x = np.asarray(queries, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.m:
            raise ValueError(f"float queries must have shape (nq, {self.m}), got {x.shape}")
        if method == "slices":
            codes, weights = quantize_query(x, bits)
            return self.search(codes, k, weights, **kwargs)
        if method in ("auto", "fastscan", "tables"):
            if not np.isfinite(x).all():
                raise ValueError("queries must be finite")
            fast: FastScan = "never"
            if method == "fastscan":
                fast = "always"
            elif method == "auto" and self.fastscan and HAS_AVX2:
                fast = "sealed"
            return self._search_tables(byte_tables(x), k, floats=x, fast=fast, **kwargs)
        raise ValueError(f"method must be 'auto', 'fastscan', 'tables' or 'slices', got {method!r}")

    def _search_tables(
        self,
        tables: np.ndarray,
        k: int,
        allow_ids: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        threads: int | None = None,
        floats: np.ndarray | None = None,
        fast: FastScan = "never",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for float queries ``floats`` ``(nq, m)``, float32 byte tables ``(nq, ceil(m/8), 256)``.

        ``fast`` (:data:`FastScan`) picks the segments fast-scan scores; the byte-table kernel the rest.
        """
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        threads = self._check_threads(threads)
        state = self._state
        masks, counts = self._scan_masks(state, allow_ids, mask)
        nq = tables.shape[0]
        kk = min(int(k), sum(counts))
        if kk == 0 or nq == 0:
            return np.empty((nq, kk), dtype=np.float32), np.empty((nq, kk), dtype=np.int64)
        scores, ids, _, _ = self._topk(
            state, masks, counts, kk, threads, tables=tables, floats=floats, fast=fast
        )
        return scores, ids

    def _check_threads(self, threads: int | None) -> int:
        threads = default_threads() if threads is None else int(threads)
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(
                f"threads must be in 1..{numba.config.NUMBA_NUM_THREADS}, got {threads}"
            )
        return threads

    def _scan_masks(
        self, state: State, allow_ids: np.ndarray | None, mask: np.ndarray | None
    ) -> tuple[list[np.ndarray], list[int]]:
        """Per segment: uint8 mask over its rows (empty for all rows) and searchable count."""
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (state.n_live,):
                raise ValueError(f"mask must be bool of shape ({state.n_live},), got {mask.shape}")
        allow = None if allow_ids is None else np.asarray(allow_ids, dtype=np.int64).reshape(-1)
        masks, counts, offset = [], [], 0
        for seg in state.segments:
            if allow is None and mask is None:
                masks.append(_NO_MASK if seg.alive is None else seg.alive)
                counts.append(seg.n_live)
                continue
            if mask is None:
                keep = np.ones(seg.n, dtype=bool) if seg.alive is None else seg.alive.astype(bool)
            else:  # the mask is over live rows in storage order: scatter it onto this segment
                keep = np.zeros(seg.n, dtype=bool)
                keep[seg.live_rows()] = mask[offset : offset + seg.n_live]
                offset += seg.n_live
            if allow is not None:
                keep &= np.isin(seg.ids, allow)
            masks.append(keep.view(np.uint8))
            counts.append(int(np.count_nonzero(keep)))
        return masks, counts

    def _topk(
        self,
        state: State,
        masks: list[np.ndarray],
        counts: list[int],
        k: int,
        threads: int,
        queries: np.ndarray | None = None,
        query_weights: np.ndarray | None = None,
        doc_planes: int = 0,
        tables: np.ndarray | None = None,
        floats: np.ndarray | None = None,
        fast: FastScan = "never",
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` over every segment: ``(scores, ids, segment, row)``, each ``(nq, k)``.

        Each segment's best ``min(k, its searchable rows)`` come from
        :meth:`_scan_segment`; the lists are merged by score descending, then id
        ascending -- the order one scan over all rows would give.
        """
        parts = []
        for s, seg in enumerate(state.segments):
            ks = min(k, counts[s])
            if ks:
                # A small segment beside others (such as the tail) is not worth waking a
                # second thread for: on a busy machine each parallel call waits for all.
                small = seg.n < _PARALLEL_ROWS and len(state.segments) > 1
                inner = 1 if small else threads
                scores, rows = self._scan_segment(
                    seg,
                    ks,
                    masks[s],
                    inner,
                    queries,
                    query_weights,
                    doc_planes,
                    tables,
                    floats,
                    fast,
                )
                parts.append((scores, seg.ids[rows], np.full_like(rows, s), rows))
        if len(parts) == 1:
            return parts[0]
        scores, ids, segs, rows = (np.concatenate(p, axis=1) for p in zip(*parts, strict=True))
        order = np.lexsort((ids, -scores), axis=-1)[:, :k]
        return tuple(np.take_along_axis(a, order, axis=1) for a in (scores, ids, segs, rows))

    def _scan_segment(
        self,
        seg: Segment,
        k: int,
        mask: np.ndarray,
        threads: int,
        queries: np.ndarray | None,
        query_weights: np.ndarray | None,
        doc_planes: int,
        tables: np.ndarray | None,
        floats: np.ndarray | None = None,
        fast: FastScan = "never",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of one segment: ``(scores float32 (nq, k), rows int64 (nq, k))``, best first.

        The one place the top-k scan kernels run (popcount, Hamming, byte
        tables, fast-scan); ``k`` must not exceed the segment's searchable rows.
        With ``tables`` the float queries ``floats`` are scored (exactly by the
        byte-table kernel, or by fast-scan with exact re-scoring); otherwise
        ``doc_planes`` planes of each document against ``queries``. ``fast``
        says whether this segment goes to fast-scan (:data:`FastScan`); only
        full-plane scans do.
        """
        n = seg.n
        use_fast = fast == "always" or (
            fast == "sealed" and seg.core.sealed and not seg.core.mapped and n >= _PARALLEL_ROWS
        )
        if use_fast and (tables is not None or doc_planes == self.planes):
            layout = self._layout(seg)
            norms_arg = seg.norms if self._stores_norms else None
            mask_arg = mask if mask.shape[0] else None
            if tables is not None:
                return fastscan_topk_float(
                    layout, floats, k, seg.ids, norms_arg, mask_arg, threads, float_tables=tables
                )
            return fastscan_topk(
                layout, queries, query_weights, k, seg.ids, norms_arg, mask_arg, threads
            )
        chunks = max(1, min(threads, n))
        nq = tables.shape[0] if tables is not None else queries.shape[0]
        heap_scores = np.empty((chunks, nq, k), dtype=np.float32)
        heap_rows = np.empty((chunks, nq, k), dtype=np.int64)
        stride = int(self.weights == "per_document")
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            if tables is not None:
                db_bytes = seg.codes.view(np.uint8).reshape(n, self.planes, -1)
                norms = seg.norms if self._stores_norms else _NO_NORMS
                table_topk_scan(
                    db_bytes,
                    self._db_weights(seg),
                    stride,
                    tables,
                    seg.ids,
                    norms,
                    mask,
                    heap_scores,
                    heap_rows,
                )
                return merge_heaps(heap_scores, heap_rows, seg.ids, k)
            # Only fixed-weight multi-plane cosine divides by a stored norm; a one-plane
            # cascade stage ranks by plane 0 alone, where the norm is not the right divisor.
            use_norms = self._stores_norms and doc_planes == self.planes
            norms = seg.norms if use_norms else _NO_NORMS
            # One plane against one plane with a positive shared weight ranks by Hamming
            # distance alone: the integer kernel, scores restored after the merge.
            scale = query_weights[:, 0] * self.plane_weights[0]
            hamming = (
                doc_planes == 1
                and queries.shape[1] == 1
                and self.weights == "fixed"
                and not use_norms
                and bool(np.all(scale > 0))
            )
            if hamming:
                hamming_topk_scan(
                    seg.codes,
                    queries,
                    seg.ids,
                    mask,
                    words_marker(self.n_words),
                    heap_scores,
                    heap_rows,
                )
                scores, rows = merge_heaps(heap_scores, heap_rows, seg.ids, k)
                # -hamming back to a * b * (m - 2 * hamming), in float32 like topk_scan
                scores = scale[:, None] * (np.float32(self.m) + np.float32(2) * scores)
                return scores.astype(np.float32, copy=False), rows
            doc_marker, query_marker = plane_markers(doc_planes, queries.shape[1], self.n_words)
            topk_scan(
                seg.codes,
                self._db_weights(seg),
                stride,
                doc_marker,
                queries,
                query_weights,
                query_marker,
                self.m,
                seg.ids,
                norms,
                mask,
                words_marker(self.n_words),
                heap_scores,
                heap_rows,
            )
        finally:
            numba.set_num_threads(previous)
        return merge_heaps(heap_scores, heap_rows, seg.ids, k)

    def _layout(self, seg: Segment) -> FastScanCodes:
        """The fast-scan copy of ``seg``, built on first use and kept while the segment lives."""
        uid = seg.core.uid
        hit = self._layouts.get(uid)
        if hit is not None and hit[0] == seg.n:
            return hit[1]
        weights = seg.scales if self.weights == "per_document" else self.plane_weights
        layout = FastScanCodes.from_codes(seg.codes, weights, self.m)
        live = {s.core.uid for s in self._state.segments}
        layouts = {u: v for u, v in self._layouts.items() if u in live and u != uid}
        layouts[uid] = (seg.n, layout)
        self._layouts = layouts  # one assignment: readers see the old dict or the new one
        return layout

    def _auto_fastscan(
        self,
        state: State,
        query_codes: np.ndarray,
        query_weights: np.ndarray,
        quantized: bool = False,
    ) -> FastScan:
        """``"sealed"`` where fast-scan is measured faster, else ``"never"``.

        ``method="auto"`` only where its tables are exact; with ``quantized``
        (``method="fast"``) also where they are not (quantized + re-scored).
        """
        if not (self.fastscan and HAS_AVX2):
            return "never"
        if not any(
            seg.core.sealed and not seg.core.mapped and seg.n >= _PARALLEL_ROWS
            for seg in state.segments
        ):
            return "never"
        shape = (self.m, self.planes, query_codes.shape[1], self.weights, self.metric)
        nq = query_codes.shape[0]
        batch = 1 if nq == 1 else 16
        # A known "popcount" answers first: the weights test costs ~0.2 ms of numpy.
        known = [
            _MEASURED.get((*shape, batch, e)) for e in ((True, False) if quantized else (True,))
        ]
        if all(c == "popcount" for c in known):
            return "never"
        exact = exact_tables_possible(query_weights, self.m)
        if not (exact or quantized):
            return "never"
        choice = measured_method(*shape, nq, exact=exact)
        return "sealed" if choice == "sdc" else "never"

    def _score_segment(
        self,
        seg: Segment,
        queries: np.ndarray,
        query_weights: np.ndarray,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Exact scores (all planes, over the norm for cosine) against one segment.

        The one place the scoring kernels run: every stored row, float32
        ``(nq, n)``, or with ``rows`` int64 ``(nq, c)`` (-1 = none) only those,
        float32 ``(nq, c)`` with ``-inf`` at -1.
        """
        stride = int(self.weights == "per_document")
        norms = seg.norms if self._stores_norms else _NO_NORMS
        if rows is not None:
            out = np.empty(rows.shape, dtype=np.float32)
            score_rows(
                seg.codes,
                self._db_weights(seg),
                stride,
                queries,
                query_weights,
                self.m,
                norms,
                rows,
                out,
            )
            return out
        out = np.empty((queries.shape[0], seg.n), dtype=np.float32)
        score_codes(seg.codes, self._db_weights(seg), stride, queries, query_weights, self.m, out)
        if norms.shape[0]:
            out /= norms[None, :]
        return out

    def _rerank(
        self,
        state: State,
        queries: np.ndarray,
        query_weights: np.ndarray,
        segs: np.ndarray,
        rows: np.ndarray,
        k: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of candidates ``(segment, row)`` (nq, c) with all planes; the best ``k``."""
        scores = np.full(rows.shape, -np.inf, dtype=np.float32)
        ids = np.zeros(rows.shape, dtype=np.int64)
        for s in np.unique(segs).tolist():
            seg = state.segments[s]
            here = segs == s
            mine = np.ascontiguousarray(np.where(here, rows, -1))
            scores = np.where(here, self._score_segment(seg, queries, query_weights, mine), scores)
            ids[here] = seg.ids[rows[here]]
        order = np.lexsort((ids, -scores), axis=-1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def _check_queries(
        self, query_codes: np.ndarray, query_weights: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        query_codes = np.ascontiguousarray(query_codes, dtype=np.uint64)
        if query_codes.ndim != 3 or query_codes.shape[2] != self.n_words:
            raise ValueError(
                f"query codes must have shape (nq, planes, {self.n_words}) for {self.m}-bit "
                f"planes, got {query_codes.shape}"
            )
        if query_weights is None:
            query_weights = np.broadcast_to(
                self.default_query_weights(query_codes.shape[1]), query_codes.shape[:2]
            )
        query_weights = np.ascontiguousarray(query_weights, dtype=np.float32)
        if query_weights.shape != query_codes.shape[:2]:
            raise ValueError(
                f"query weights must have shape {query_codes.shape[:2]}, got {query_weights.shape}"
            )
        if not np.isfinite(query_weights).all():
            raise ValueError("query weights must be finite")
        return query_codes, query_weights

    # ------------------------------------------------------------------ disk
    def _array_names(self) -> list[str]:
        names = ["codes", "ids"]
        names += ["scales"] if self.weights == "per_document" else []
        names += ["norms"] if self._stores_norms else []
        return names

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index into directory ``path`` (created if missing), atomically.

        Each segment is a set of immutable files (``codes.<g>-<s>.npy``, ...,
        written in generation ``g``); a segment already saved in ``path`` is
        not written again, so a save after a few adds writes only the new rows
        (plus a small packed tombstone mask, ``alive.<g>-<s>.npy``, for each
        segment with deleted rows). Every file is written to a temporary name,
        fsynced and renamed; the manifest, holding each file's size and CRC-32,
        is replaced last the same way. The manifest rename is the commit: a
        crash before it leaves the previous index loadable, a crash after it
        the new one. Files no manifest refers to any more are deleted afterwards.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        where = path.resolve()
        with self._save_lock:
            with self._lock:  # seal the tail: segment files never change once written
                segments = [seg.sealed() for seg in self._state.segments]
                self._merge_small(segments)
                self._state = State(tuple(segments))
            generation = _next_generation(path)
            files: dict[str, dict[str, Any]] = {}
            written: list[tuple[Core, SavedFiles]] = []
            entries = []
            for s, seg in enumerate(segments):
                suffix = "" if s == 0 else f".{s}"
                saved = _reusable_files(seg.core, where)
                if saved is None:
                    saved_entries, stats = {}, {}
                    for name in self._array_names():
                        file = f"{name}.{generation}-{s}.npy"
                        array = getattr(seg, name)
                        size, crc = _atomic_write(path / file, lambda f, a=array: np.save(f, a))
                        saved_entries[name] = {"file": file, "bytes": size, "crc32": crc}
                        stats[name] = file_stat(path / file)
                    saved = (where, saved_entries, stats)
                    written.append((seg.core, saved))
                for name in self._array_names():
                    files[name + suffix] = saved[1][name]
                if seg.n_dead:
                    file = f"alive.{generation}-{s}.npy"
                    packed = np.packbits(seg.alive.view(bool))
                    size, crc = _atomic_write(path / file, lambda f, a=packed: np.save(f, a))
                    files["alive" + suffix] = {"file": file, "bytes": size, "crc32": crc}
                entries.append({"rows": seg.n, "dead": seg.n_dead})
            manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "generation": generation,
                "m": self.m,
                "planes": self.planes,
                "words_per_plane": self.n_words,
                "weights": self.weights,
                "metric": self.metric,
                "count": sum(seg.n_live for seg in segments),
                "bits_per_vector": self.bits_per_vector,
                "arrays": sorted(self._array_names()),
                "segments": entries,
                "files": files,
                "meta": self.meta,
            }
            if self.custom_plane_weights:
                manifest["plane_weights"] = [float(w) for w in self.plane_weights]
            text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
            _atomic_write(path / MANIFEST, lambda f: f.write(text.encode()))
            _fsync_dir(path)
            for core, saved in written:  # only now are these files part of a committed index
                core.files = saved
            current = {entry["file"] for entry in files.values()}
            for file in path.iterdir():
                if _ARRAY_FILE.fullmatch(file.name) and file.name not in current:
                    file.unlink(missing_ok=True)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], mmap: bool = False, verify: bool = True
    ) -> BinaryIndex:
        """Read an index written by :meth:`save`; raise :class:`IndexFormatError` if unusable.

        Args:
            path: the index directory.
            mmap: map the arrays instead of reading them: opening is instant and
                an index larger than RAM still searches (pages come from the OS
                cache). The mapping is copy-on-write, the files are never changed;
                later adds go to new in-memory segments, the mapped ones are never
                copied (unless :meth:`compact` has tombstones in them to drop).
            verify: check every file's CRC-32 against the manifest (reads each
                file once); sizes are always checked.
        """
        path = Path(path)
        manifest = read_manifest(path)
        try:
            index = cls(
                manifest["m"],
                manifest["planes"],
                manifest["weights"],
                manifest["metric"],
                manifest.get("meta"),
                manifest.get("plane_weights"),
            )
            count = int(manifest["count"])
            version = manifest["format_version"]
            if version >= 3:
                layout = [(int(e["rows"]), int(e["dead"])) for e in manifest["segments"]]
            else:
                layout = [(count, 0)]
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{path}: invalid manifest ({exc})") from exc
        expected = set(index._array_names())
        if set(manifest.get("arrays", [])) != expected:
            raise IndexFormatError(f"{path}: manifest lists arrays {manifest.get('arrays')}")
        if sum(n - dead for n, dead in layout) != count:
            raise IndexFormatError(
                f"{path}: segments hold {sum(n - d for n, d in layout)} live rows, "
                f"manifest says count {count}"
            )
        dtypes = {"codes": np.uint64, "ids": np.int64, "norms": np.float32, "scales": np.float32}
        where = path.resolve()
        segments = []
        for s, (n, dead) in enumerate(layout):
            suffix = "" if s == 0 else f".{s}"
            shapes = {
                "codes": (n, index.planes, index.n_words),
                "ids": (n,),
                "norms": (n,),
                "scales": (n, index.planes),
            }
            arrays = index._empty_arrays()
            entries, stats = {}, {}
            for name in sorted(expected):
                arrays[name] = _load_array(
                    path, manifest, name + suffix, name, shapes[name], dtypes[name], mmap, verify
                )
                if version >= 2:
                    entries[name] = manifest["files"][name + suffix]
                    stats[name] = file_stat(path / entries[name]["file"])
            alive = None
            if dead:
                packed = _load_array(
                    path,
                    manifest,
                    "alive" + suffix,
                    "alive",
                    ((n + 7) // 8,),
                    np.uint8,
                    False,
                    verify,
                )
                alive = np.unpackbits(packed, count=n).astype(np.uint8)
                if n - int(np.count_nonzero(alive)) != dead:
                    raise IndexFormatError(f"{path}: segment {s} tombstones disagree with manifest")
            seg = sealed_segment(
                arrays["codes"], arrays["ids"], arrays["scales"], arrays["norms"], alive, mmap
            )
            if version >= 2:
                seg.core.files = (where, entries, stats)
            segments.append(seg)
        index._state = State(tuple(segments))
        return index

    # ------------------------------------------------------------------ faiss
    def to_faiss(self) -> Any:
        """Export a 1-plane index to faiss: ``IndexBinaryIDMap(IndexBinaryFlat(m))``.

        faiss stores dimension ``j`` at bit ``j % 8`` of byte ``j // 8``, which is
        exactly our layout read as bytes, so codes copy over unchanged; ``m``
        must be a multiple of 8. faiss ranks by Hamming distance, i.e. by our
        1-plane score ``m - 2 * hamming``. Needs faiss (imported here only).
        """
        import faiss  # optional: index/ itself depends on numpy and numba only

        if self.planes != 1 or self.m % 8:
            raise ValueError("faiss export needs 1-plane codes with m a multiple of 8")
        flat = faiss.IndexBinaryFlat(self.m)
        out = faiss.IndexBinaryIDMap(flat)
        out.add_with_ids(codes_to_bytes(self.codes, self.m), self.ids)
        return out

    @classmethod
    def from_faiss(cls, faiss_index: Any, metric: Metric = "ip", **kwargs: Any) -> BinaryIndex:
        """Import a faiss binary index (``IndexBinaryFlat`` or an ``IndexBinaryIDMap`` of one).

        Ids come from the id map, or are ``0..n-1`` for a bare flat index.
        """
        import faiss

        inner = faiss_index
        if isinstance(faiss_index, faiss.IndexBinaryIDMap):
            inner = faiss.downcast_IndexBinary(faiss_index.index)
            ids = faiss.vector_to_array(faiss_index.id_map).astype(np.int64)
        else:
            ids = np.arange(faiss_index.ntotal, dtype=np.int64)
        if not isinstance(inner, faiss.IndexBinaryFlat):
            raise ValueError(f"can import IndexBinaryFlat only, got {type(inner).__name__}")
        m = int(inner.d)
        codes = faiss.vector_to_array(inner.xb).reshape(inner.ntotal, m // 8)
        out = cls(m, 1, "fixed", metric, **kwargs)
        out.add(bytes_to_codes(codes, m), ids)
        return out


def codes_to_bytes(codes: np.ndarray, m: int) -> np.ndarray:
    """1-plane codes uint64 ``(n, 1, W)`` as faiss binary codes uint8 ``(n, m // 8)``."""
    codes = np.ascontiguousarray(codes, dtype="<u8")
    if codes.ndim != 3 or codes.shape[1] != 1 or m % 8:
        raise ValueError("need 1-plane codes (n, 1, W) and m a multiple of 8")
    flat = codes.reshape(codes.shape[0], codes.shape[2])
    return np.ascontiguousarray(flat.view(np.uint8)[:, : m // 8])


def bytes_to_codes(codes: np.ndarray, m: int) -> np.ndarray:
    """faiss binary codes uint8 ``(n, m // 8)`` as 1-plane codes uint64 ``(n, 1, W)``."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] * 8 != m:
        raise ValueError(f"faiss codes must have shape (n, {m // 8}), got {codes.shape}")
    n_words = words_per_plane(m)
    padded = np.zeros((codes.shape[0], n_words * 8), dtype=np.uint8)
    padded[:, : codes.shape[1]] = codes
    return padded.view("<u8").astype(np.uint64).reshape(codes.shape[0], 1, n_words)


_NO_NORMS = np.empty(0, dtype=np.float32)
_NO_MASK = np.empty(0, dtype=np.uint8)
# Array files of every format version: v1 "codes.npy", v2 "codes.7.npy", v3 "codes.7-2.npy".
_ARRAY_FILE = re.compile(r"(codes|ids|scales|norms|alive)(\.\d+(-\d+)?)?\.npy")


def _pow2(n: int) -> int:
    """The smallest power of two ``>= n``."""
    return 1 << max(0, int(n) - 1).bit_length()


#: In an index of several segments, those with fewer rows are scanned on one thread.
_PARALLEL_ROWS = 1 << 15

#: :func:`measured_method` results of this process, by code shape.
_MEASURED: dict[tuple[Any, ...], str] = {}
#: One measurement at a time: two at once would time each other's contention.
_MEASURE_LOCK = threading.Lock()


def measured_method(
    m: int,
    planes: int,
    query_planes: int,
    weights: Weights,
    metric: Metric,
    nq: int,
    exact: bool = True,
) -> Literal["popcount", "sdc"]:
    """The faster kernel for this code shape on this machine: ``"popcount"`` or ``"sdc"``.

    Measured once per process and shape (threads asking at once wait for one
    measurement): both kernels, on one thread, score one segment's worth
    (:data:`index.segments.SEGMENT_ROWS`) of random codes of the shape --
    enough rows that per-call costs such as building the query's tables
    weigh as they do in a real scan -- for single queries when ``nq == 1``;
    batches of 16 queries score that many rows over the plane pairs per row.
    5 interleaved rounds after a warm-up that compiles and builds the
    fast-scan copy; medians. Fast-scan must win by 10 %: it costs a second
    copy of the codes. Takes about a second (plus the first compilation of a
    kernel variant, which numba caches on disk). ``exact``: query weights
    ``2**-p`` (exact tables); otherwise weights off that grid (quantized
    tables, ``4 k`` candidates re-scored).
    """
    batch = 1 if nq == 1 else 16
    key = (int(m), int(planes), int(query_planes), weights, metric, batch, bool(exact))
    if key in _MEASURED:
        return _MEASURED[key]  # type: ignore[return-value]
    with _MEASURE_LOCK:
        if key not in _MEASURED:  # another thread may have measured it meanwhile
            _MEASURED[key] = _measure(key)
    return _MEASURED[key]  # type: ignore[return-value]


def _measure(key: tuple[Any, ...]) -> Literal["popcount", "sdc"]:
    """Time popcount and fast-scan for ``key`` (:func:`measured_method`'s arguments)."""
    m, planes, query_planes, weights, metric, batch, exact = key
    rng = np.random.default_rng(0)
    # A batch amortises per-call costs over its 16 queries: fewer rows will do, the
    # fewer the more plane pairs each row costs (a 4 x 4 batch: 16k rows).
    rows = SEGMENT_ROWS if batch == 1 else SEGMENT_ROWS // (planes * query_planes)
    probe = BinaryIndex(m, planes, weights, metric, compaction="off")
    words = probe.n_words
    codes = rng.integers(0, 2**64, size=(rows, planes, words), dtype=np.uint64, endpoint=False)
    if m % 64:
        codes[:, :, -1] &= np.uint64((1 << (m % 64)) - 1)
    scales = None
    if weights == "per_document":
        scales = (rng.random((rows, planes)) + 0.5).astype(np.float32)
    probe.add(codes, np.arange(rows, dtype=np.int64), scales)
    seg = probe._state.segments[0]
    queries = rng.integers(
        0, 2**64, size=(batch, query_planes, words), dtype=np.uint64, endpoint=False
    )
    qw = np.ascontiguousarray(
        np.broadcast_to(probe.default_query_weights(query_planes), (batch, query_planes))
    )
    if not exact:  # residual-like weights off the power-of-two grid
        qw = (qw * (rng.random((batch, query_planes)) + 0.5)).astype(np.float32)

    def run(fast: FastScan) -> float:
        start = time.perf_counter()
        probe._scan_segment(seg, 10, _NO_MASK, 1, queries, qw, planes, None, None, fast)
        return time.perf_counter() - start

    run("never"), run("always")
    times: dict[str, list[float]] = {"never": [], "always": []}
    for _ in range(5):
        for fast in ("never", "always"):
            times[fast].append(run(fast))  # type: ignore[arg-type]
    popcount, sdc = (float(np.median(times[f])) for f in ("never", "always"))
    choice: Literal["popcount", "sdc"] = "sdc" if sdc * 1.1 < popcount else "popcount"
    _log.info(
        "kernel for %d x %d bits, %d query planes, batch %d, %s tables: %s "
        "(popcount %.3f ms, sdc %.3f ms)",
        planes,
        m,
        query_planes,
        batch,
        "exact" if exact else "quantized",
        choice,
        1e3 * popcount,
        1e3 * sdc,
    )
    return choice


def _tombstone(segments: list[Segment], ids: np.ndarray) -> int:
    """Tombstone the live rows of ``ids`` (unique) in ``segments``, in place; how many."""
    removed = 0
    for s, seg in enumerate(segments):
        if seg.n_live:
            rows = seg.rows_of(ids)
            hit = rows[rows >= 0]
            if hit.shape[0]:
                segments[s] = seg.with_dead(hit)
                removed += int(hit.shape[0])
    return removed


def _reusable_files(core: Core, where: Path) -> SavedFiles | None:
    """The files ``core`` was saved to in directory ``where``, if still there unchanged."""
    saved = core.files
    if saved is None or saved[0] != where:
        return None
    try:
        for name, stat in saved[2].items():
            if file_stat(where / saved[1][name]["file"]) != stat:
                return None
    except OSError:
        return None
    return saved


def _load_array(
    path: Path,
    manifest: dict[str, Any],
    key: str,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    mmap: bool,
    verify: bool,
) -> np.ndarray:
    """One array file of an index directory, checked against the manifest."""
    version = manifest["format_version"]
    entry = manifest.get("files", {}).get(key) if version >= 2 else None
    if version >= 2 and not isinstance(entry, dict):
        raise IndexFormatError(f"{path}: manifest has no file entry for {key}")
    name_on_disk = str(entry["file"]) if entry else f"{name}.npy"
    if Path(name_on_disk).name != name_on_disk:
        raise IndexFormatError(f"{path}: manifest names a file outside the index: {name_on_disk}")
    file = path / name_on_disk
    if entry:
        _check_file(file, entry, verify)
    try:
        array = np.load(file, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path}: cannot read {file.name} ({exc})") from exc
    if array.shape != shape or array.dtype != dtype:
        raise IndexFormatError(
            f"{path}: {file.name} holds {array.dtype} {array.shape}, "
            f"manifest says {np.dtype(dtype)} {shape}"
        )
    # np.asarray drops the memmap subclass (numba types plain arrays) but keeps
    # the mapping; "c" keeps it writeable, so kernels compile once.
    return np.asarray(array)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an index directory, checked for format and version."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise IndexFormatError(f"{path} is not an index directory (no {MANIFEST})")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{file}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{file}: not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise IndexFormatError(
            f"{path}: index format version {version}, this binsearch reads versions "
            f"{list(READABLE_VERSIONS)}; rebuild the index with `binsearch index`"
        )
    return manifest


class _ChecksumWriter:
    """A write-only file wrapper that counts bytes and a CRC-32 on the way through."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.size, self.crc = f, 0, 0

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self.size += view.nbytes
        return self.f.write(view)


def _atomic_write(target: Path, write: Callable[[Any], Any]) -> tuple[int, int]:
    """Write ``target`` via a fsynced temporary file and a rename; return (bytes, crc32)."""
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as f:
        writer = _ChecksumWriter(f)
        write(writer)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return writer.size, writer.crc


def _fsync_dir(path: Path) -> None:
    # The renames are durable only once the directory entry is on disk too.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _next_generation(path: Path) -> int:
    try:
        manifest = read_manifest(path)
        return int(manifest.get("generation", 0)) + 1
    except (IndexFormatError, TypeError, ValueError):
        return 1


def _check_file(file: Path, entry: dict[str, Any], verify: bool) -> None:
    """Size (always) and CRC-32 (if ``verify``) of ``file`` against its manifest entry."""
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise IndexFormatError(f"{file}: missing ({exc})") from exc
    if size != entry.get("bytes"):
        raise IndexFormatError(
            f"{file}: {size} bytes, manifest says {entry.get('bytes')} (truncated or replaced)"
        )
    if verify:
        crc = 0
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                crc = zlib.crc32(chunk, crc)
        if crc != entry.get("crc32"):
            raise IndexFormatError(f"{file}: checksum mismatch, the file is corrupted")
