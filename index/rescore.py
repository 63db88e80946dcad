"""Exact re-ranking of binary-scan candidates with compact float vectors kept on disk.

The binary scan finds ``k * oversample`` candidates; a :class:`VectorStore`
holds the original embeddings as float16, or int8 with one scale per
dimension (``x_j ~ scale_j * q_j``), memory-mapped, and re-scores just those
candidates exactly: only ``k * oversample`` rows per query are read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from index.durable import IndexFormatError, atomic_write, check_file, fsync_dir
from index.impl.topk import select_rows

STORE_FORMAT = "binsearch-vectors"
STORE_VERSION = 1
STORE_MANIFEST = "vectors.json"

Storage = Literal["float16", "int8"]


class VectorStore:
    """Float vectors by id, stored as float16 or per-dimension-scaled int8.

    Args:
        vectors: float ``(n, d)`` embeddings.
        ids: int64 ``(n,)`` unique ids (the index's ids).
        storage: ``"float16"`` (2 bytes per dimension) or ``"int8"`` (1 byte per
            dimension plus ``d`` float32 scales, ``scale_j = max_i |x_ij| / 127``).

    Example:
        >>> store = VectorStore(np.eye(3), np.array([7, 8, 9]), "int8")
        >>> store.vectors(np.array([9, 7]))
        array([[0., 0., 1.],
               [1., 0., 0.]], dtype=float32)
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, storage: Storage = "float16") -> None:
        x = np.asarray(vectors, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if x.ndim != 2 or x.shape[0] != ids.shape[0]:
            raise ValueError(f"need vectors (n, d) and n ids, got {x.shape} and {ids.shape}")
        if np.unique(ids).shape[0] != ids.shape[0]:
            raise ValueError("ids must be unique")
        if not np.isfinite(x).all():
            raise ValueError("vectors must be finite")
        if storage == "float16":
            data, scales = x.astype(np.float16), np.ones(x.shape[1], dtype=np.float32)
        elif storage == "int8":
            peak = np.abs(x).max(axis=0) if x.shape[0] else np.zeros(x.shape[1], np.float32)
            scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
            data = np.clip(np.rint(x / scales), -127, 127).astype(np.int8)
        else:
            raise ValueError(f"storage must be 'float16' or 'int8', got {storage!r}")
        self._set(data, ids, scales, storage)

    def _set(self, data: np.ndarray, ids: np.ndarray, scales: np.ndarray, storage: str) -> None:
        self.storage = storage
        self.data = data
        self.ids = ids
        self.scales = scales
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.data.shape[1])

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Storage rows of ``ids`` (any shape); KeyError if one is absent."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self._sorted, ids.ravel())
        pos = np.minimum(pos, max(len(self) - 1, 0))
        if not len(self) or not np.array_equal(self._sorted[pos], ids.ravel()):
            raise KeyError("some ids have no stored vector")
        return self._order[pos].reshape(ids.shape)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Dequantized float32 vectors of ``ids``, shape ``ids.shape + (d,)``."""
        rows = self.rows(ids)
        return self.data[rows].astype(np.float32) * self.scales

    def rescore(
        self,
        queries: np.ndarray,
        candidates: np.ndarray,
        k: int,
        metric: Literal["ip", "cosine"] = "cosine",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` among candidate ids by the stored vectors.

        Args:
            queries: float ``(nq, d)``.
            candidates: int64 ``(nq, c)`` ids per query (e.g. a binary search's ids).
            k: results per query, ``<= c``.
            metric: ``"ip"`` or ``"cosine"`` (divides by the stored vector's norm;
                the query's norm does not change its ranking).

        Returns:
            ``(scores float32 (nq, k'), ids int64 (nq, k'))``, ``k' = min(k, c)``,
            best first, ties by key.
        """
        q = np.asarray(queries, dtype=np.float32)
        candidates = np.asarray(candidates, dtype=np.int64)
        if q.ndim != 2 or q.shape[1] != self.dim or candidates.shape[:1] != q.shape[:1]:
            raise ValueError(
                f"need queries (nq, {self.dim}) and candidates (nq, c), "
                f"got {q.shape} and {candidates.shape}"
            )
        vecs = self.vectors(candidates)  # (nq, c, d)
        scores = np.matmul(vecs, q[:, :, None])[:, :, 0]
        if metric == "cosine":
            norms = np.linalg.norm(vecs, axis=2)
            scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
        elif metric != "ip":
            raise ValueError(f"metric must be 'ip' or 'cosine', got {metric!r}")
        kk = min(int(k), candidates.shape[1])
        # flat positions as "rows", so select_rows breaks ties by each query's own candidate ids
        flat_ids = np.ascontiguousarray(candidates).reshape(-1)
        rows = np.arange(flat_ids.shape[0]).reshape(candidates.shape)
        scores, picked = select_rows(scores.astype(np.float32), rows, flat_ids, kk)
        return scores, flat_ids[picked]

    # -------------------------------------------------------------- disk
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``vectors.json`` + arrays into ``path`` atomically (as :meth:`BinaryIndex.save`)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, array in (("data", self.data), ("ids", self.ids), ("scales", self.scales)):
            file = f"vectors-{name}.npy"
            size, crc = atomic_write(path / file, lambda f, a=array: np.save(f, a))
            files[name] = {"file": file, "bytes": size, "crc32": crc}
        manifest: dict[str, Any] = {
            "format": STORE_FORMAT,
            "format_version": STORE_VERSION,
            "storage": self.storage,
            "count": len(self),
            "dim": self.dim,
            "files": files,
        }
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        atomic_write(path / STORE_MANIFEST, lambda f: f.write(text.encode()))
        fsync_dir(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], mmap: bool = True, verify: bool = True
    ) -> VectorStore:
        """Open a store written by :meth:`save`, memory-mapped by default."""
        path = Path(path)
        file = path / STORE_MANIFEST
        try:
            manifest = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{file}: cannot read a vector store manifest ({exc})") from exc
        if (
            manifest.get("format") != STORE_FORMAT
            or manifest.get("format_version") != STORE_VERSION
        ):
            raise IndexFormatError(f"{file}: not a {STORE_FORMAT} v{STORE_VERSION} manifest")
        arrays = {}
        for name in ("data", "ids", "scales"):
            entry = manifest["files"][name]
            check_file(path / entry["file"], entry, verify)
            try:
                arrays[name] = np.load(
                    path / entry["file"], mmap_mode="r" if mmap else None, allow_pickle=False
                )
            except (OSError, ValueError) as exc:
                raise IndexFormatError(f"{path}: cannot read {entry['file']} ({exc})") from exc
        n, d = manifest["count"], manifest["dim"]
        dtype = np.float16 if manifest["storage"] == "float16" else np.int8
        if arrays["data"].shape != (n, d) or arrays["data"].dtype != dtype:
            raise IndexFormatError(f"{path}: vector data does not match the manifest")
        if arrays["ids"].shape != (n,) or arrays["scales"].shape != (d,):
            raise IndexFormatError(f"{path}: ids or scales do not match the manifest")
        store = cls.__new__(cls)
        store._set(
            arrays["data"],
            np.asarray(arrays["ids"], dtype=np.int64),
            np.asarray(arrays["scales"], dtype=np.float32),
            manifest["storage"],
        )
        return store


def rescored_search(
    index: Any,
    store: VectorStore,
    query_codes: np.ndarray,
    float_queries: np.ndarray,
    k: int = 10,
    oversample: int = 4,
    query_weights: np.ndarray | None = None,
    **search_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Binary search for ``k * oversample`` candidates, then exact re-ranking by ``store``.

    Args:
        index: a :class:`index.BinaryIndex` whose ids all have vectors in ``store``.
        store: the float vectors.
        query_codes, query_weights: the binary queries, as :meth:`BinaryIndex.search`.
        float_queries: float ``(nq, d)``, the same queries unquantized.
        k: results per query; oversample: candidates per result (>= 1).
        **search_kwargs: passed to :meth:`BinaryIndex.search` (filters, threads, cascade).

    Returns:
        ``(scores, ids)`` by the stored vectors, metric as the index's.
    """
    if int(oversample) < 1:
        raise ValueError(f"oversample must be at least 1, got {oversample}")
    _, candidates = index.search(
        query_codes, int(k) * int(oversample), query_weights, **search_kwargs
    )
    return store.rescore(float_queries, candidates, k, index.metric)
