"""An exhaustive scan index over packed multi-plane codes, with persistence."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from index.codes import fixed_plane_weights, words_per_plane
from index.kernels import code_norms, score_codes
from index.topk import topk

FORMAT_NAME = "binsearch-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

Weights = Literal["fixed", "per_document"]
Metric = Literal["ip", "cosine"]


class IndexFormatError(ValueError):
    """An index directory that cannot be read: missing, damaged, or another format."""


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
        self.codes = np.empty((0, self.planes, self.n_words), dtype=np.uint64)
        self.ids = np.empty(0, dtype=np.int64)
        self.scales = np.empty((0, self.planes), dtype=np.float32)
        self.norms = np.empty(0, dtype=np.float32)

    # ------------------------------------------------------------------ size
    def __len__(self) -> int:
        return int(self.ids.shape[0])

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
    def _stores_norms(self) -> bool:
        # Per-document scales absorb the norm (they are stored divided by it), and
        # one fixed-weight plane has the same norm sqrt(m) everywhere: only
        # fixed-weight multi-plane codes need a stored norm for cosine.
        return self.metric == "cosine" and self.weights == "fixed" and self.planes > 1

    def _db_weights(self) -> np.ndarray:
        if self.weights == "per_document":
            return self.scales
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
        if np.isin(ids, self.ids).any():
            self.remove(ids)
        stride = int(self.weights == "per_document")
        weights = scales if stride else self.plane_weights[None, :]
        if self.metric == "cosine" and (stride or self._stores_norms):
            norms = code_norms(codes, weights, stride, self.m)
            if np.any(norms <= 0):
                raise ValueError("a code has zero norm (all scales zero): cosine is undefined")
            if stride:
                scales = scales / norms[:, None]
            else:
                self.norms = np.concatenate([self.norms, norms])
        if stride:
            self.scales = np.concatenate([self.scales, scales])
        self.codes = np.concatenate([self.codes, codes])
        self.ids = np.concatenate([self.ids, ids])

    def remove(self, ids: np.ndarray) -> int:
        """Delete documents by id; unknown ids are ignored. Returns how many were removed."""
        keep = ~np.isin(self.ids, np.asarray(ids, dtype=np.int64).reshape(-1))
        removed = int(len(self) - keep.sum())
        if removed:
            self.codes = self.codes[keep]
            self.ids = self.ids[keep]
            if self.weights == "per_document":
                self.scales = self.scales[keep]
            if self._stores_norms:
                self.norms = self.norms[keep]
        return removed

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` are in the index."""
        return np.isin(np.asarray(ids, dtype=np.int64).reshape(-1), self.ids)

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Stored ``(codes, scales)`` of ``ids``, in the order given; KeyError if any is absent.

        Scales come back as stored (for cosine indexes, divided by the code norm).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        order = np.argsort(self.ids, kind="stable")
        pos = np.searchsorted(self.ids, ids, sorter=order)
        pos = np.minimum(pos, len(self) - 1) if len(self) else pos
        rows = order[pos] if len(self) else pos
        if not len(self) or not np.array_equal(self.ids[rows], ids):
            missing = ids[~self.contains(ids)]
            raise KeyError(f"ids not in the index: {missing[:10].tolist()}")
        scales = self.scales[rows] if self.weights == "per_document" else None
        return self.codes[rows], scales

    # ------------------------------------------------------------------ read
    def scores(
        self, query_codes: np.ndarray, query_weights: np.ndarray | None = None
    ) -> np.ndarray:
        """Scores of every document for each query, float32 ``(nq, n)``, in storage order."""
        query_codes, query_weights = self._check_queries(query_codes, query_weights)
        out = np.empty((query_codes.shape[0], len(self)), dtype=np.float32)
        if len(self):
            score_codes(
                self.codes,
                self._db_weights(),
                int(self.weights == "per_document"),
                query_codes,
                query_weights,
                self.m,
                out,
            )
        if self._stores_norms:
            out /= self.norms[None, :]
        return out

    def search(
        self,
        query_codes: np.ndarray,
        k: int = 10,
        query_weights: np.ndarray | None = None,
        batch_size: int = 64,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` documents for each query.

        Args:
            query_codes: uint64 ``(nq, Pq, ceil(m/64))``; ``Pq`` may differ from
                the index's planes (the plane-pair sum covers any pairing).
            k: results per query, ``k >= 1``; fewer come back when the index is smaller.
            query_weights: float32 ``(nq, Pq)``; default :meth:`default_query_weights`.
            batch_size: queries scored per scan, bounding memory to ``batch_size * n`` floats.

        Returns:
            ``scores`` float32 ``(nq, k')`` and ``ids`` int64 ``(nq, k')``, ``k' = min(k, n)``.
        """
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        query_codes, query_weights = self._check_queries(query_codes, query_weights)
        nq = query_codes.shape[0]
        kk = min(int(k), len(self))
        out_scores = np.empty((nq, kk), dtype=np.float32)
        out_ids = np.empty((nq, kk), dtype=np.int64)
        for start in range(0, nq, batch_size):
            stop = min(start + batch_size, nq)
            block = self.scores(query_codes[start:stop], query_weights[start:stop])
            for j in range(stop - start):
                out_scores[start + j], out_ids[start + j] = topk(block[j], self.ids, kk)
        return out_scores, out_ids

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
        return query_codes, query_weights

    # ------------------------------------------------------------------ disk
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index into directory ``path`` (created if missing).

        Each array goes to a temporary file that is renamed into place; the
        manifest is written last, so a reader never sees a manifest that points
        at arrays of another generation.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {"codes": self.codes, "ids": self.ids}
        if self.weights == "per_document":
            arrays["scales"] = self.scales
        if self._stores_norms:
            arrays["norms"] = self.norms
        for name, array in arrays.items():
            _atomic_write(path / f"{name}.npy", lambda f, a=array: np.save(f, a))
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "m": self.m,
            "planes": self.planes,
            "words_per_plane": self.n_words,
            "weights": self.weights,
            "metric": self.metric,
            "count": len(self),
            "bits_per_vector": self.bits_per_vector,
            "arrays": sorted(arrays),
            "meta": self.meta,
        }
        if self.custom_plane_weights:
            manifest["plane_weights"] = [float(w) for w in self.plane_weights]
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        _atomic_write(path / MANIFEST, lambda f: f.write(text.encode()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BinaryIndex:
        """Read an index written by :meth:`save`; raise :class:`IndexFormatError` if unusable."""
        path = Path(path)
        manifest = read_manifest(path)
        index = cls(
            manifest["m"],
            manifest["planes"],
            manifest["weights"],
            manifest["metric"],
            manifest.get("meta"),
            manifest.get("plane_weights"),
        )
        arrays = {}
        expected = {"codes", "ids"}
        expected |= {"scales"} if index.weights == "per_document" else set()
        expected |= {"norms"} if index._stores_norms else set()
        if set(manifest.get("arrays", [])) != expected:
            raise IndexFormatError(f"{path}: manifest lists arrays {manifest.get('arrays')}")
        for name in sorted(expected):
            try:
                arrays[name] = np.load(path / f"{name}.npy", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise IndexFormatError(f"{path}: cannot read {name}.npy ({exc})") from exc
        n = manifest["count"]
        shapes = {
            "codes": (n, index.planes, index.n_words),
            "ids": (n,),
            "norms": (n,),
            "scales": (n, index.planes),
        }
        for name, array in arrays.items():
            if array.shape != shapes[name]:
                raise IndexFormatError(
                    f"{path}: {name}.npy has shape {array.shape}, manifest says {shapes[name]}"
                )
        index.codes = arrays["codes"].astype(np.uint64, copy=False)
        index.ids = arrays["ids"].astype(np.int64, copy=False)
        for name in ("scales", "norms"):
            if name in arrays:
                setattr(index, name, arrays[name].astype(np.float32, copy=False))
        return index


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
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: index format version {version}, this binsearch reads version "
            f"{FORMAT_VERSION}; rebuild the index with `binsearch index`"
        )
    return manifest


def _atomic_write(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
