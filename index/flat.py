"""The index object: :class:`BinaryIndex`, packed multi-plane codes ranked by exhaustive scan.

The jobs around it live beside it: segment storage and edits
(:mod:`index.segments`), per-segment search dispatch (:mod:`index.impl.dispatch`),
the kernel choice (:mod:`index.impl.kernel_choice`), files on disk
(:mod:`index.segment_files`, :mod:`index.durable`) and faiss interop
(:mod:`index.faiss_interop`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numba
import numpy as np

from index import faiss_interop, segment_files
from index.code_store import COMPACT_FRACTION, CodeStore, Compaction, Metric, Scaling
from index.codes import byte_tables, quantize_query
from index.durable import IndexFormatError
from index.impl import dispatch, gather
from index.impl.batch_kernels import batch_supported
from index.impl.dispatch import Plan, ScanQuery
from index.impl.fastscan import HAS_AVX2, exact_tables_possible
from index.impl.kernel_choice import Kernel, KernelChooser, default_chooser
from index.impl.single_kernels import single_supported
from index.segment_files import INDEX_FORMAT_VERSION, read_manifest
from index.segments import MAX_SEGMENTS, MIN_CAPACITY, SEGMENT_ROWS, State, merge_small

__all__ = [
    "COMPACT_FRACTION",
    "INDEX_FORMAT_VERSION",
    "MAX_SEGMENTS",
    "MIN_CAPACITY",
    "SEGMENT_ROWS",
    "BinaryIndex",
    "IndexFormatError",
    "Method",
    "default_threads",
    "read_manifest",
]

#: ``search(method=...)``: ``"exact"`` or ``"fast"``, or a kernel by name (see search).
Method = Literal["exact", "fast", "popcount", "batch", "sdc"]
_METHODS = ("exact", "fast", "popcount", "batch", "sdc")


def default_threads() -> int:
    """Threads a search uses unless told otherwise: every thread numba was started with.

    Splitting one query's scan over the cores pays when they are free: the
    scan is bound by memory bandwidth, which one core does not fill. Pass
    ``threads=`` to share cores deliberately.
    """
    return int(numba.config.NUMBA_NUM_THREADS)


class BinaryIndex(CodeStore):
    """Packed codes of ``planes`` x ``m`` bits, ranked by exhaustive scan.

    Args:
        m: bits per plane.
        planes: planes per code (bits per dimension).
        scaling: ``"fixed"`` plane weights ``2**-p`` shared by all documents,
            or ``"per_document"`` scales stored with each code.
        metric: ``"ip"`` ranks by the inner product of code values;
            ``"cosine"`` divides it by the stored document norm.
        meta: free-form JSON metadata kept in the manifest (model, codec, ...).
        plane_weights: custom shared plane weights, float ``(planes,)``, used
            instead of ``2**-p`` when ``scaling == "fixed"`` (e.g. weights a
            binarizer learned); stored in the manifest.
        compaction: what :meth:`remove` does once a quarter of the stored rows
            are tombstones: start a ``"background"`` compaction thread, compact
            ``"inline"``, or nothing (``"off"``; call :meth:`compact` yourself).
        kernels: the :class:`index.impl.kernel_choice.KernelChooser` that picks scan
            kernels; default the process's shared one (measures once per shape).

    Search returns plain ``(scores, keys)`` arrays (``keys`` are the int64 keys),
    best first, ties broken by key ascending, so results from several indexes merge with
    :func:`index.impl.topk.merge_topk`.

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
        scaling: Scaling = "fixed",
        metric: Metric = "cosine",
        meta: dict[str, Any] | None = None,
        plane_weights: np.ndarray | None = None,
        compaction: Compaction = "background",
        kernels: KernelChooser | None = None,
    ) -> None:
        super().__init__(m, planes, scaling, metric, meta, plane_weights, compaction)
        #: Which kernel is faster for a code shape on this machine (measured once per shape).
        self.kernels = default_chooser() if kernels is None else kernels

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.kernels = default_chooser()

    # ------------------------------------------------------------------ read
    def scores(
        self, query_codes: np.ndarray, query_weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Scores of every document for each query, float32 ``(nq, n)``, in storage order."""
        query_codes, query_weights = self._check_queries(query_codes, query_weights)
        parts = [np.empty((query_codes.shape[0], 0), dtype=np.float32)]
        for seg in self._state.segments:
            if seg.n_live:
                full = dispatch.score_segment(self, seg, query_codes, query_weights)
                parts.append(full if seg.alive is None else full[:, seg.alive.view(bool)])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def search(
        self,
        query_codes: np.ndarray,
        k: int = 10,
        query_weights: np.ndarray | None = None,
        batch_size: int = 256,
        *,
        allow_keys: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        cascade: int | None = None,
        threads: int | None = None,
        method: Method = "exact",
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
            allow_keys: int64 keys; only these documents can be returned (exact:
                the scan skips the others rather than filtering a top-k). A
                selective list (:data:`index.impl.gather.GATHER_FRACTION` of the
                rows or fewer) is not scanned for: its rows alone are looked up
                and scored, with the same scores and ties (``"exact"`` and
                ``"fast"``; see :mod:`index.impl.gather`).
            mask: bool ``(len(self),)`` over :attr:`keys` order; only ``True``
                documents can be returned. Combines with ``allow_keys``.
            cascade: if set to ``c``, scan plane 0 only, keep the best ``k * c``
                and re-rank them with all planes (exact for ``k * c >= len(self)``).
            threads: threads splitting the database; default :func:`default_threads`.
            method: ``"exact"`` (the default) returns exactly the popcount
                scores and top-k, by whichever exact kernel :attr:`kernels`
                measured fastest for this shape; ``"fast"`` may also take
                fast-scan with quantized tables and exact re-scoring of ``4 k``
                candidates (exact scores; the top-k almost always exact). Or a
                kernel by name, on every segment: ``"popcount"``, ``"batch"``
                (:mod:`index.impl.batch_kernels`), ``"sdc"`` (fast-scan, :mod:`index.impl.fastscan`).

        Returns:
            ``scores`` float32 ``(nq, k')`` and ``keys`` int64 ``(nq, k')`` (keys),
            ``k' = min(k, number of searchable documents)``, best first, ties by key.

        The whole search reads one snapshot of the segments, taken at its start.
        """
        _check_search_options(k, batch_size, cascade, method)
        query_codes, query_weights = self._check_queries(query_codes, query_weights)
        threads = self._check_threads(threads)
        state = self._state
        allow = None if allow_keys is None else gather.unique_keys(allow_keys)
        if allow is not None and mask is None and cascade is None and method in ("exact", "fast"):
            # A selective allow-list: score only its rows (exact, the scan's arithmetic).
            hit = gather.gathered_topk(self, state, allow, query_codes, query_weights, int(k))
            if hit is not None:
                return hit
        masks, counts = dispatch.scan_masks(state, allow, mask)
        n_live = sum(counts)
        nq = query_codes.shape[0]
        kk = min(int(k), n_live)
        if kk == 0 or nq == 0:
            return np.empty((nq, kk), dtype=np.float32), np.empty((nq, kk), dtype=np.int64)
        out_scores = np.empty((nq, kk), dtype=np.float32)
        out_keys = np.empty((nq, kk), dtype=np.int64)
        for start in range(0, nq, int(batch_size)):
            stop = min(start + int(batch_size), nq)
            q, qw = query_codes[start:stop], query_weights[start:stop]
            if cascade is None or kk * int(cascade) >= n_live:
                plan = self._plan(state, method, q, qw)
                scan = ScanQuery.codes(q, qw, self.planes)
                s, keys = dispatch.topk_segments(
                    self, state, masks, counts, kk, threads, scan, plan
                )[:2]
            else:
                q1, qw1 = np.ascontiguousarray(q[:, :1]), np.ascontiguousarray(qw[:, :1])
                batch = method == "batch" or self._batch_wins(state, q1, qw1, 1)
                rest = "batch" if batch else "popcount"
                _, _, cand_seg, cand_rows = dispatch.topk_segments(
                    self,
                    state,
                    masks,
                    counts,
                    min(kk * int(cascade), n_live),
                    threads,
                    ScanQuery.codes(q1, qw1, 1),
                    Plan(rest, rest),
                )
                s, keys = dispatch.rerank(self, state, q, qw, cand_seg, cand_rows, kk)
            out_scores[start:stop] = s
            out_keys[start:stop] = keys
        return out_scores, out_keys

    def _plan(
        self, state: State, method: Method, queries: np.ndarray, query_weights: np.ndarray
    ) -> Plan:
        """Which kernel scans which segment for this search (see :class:`index.impl.dispatch.Plan`)."""
        if method in ("popcount", "batch", "sdc"):
            return Plan(method, method)
        nq, shape = queries.shape[0], self._shape(queries.shape[1])
        batch = self._batch_wins(state, queries, query_weights, self.planes)
        rest: Kernel = "batch" if batch else "popcount"
        if not (self.fastscan and HAS_AVX2) or not any(
            seg.core.sealed and not seg.core.mapped and seg.n >= dispatch.PARALLEL_ROWS
            for seg in state.segments
        ):
            return Plan(rest, rest)
        quantized = method == "fast"
        # A known non-sdc answer comes first: the weights test costs more than a lookup.
        known = [
            self.kernels.known(shape, nq, e) for e in ((True, False) if quantized else (True,))
        ]
        if all(c is not None and c != "sdc" for c in known):
            return Plan(rest, rest)
        exact = exact_tables_possible(query_weights, self.m)
        if not (exact or quantized):
            return Plan(rest, rest)
        large = self.kernels.choose(shape, nq, exact)
        return Plan(large if large == "sdc" else rest, rest)

    def _shape(self, query_planes: int) -> tuple[int, int, int, str, str]:
        return (self.m, self.planes, int(query_planes), self.scaling, self.metric)

    def _batch_wins(
        self, state: State, queries: np.ndarray, query_weights: np.ndarray, doc_planes: int
    ) -> bool:
        """Whether the query-blocked kernel scans this batch (measured per shape).

        Only where a segment is large enough for the scan to matter: small
        indexes keep the popcount kernel without a measurement.
        """
        nq = queries.shape[0]
        if not batch_supported(self.m, doc_planes, queries.shape[1]):
            return False
        if nq == 1 and not (queries.shape[1] == 1 and single_supported(self.n_words, self.planes)):
            return False  # a lone query takes "batch" only in its 1-plane vector form
        if not any(seg.n >= dispatch.PARALLEL_ROWS for seg in state.segments):
            return False
        shape = self._shape(queries.shape[1])
        return self.kernels.choose(shape, nq, True, allow_sdc=False) == "batch"

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
                int8 nibble tables in SIMD registers (:mod:`index.impl.fastscan`)
                and re-scores the best ``4 k`` exactly by the float tables
                (exact scores; the top-k is exact unless a true result falls
                outside the ``4 k`` candidates). ``"auto"``: fast-scan on large
                in-memory sealed segments (with AVX2), ``"tables"`` on the
                rest. ``"slices"`` quantizes each query to ``bits`` sign planes
                (:func:`index.codes.quantize_query`) and reuses the popcount
                kernel: exact only for the quantized query.
            bits: query planes for ``"slices"``.
            **kwargs: ``allow_keys``, ``mask``, ``threads`` (and for ``"slices"``
                also ``cascade``, ``batch_size``), as in :meth:`search`.

        Returns:
            ``(scores, keys)`` as :meth:`search`; scores are inner products of the
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
            plan = Plan()
            if method == "fastscan":
                plan = Plan("sdc", "sdc")
            elif method == "auto" and self.fastscan and HAS_AVX2:
                plan = Plan("sdc", "popcount")
            return self._search_tables(byte_tables(x), k, floats=x, plan=plan, **kwargs)
        raise ValueError(f"method must be 'auto', 'fastscan', 'tables' or 'slices', got {method!r}")

    def _search_tables(
        self,
        tables: np.ndarray,
        k: int,
        allow_keys: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        threads: int | None = None,
        floats: np.ndarray | None = None,
        plan: Plan | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for float queries ``floats`` ``(nq, m)`` by byte tables ``(nq, ceil(m/8), 256)``."""
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        threads = self._check_threads(threads)
        state = self._state
        masks, counts = dispatch.scan_masks(state, allow_keys, mask)
        nq = tables.shape[0]
        kk = min(int(k), sum(counts))
        if kk == 0 or nq == 0:
            return np.empty((nq, kk), dtype=np.float32), np.empty((nq, kk), dtype=np.int64)
        scores, keys, _, _ = dispatch.topk_segments(
            self,
            state,
            masks,
            counts,
            kk,
            threads,
            ScanQuery.float_tables(tables, floats),
            plan or Plan(),
        )
        return scores, keys

    def _check_threads(self, threads: int | None) -> int:
        threads = default_threads() if threads is None else int(threads)
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(
                f"threads must be in 1..{numba.config.NUMBA_NUM_THREADS}, got {threads}"
            )
        return threads

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
        names += ["scales"] if self.scaling == "per_document" else []
        names += ["norms"] if self._stores_norms else []
        return names

    def seal(self) -> tuple[Any, ...]:
        """Freeze the index as it is now, for a later :meth:`save` of exactly this state.

        Seals the tail (segment files never change once written); adds and
        deletes after this call go to new segments and masks, not into what
        was sealed. Cheap: no rows are copied.
        """
        with self._lock:
            segments = [seg.sealed() for seg in self._state.segments]
            if not self._compact_lock.locked():
                merge_small(segments)
            self._state = State(tuple(segments))
        return tuple(segments)

    def save(
        self,
        path: str | os.PathLike[str],
        sealed: tuple[Any, ...] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Write the index into directory ``path`` (created if missing), atomically.

        Only segments not already saved there are written; the manifest rename
        is the commit (:mod:`index.segment_files` describes the files).
        ``sealed`` (from :meth:`seal`) and ``meta`` save the index as it was
        sealed, with that meta, not as it is now (the default).
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._save_lock:
            segments = list(self.seal() if sealed is None else sealed)
            header: dict[str, Any] = {
                "m": self.m,
                "planes": self.planes,
                "words_per_plane": self.n_words,
                "scaling": self.scaling,
                "metric": self.metric,
                "bits_per_vector": self.bits_per_vector,
                "meta": self.meta if meta is None else meta,
            }
            if self.custom_plane_weights:
                header["plane_weights"] = [float(w) for w in self.plane_weights]
            segment_files.write_segments(path, segments, self._array_names(), header)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        mmap: bool = False,
        verify: bool = True,
        kernels: KernelChooser | None = None,
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
            kernels: the kernel chooser (default: the shared one).
        """
        path = Path(path)
        manifest = read_manifest(path)
        try:
            index = cls(
                manifest["m"],
                manifest["planes"],
                manifest.get("scaling", manifest.get("weights")),  # older manifests: "weights"
                manifest["metric"],
                manifest.get("meta"),
                manifest.get("plane_weights"),
                kernels=kernels,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{path}: invalid manifest ({exc})") from exc
        segments = segment_files.read_segments(
            path,
            manifest,
            index._array_names(),
            index.planes,
            index.n_words,
            index._empty_arrays(),
            mmap,
            verify,
        )
        index._state = State(tuple(segments))
        return index

    # ------------------------------------------------------------------ faiss
    def to_faiss(self) -> Any:
        """A 1-plane index as faiss ``IndexBinaryIDMap(IndexBinaryFlat(m))`` (:mod:`index.faiss_interop`)."""
        return faiss_interop.to_faiss(self)

    @classmethod
    def from_faiss(cls, faiss_index: Any, metric: Metric = "ip", **kwargs: Any) -> BinaryIndex:
        """Import a faiss ``IndexBinaryFlat`` (or an ``IndexBinaryIDMap`` of one)."""
        return faiss_interop.from_faiss(cls, faiss_index, metric, **kwargs)


def _check_search_options(k: int, batch_size: int, cascade: int | None, method: str) -> None:
    """One-line ValueErrors for :meth:`BinaryIndex.search`'s scalar options."""
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if cascade is not None and int(cascade) < 1:
        raise ValueError(f"cascade must be a positive oversampling factor, got {cascade}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}; got {method!r}")
    if method == "sdc" and cascade is not None:
        raise ValueError("cascade search runs on popcounts: use method='popcount'")
