"""An exhaustive scan index over packed multi-plane codes, with persistence."""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numba
import numpy as np

from index.codes import (
    byte_tables,
    code_values,
    fixed_plane_weights,
    quantize_query,
    words_per_plane,
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

FORMAT_NAME = "binsearch-index"
FORMAT_VERSION = 2
#: Versions :meth:`BinaryIndex.load` reads: 1 (no checksums, fixed file names) and 2.
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
#: Compact automatically once this fraction of stored rows are tombstones.
COMPACT_FRACTION = 0.25

Weights = Literal["fixed", "per_document"]
Metric = Literal["ip", "cosine"]


class IndexFormatError(ValueError):
    """An index directory that cannot be read: missing, damaged, or another format."""


def default_threads() -> int:
    """Threads a search uses unless told otherwise: every thread numba was started with.

    Splitting one query's scan over the cores pays when they are free; on a
    machine busy with other work ``benchmarks/scan.py`` measured 1 and 2
    threads within noise of each other (see docs/index.md), so pass
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

    Search returns plain ``(scores, ids)`` arrays, best first, ties broken by
    id ascending, so results from several indexes merge with
    :func:`index.topk.merge_topk`.

    Deletes are tombstones: :meth:`remove` marks rows dead, the scan skips them,
    and :meth:`compact` (run automatically once a quarter of the rows are dead,
    or on demand) reclaims the space.
    """

    def __init__(
        self,
        m: int,
        planes: int = 1,
        weights: Weights = "fixed",
        metric: Metric = "cosine",
        meta: dict[str, Any] | None = None,
        plane_weights: np.ndarray | None = None,
    ) -> None:
        if m <= 0 or planes <= 0:
            raise ValueError(f"m and planes must be positive, got m={m}, planes={planes}")
        if weights not in ("fixed", "per_document"):
            raise ValueError(f"weights must be 'fixed' or 'per_document', got {weights!r}")
        if metric not in ("ip", "cosine"):
            raise ValueError(f"metric must be 'ip' or 'cosine', got {metric!r}")
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
        self._codes = np.empty((0, self.planes, self.n_words), dtype=np.uint64)
        self._ids = np.empty(0, dtype=np.int64)
        self._scales = np.empty((0, self.planes), dtype=np.float32)
        self._norms = np.empty(0, dtype=np.float32)
        # Tombstones: None while every stored row is live, else uint8 (rows,) with 0 = deleted.
        self._alive: np.ndarray | None = None
        self._n_dead = 0

    # ------------------------------------------------------------------ size
    def __len__(self) -> int:
        return int(self._ids.shape[0]) - self._n_dead

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
        """Bytes held by the stored arrays (codes, ids, scales, norms, tombstones)."""
        arrays = [self._codes, self._ids, self._scales, self._norms]
        if self._alive is not None:
            arrays.append(self._alive)
        return int(sum(a.nbytes for a in arrays))

    @property
    def _stores_norms(self) -> bool:
        # Per-document scales absorb the norm (they are stored divided by it), and
        # one fixed-weight plane has the same norm sqrt(m) everywhere: only
        # fixed-weight multi-plane codes need a stored norm for cosine.
        return self.metric == "cosine" and self.weights == "fixed" and self.planes > 1

    # Public arrays are always free of tombstones: reading one compacts first, so
    # storage order, ``ids`` and :meth:`scores` columns always agree.
    @property
    def codes(self) -> np.ndarray:
        """uint64 ``(n, planes, words)`` live codes in storage order."""
        self.compact()
        return self._codes

    @property
    def ids(self) -> np.ndarray:
        """int64 ``(n,)`` live ids in storage order (the columns of :meth:`scores`)."""
        self.compact()
        return self._ids

    @property
    def scales(self) -> np.ndarray:
        """float32 ``(n, planes)`` stored per-document scales (empty for fixed weights)."""
        self.compact()
        return self._scales

    @property
    def norms(self) -> np.ndarray:
        """float32 ``(n,)`` stored norms (only fixed-weight multi-plane cosine indexes)."""
        self.compact()
        return self._norms

    def _db_weights(self) -> np.ndarray:
        if self.weights == "per_document":
            return self._scales
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

        Works after :meth:`load` too (also of a memory-mapped index: the arrays
        are then copied into memory once).
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
        self.remove(ids, _compact=False)
        if self._stores_norms:
            self._norms = np.concatenate([self._norms, norms if norms is not None else []])
            self._norms = self._norms.astype(np.float32, copy=False)
        if stride:
            self._scales = np.concatenate([self._scales, scales])
        self._codes = np.concatenate([self._codes, codes])
        self._ids = np.concatenate([self._ids, ids])
        if self._alive is not None:
            self._alive = np.concatenate([self._alive, np.ones(ids.shape[0], dtype=np.uint8)])

    def remove(self, ids: np.ndarray, _compact: bool = True) -> int:
        """Delete documents by id; unknown ids are ignored. Returns how many were removed.

        Rows become tombstones that the scan skips; once a quarter of the stored
        rows are dead the index compacts itself.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        hit = np.isin(self._ids, ids)
        if self._alive is not None:
            hit &= self._alive.astype(bool)
        removed = int(hit.sum())
        if removed:
            if self._alive is None:
                self._alive = np.ones(self._ids.shape[0], dtype=np.uint8)
            self._alive[hit] = 0
            self._n_dead += removed
            if _compact and self._n_dead > COMPACT_FRACTION * self._ids.shape[0]:
                self.compact()
        return removed

    def compact(self) -> int:
        """Drop tombstoned rows from storage; returns how many rows were reclaimed."""
        if self._alive is None:
            return 0
        keep = self._alive.astype(bool)
        reclaimed = self._n_dead
        self._codes = self._codes[keep]
        self._ids = self._ids[keep]
        if self.weights == "per_document":
            self._scales = self._scales[keep]
        if self._stores_norms:
            self._norms = self._norms[keep]
        self._alive = None
        self._n_dead = 0
        return reclaimed

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` are in the index."""
        return np.isin(np.asarray(ids, dtype=np.int64).reshape(-1), self.ids)

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Stored ``(codes, scales)`` of ``ids``, in the order given; KeyError if any is absent.

        Scales come back as stored (for cosine indexes, divided by the code norm).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = self._rows_of(ids)
        scales = self._scales[rows] if self.weights == "per_document" else None
        return self._codes[rows], scales

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Storage rows of live ``ids`` (compacts first); KeyError if any is absent."""
        stored = self.ids
        n = stored.shape[0]
        order = np.argsort(stored, kind="stable")
        pos = np.searchsorted(stored, ids, sorter=order)
        pos = np.minimum(pos, n - 1) if n else pos
        rows = order[pos] if n else pos
        if not n or not np.array_equal(stored[rows], ids):
            missing = ids[~self.contains(ids)]
            raise KeyError(f"ids not in the index: {missing[:10].tolist()}")
        return rows

    # ------------------------------------------------------------------ read
    def scores(
        self, query_codes: np.ndarray, query_weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Scores of every document for each query, float32 ``(nq, n)``, in storage order."""
        query_codes, query_weights = self._check_queries(query_codes, query_weights)
        self.compact()
        out = np.empty((query_codes.shape[0], len(self)), dtype=np.float32)
        if len(self):
            score_codes(
                self._codes,
                self._db_weights(),
                int(self.weights == "per_document"),
                query_codes,
                query_weights,
                self.m,
                out,
            )
        if self._stores_norms:
            out /= self._norms[None, :]
        return out

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
        method: Literal["auto", "popcount", "sdc"] = "auto",
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
            method: ``"popcount"`` (plane-pair popcounts), ``"sdc"`` (per-query
                byte lookup tables, BEBR's SDC) or ``"auto"``, which is popcount:
                the faster of the two at every shape ``benchmarks/scan.py`` measured.

        Returns:
            ``scores`` float32 ``(nq, k')`` and ``ids`` int64 ``(nq, k')``,
            ``k' = min(k, number of searchable documents)``, best first, ties by id.
        """
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if cascade is not None and int(cascade) < 1:
            raise ValueError(f"cascade must be a positive oversampling factor, got {cascade}")
        if method not in ("auto", "popcount", "sdc"):
            raise ValueError(f"method must be 'auto', 'popcount' or 'sdc', got {method!r}")
        query_codes, query_weights = self._check_queries(query_codes, query_weights)
        if method == "sdc":
            if cascade is not None:
                raise ValueError("cascade search runs on popcounts: use method='popcount'")
            tables = byte_tables(code_values(query_codes, self.m, query_weights))
            return self._search_tables(tables, k, allow_ids, mask, threads)
        scan_mask = self._scan_mask(allow_ids, mask)
        n_live = len(self) if scan_mask is None else int(np.count_nonzero(scan_mask))
        nq = query_codes.shape[0]
        kk = min(int(k), n_live)
        if kk == 0 or nq == 0:
            return np.empty((nq, kk), dtype=np.float32), np.empty((nq, kk), dtype=np.int64)
        mask_arg = np.empty(0, dtype=np.uint8) if scan_mask is None else scan_mask
        out_scores = np.empty((nq, kk), dtype=np.float32)
        out_ids = np.empty((nq, kk), dtype=np.int64)
        for start in range(0, nq, int(batch_size)):
            stop = min(start + int(batch_size), nq)
            q, qw = query_codes[start:stop], query_weights[start:stop]
            if cascade is None or kk * int(cascade) >= n_live:
                s, rows = self._scan_topk(q, qw, kk, self.planes, mask_arg, threads)
            else:
                _, cand = self._scan_topk(
                    np.ascontiguousarray(q[:, :1]),
                    np.ascontiguousarray(qw[:, :1]),
                    min(kk * int(cascade), n_live),
                    1,
                    mask_arg,
                    threads,
                )
                s, rows = self._rerank(q, qw, cand, kk)
            out_scores[start:stop] = s
            out_ids[start:stop] = self._ids[rows]
        return out_scores, out_ids

    def search_float(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        method: Literal["slices", "tables"] = "slices",
        bits: int = 4,
        **kwargs: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for float queries against the codes (asymmetric scoring).

        Args:
            queries: float ``(nq, m)`` query vectors (e.g. unquantized embeddings).
            k: results per query.
            method: ``"slices"`` quantizes each query to ``bits`` sign planes
                (:func:`index.codes.quantize_query`) and reuses the popcount
                kernel: exact for the quantized query. ``"tables"`` scores the
                float query exactly with per-byte lookup tables.
            bits: query planes for ``"slices"``.
            **kwargs: ``allow_ids``, ``mask``, ``threads`` (and for ``"slices"``
                also ``cascade``, ``batch_size``), as in :meth:`search`.

        Returns:
            ``(scores, ids)`` as :meth:`search`; scores are inner products of the
            (quantized) query with the code values, over the norm for cosine.
        """
        x = np.asarray(queries, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.m:
            raise ValueError(f"float queries must have shape (nq, {self.m}), got {x.shape}")
        if method == "slices":
            codes, weights = quantize_query(x, bits)
            return self.search(codes, k, weights, **kwargs)
        if method == "tables":
            if not np.isfinite(x).all():
                raise ValueError("queries must be finite")
            return self._search_tables(byte_tables(x), k, **kwargs)
        raise ValueError(f"method must be 'slices' or 'tables', got {method!r}")

    def _search_tables(
        self,
        tables: np.ndarray,
        k: int,
        allow_ids: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by the byte-table kernel for float32 tables ``(nq, ceil(m/8), 256)``."""
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        scan_mask = self._scan_mask(allow_ids, mask)
        n_live = len(self) if scan_mask is None else int(np.count_nonzero(scan_mask))
        nq = tables.shape[0]
        kk = min(int(k), n_live)
        if kk == 0 or nq == 0:
            return np.empty((nq, kk), dtype=np.float32), np.empty((nq, kk), dtype=np.int64)
        threads = self._check_threads(threads)
        chunks = max(1, min(threads, self._ids.shape[0]))
        heap_scores = np.empty((chunks, nq, kk), dtype=np.float32)
        heap_rows = np.empty((chunks, nq, kk), dtype=np.int64)
        db_bytes = self._codes.view(np.uint8).reshape(self._codes.shape[0], self.planes, -1)
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            table_topk_scan(
                db_bytes,
                self._db_weights(),
                int(self.weights == "per_document"),
                tables,
                self._ids,
                self._norms if self._stores_norms else _NO_NORMS,
                np.empty(0, dtype=np.uint8) if scan_mask is None else scan_mask,
                heap_scores,
                heap_rows,
            )
        finally:
            numba.set_num_threads(previous)
        scores, rows = _merge_heaps(heap_scores, heap_rows, self._ids, kk)
        return scores, self._ids[rows]

    def _check_threads(self, threads: int | None) -> int:
        threads = default_threads() if threads is None else int(threads)
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(
                f"threads must be in 1..{numba.config.NUMBA_NUM_THREADS}, got {threads}"
            )
        return threads

    def _scan_mask(
        self, allow_ids: np.ndarray | None, mask: np.ndarray | None
    ) -> np.ndarray | None:
        """uint8 mask over storage rows (tombstones and filters), or None for all rows."""
        if mask is not None:
            self.compact()  # the mask is given over ``ids`` order, i.e. compacted storage
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (len(self),):
                raise ValueError(f"mask must be bool of shape ({len(self)},), got {mask.shape}")
        if allow_ids is None and mask is None:
            return self._alive
        keep = np.ones(self._ids.shape[0], dtype=bool) if mask is None else mask.copy()
        if allow_ids is not None:
            keep &= np.isin(self._ids, np.asarray(allow_ids, dtype=np.int64).reshape(-1))
        if self._alive is not None:
            keep &= self._alive.astype(bool)
        return keep.view(np.uint8)

    def _scan_topk(
        self,
        queries: np.ndarray,
        query_weights: np.ndarray,
        k: int,
        doc_planes: int,
        mask: np.ndarray,
        threads: int | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fused scan: ``(scores float32 (nq, k), rows int64 (nq, k))``, best first."""
        threads = self._check_threads(threads)
        n = self._ids.shape[0]
        chunks = max(1, min(threads, n))
        nq = queries.shape[0]
        heap_scores = np.empty((chunks, nq, k), dtype=np.float32)
        heap_rows = np.empty((chunks, nq, k), dtype=np.int64)
        # Only fixed-weight multi-plane cosine divides by a stored norm; a one-plane
        # cascade stage ranks by plane 0 alone, where the norm is not the right divisor.
        norms = self._norms if self._stores_norms and doc_planes == self.planes else _NO_NORMS
        # One plane against one plane with a positive shared weight ranks by Hamming
        # distance alone: the integer kernel, scores restored after the merge.
        scale = query_weights[:, 0] * self.plane_weights[0]
        hamming = (
            doc_planes == 1
            and queries.shape[1] == 1
            and self.weights == "fixed"
            and norms.shape[0] == 0
            and bool(np.all(scale > 0))
        )
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            if hamming:
                hamming_topk_scan(
                    self._codes,
                    queries,
                    self._ids,
                    mask,
                    words_marker(self.n_words),
                    heap_scores,
                    heap_rows,
                )
                scores, rows = _merge_heaps(heap_scores, heap_rows, self._ids, k)
                # -hamming back to a * b * (m - 2 * hamming), in float32 like topk_scan
                scores = scale[:, None] * (np.float32(self.m) + np.float32(2) * scores)
                return scores.astype(np.float32, copy=False), rows
            doc_marker, query_marker = plane_markers(doc_planes, queries.shape[1], self.n_words)
            topk_scan(
                self._codes,
                self._db_weights(),
                int(self.weights == "per_document"),
                doc_marker,
                queries,
                query_weights,
                query_marker,
                self.m,
                self._ids,
                norms,
                mask,
                words_marker(self.n_words),
                heap_scores,
                heap_rows,
            )
        finally:
            numba.set_num_threads(previous)
        return _merge_heaps(heap_scores, heap_rows, self._ids, k)

    def _rerank(
        self, queries: np.ndarray, query_weights: np.ndarray, rows: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of candidate ``rows`` (nq, c) with all planes; the best ``k`` of them."""
        rows = np.ascontiguousarray(rows)
        scores = np.empty(rows.shape, dtype=np.float32)
        norms = self._norms if self._stores_norms else _NO_NORMS
        score_rows(
            self._codes,
            self._db_weights(),
            int(self.weights == "per_document"),
            queries,
            query_weights,
            self.m,
            norms,
            rows,
            scores,
        )
        return _select(scores, rows, self._ids, k)

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
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index into directory ``path`` (created if missing), atomically.

        Arrays go to files of a new generation (``codes.<gen>.npy``, ...), each
        written to a temporary name, fsynced and renamed; the manifest, holding
        each file's size and CRC-32, is replaced last the same way. The manifest
        rename is the commit: a crash before it leaves the previous index
        loadable, a crash after it the new one. Files of older generations are
        deleted afterwards.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.compact()
        arrays = {"codes": self._codes, "ids": self._ids}
        if self.weights == "per_document":
            arrays["scales"] = self._scales
        if self._stores_norms:
            arrays["norms"] = self._norms
        generation = _next_generation(path)
        files = {}
        for name, array in arrays.items():
            file = f"{name}.{generation}.npy"
            size, crc = _atomic_write(path / file, lambda f, a=array: np.save(f, a))
            files[name] = {"file": file, "bytes": size, "crc32": crc}
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "generation": generation,
            "m": self.m,
            "planes": self.planes,
            "words_per_plane": self.n_words,
            "weights": self.weights,
            "metric": self.metric,
            "count": len(self),
            "bits_per_vector": self.bits_per_vector,
            "arrays": sorted(arrays),
            "files": files,
            "meta": self.meta,
        }
        if self.custom_plane_weights:
            manifest["plane_weights"] = [float(w) for w in self.plane_weights]
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        _atomic_write(path / MANIFEST, lambda f: f.write(text.encode()))
        _fsync_dir(path)
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
                cache). The mapping is copy-on-write, the files are never changed.
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
            n = int(manifest["count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{path}: invalid manifest ({exc})") from exc
        expected = {"codes", "ids"}
        expected |= {"scales"} if index.weights == "per_document" else set()
        expected |= {"norms"} if index._stores_norms else set()
        if set(manifest.get("arrays", [])) != expected:
            raise IndexFormatError(f"{path}: manifest lists arrays {manifest.get('arrays')}")
        shapes = {
            "codes": (n, index.planes, index.n_words),
            "ids": (n,),
            "norms": (n,),
            "scales": (n, index.planes),
        }
        dtypes = {"codes": np.uint64, "ids": np.int64, "norms": np.float32, "scales": np.float32}
        arrays = {}
        for name in sorted(expected):
            entry = manifest.get("files", {}).get(name) if manifest["format_version"] >= 2 else None
            if manifest["format_version"] >= 2 and not isinstance(entry, dict):
                raise IndexFormatError(f"{path}: manifest has no file entry for {name}")
            file = path / (entry["file"] if entry else f"{name}.npy")
            if entry:
                _check_file(file, entry, verify)
            try:
                array = np.load(file, mmap_mode="c" if mmap else None, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise IndexFormatError(f"{path}: cannot read {file.name} ({exc})") from exc
            if array.shape != shapes[name] or array.dtype != dtypes[name]:
                raise IndexFormatError(
                    f"{path}: {file.name} holds {array.dtype} {array.shape}, "
                    f"manifest says {np.dtype(dtypes[name])} {shapes[name]}"
                )
            # np.asarray drops the memmap subclass (numba types plain arrays) but
            # keeps the mapping; "c" keeps it writeable, so kernels compile once.
            arrays[name] = np.asarray(array)
        index._codes = arrays["codes"]
        index._ids = arrays["ids"]
        if "scales" in arrays:
            index._scales = arrays["scales"]
        if "norms" in arrays:
            index._norms = arrays["norms"]
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
_ARRAY_FILE = re.compile(r"(codes|ids|scales|norms)(\.\d+)?\.npy")


def _merge_heaps(
    heap_scores: np.ndarray, heap_rows: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-chunk heaps ``(C, nq, k)`` into ``(nq, k)`` best-first lists."""
    chunks, nq, _ = heap_scores.shape
    scores = heap_scores.transpose(1, 0, 2).reshape(nq, chunks * k)
    rows = heap_rows.transpose(1, 0, 2).reshape(nq, chunks * k)
    return _select(scores, rows, ids, k)


def _select(
    scores: np.ndarray, rows: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row of candidate ``(scores, rows)`` ``(nq, c)``; row -1 marks no candidate."""
    nq, c = scores.shape
    valid = rows >= 0
    # Sort keys: query, then empty slots last, then score descending, then id ascending.
    cand_ids = np.where(valid, ids[np.maximum(rows, 0)], 0)
    query = np.repeat(np.arange(nq), c)
    order = np.lexsort((cand_ids.ravel(), -scores.ravel(), ~valid.ravel(), query))
    order = order.reshape(nq, c)[:, :k]
    return scores.ravel()[order], rows.ravel()[order]


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
