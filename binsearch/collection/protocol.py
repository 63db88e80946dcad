"""The collection protocol: what a local :class:`Collection` and a ``ShardedCollection`` both are.

After LanceDB's ``Table`` (with ``LanceTable`` and ``RemoteTable``): one abstract
class with the same methods, arguments and result types for both, and the one
place that checks what a caller passes (ids, documents, vectors, texts, ``k``).
The service holds a :class:`CollectionProtocol` and never asks which kind it has.

Implementations may take extra keyword-only options after the protocol's own
(a sharded search's ``partial``, ``timeout``); callers that hold the protocol
use only the protocol's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from binsearch.collection.directory import CollectionError
from binsearch.collection.filters import FilterError, check_filter
from binsearch.collection.types import AddResult, SearchResult, check_ids, content, unit_vectors

#: What ``search(mode=...)`` takes.
SEARCH_MODES = ("semantic", "keyword", "hybrid")


class CollectionProtocol(ABC):
    """Documents with ids, their codes, and (optionally) the model that embeds their text.

    Attributes every implementation sets: ``dim`` (embedding width),
    ``model_name`` (``None`` for a collection of vectors only) and ``snapshot_every``.
    """

    dim: int
    model_name: str | None
    #: Changes after which a write starts a background snapshot (settable).
    snapshot_every: int

    # ------------------------------------------------------------------ the protocol
    @abstractmethod
    def add(
        self,
        ids: Sequence[str],
        embeddings: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        documents: Sequence[dict[str, Any]] | None = None,
        keys: np.ndarray | None = None,
    ) -> AddResult:
        """Add or replace documents; durable when it returns."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id (absent ones ignored); durable when it returns. How many."""

    @abstractmethod
    def get(self, doc_id: str) -> dict[str, Any] | None:
        """The stored document ``{"id", "title", "text", "metadata"}`` or None."""

    def get_many(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Documents of several ids, None where absent."""
        return [self.get(doc_id) for doc_id in ids]

    @abstractmethod
    def search(
        self,
        queries: Sequence[str] | None = None,
        k: int = 10,
        *,
        embeddings: np.ndarray | None = None,
        filter: Sequence[str] | None = None,
        rescore: bool = False,
        threads: int | None = None,
        where: dict[str, Any] | None = None,
        mode: str = "semantic",
    ) -> list[SearchResult]:
        """Top-``k`` documents for each query text (or float32 query embedding).

        ``where``: a metadata filter (:mod:`binsearch.collection.filters`); ``filter``:
        an id list; both restrict the results exactly. ``mode``: ``"semantic"``
        (codes), ``"keyword"`` (BM25 over title + text; query texts only) or
        ``"hybrid"`` (both, fused by reciprocal rank; query texts, and embeddings
        where the collection has no model).
        """

    @property
    @abstractmethod
    def encoder(self) -> Any:
        """The text encoder of the collection's model, loaded on first use."""

    @abstractmethod
    def embed(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """Embed texts with the collection's model: float32 ``(n, dim)``."""

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """Save what changed since the last snapshot; what it did."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Counts and sizes, the same keys for every implementation (see ``STATS_KEYS``)."""

    @abstractmethod
    def warm(self, defer_measuring: bool = False) -> Callable[[], int] | None:
        """Compile the scan kernels and take their kernel choices now, not in the first request.

        With ``defer_measuring``, choices this machine has not measured yet stay
        provisional (the exact popcount kernel) and the returned callable measures
        them (a server calls it after /ready); None when nothing waits.
        """

    def filter_stats(self) -> dict[str, Any]:
        """What filters read: ``indexed_fields`` (declared metadata fields, whose filters
        read an index of keys) and ``last_filter`` (the last filtered search); None
        where an implementation does not track them."""
        return {"indexed_fields": None, "last_filter": None}

    @abstractmethod
    def ready(self, timeout: float = 2.0) -> bool:
        """True when every part of the collection answers."""

    @abstractmethod
    def close(self, snapshot: bool = True) -> None:
        """Snapshot pending changes (unless ``snapshot=False``) and release the collection."""

    @abstractmethod
    def __len__(self) -> int:
        """How many documents."""

    def __enter__(self) -> CollectionProtocol:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the one place of checks
    def _check_add(
        self,
        ids: Sequence[str],
        embeddings: np.ndarray | None,
        texts: Sequence[str] | None,
        documents: Sequence[dict[str, Any]] | None,
        keys: np.ndarray | None,
    ) -> tuple[list[str], list[dict[str, Any]], np.ndarray | None, np.ndarray | None]:
        """Checked ``(ids, documents, embeddings float32 (n, dim) or None, keys or None)``.

        Embeddings are checked (shape, finite, non-zero) and returned as given,
        not normalised: the implementation that codes them normalises once.
        Without embeddings every document needs a title or text, and a model.
        """
        ids = check_ids(ids)
        n = len(ids)
        if documents is not None and texts is not None:
            raise CollectionError("pass texts or documents, not both")
        if texts is not None:
            if isinstance(texts, str) or len(texts) != n:
                raise CollectionError(f"{n} ids need {n} texts")
            documents = [{"text": t} for t in texts]
        documents = [{} for _ in ids] if documents is None else list(documents)
        if len(documents) != n:
            raise CollectionError(f"{n} ids but {len(documents)} documents")
        if not all(isinstance(d, dict) for d in documents):
            raise CollectionError("documents must be dicts of title, text and metadata")
        if keys is not None:
            keys = np.asarray(keys, dtype=np.int64).reshape(-1)
            if keys.shape != (n,) or len(np.unique(keys)) != n or (n and keys.min() < 0):
                raise CollectionError(f"keys must be {n} distinct non-negative int64 values")
        if embeddings is not None:
            unit_vectors(embeddings, n, self.dim, "embeddings")  # raises on bad input
            embeddings = np.asarray(embeddings, dtype=np.float32)
        elif n:
            if not all(content(d) for d in documents):
                raise CollectionError("a document without title or text needs an embedding")
            if self.model_name is None:
                raise CollectionError("this collection has no model: pass embeddings, not texts")
        return ids, documents, embeddings, keys

    def _check_search(
        self,
        queries: Sequence[str] | None,
        k: int,
        embeddings: np.ndarray | None,
        mode: str = "semantic",
        where: dict[str, Any] | None = None,
    ) -> tuple[list[str] | None, np.ndarray | None]:
        """Checked ``(query texts or None, float32 query embeddings (nq, dim) or None)``.

        Also checks ``mode`` and the ``where`` filter (:class:`FilterError` on a bad one).
        A keyword search takes texts only; a hybrid one texts, and embeddings too
        (one per text) where the collection has no model.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise CollectionError(f"k must be a positive integer, got {k!r}")
        if mode not in SEARCH_MODES:
            raise CollectionError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
        check_filter(where)
        if mode != "semantic":
            if queries is None:
                raise CollectionError(f"a {mode} search needs query texts")
            if mode == "keyword" and embeddings is not None:
                raise CollectionError("a keyword search takes query texts, not embeddings")
            texts = self._check_texts(queries)
            if embeddings is None:
                if mode == "hybrid" and self.model_name is None:
                    raise CollectionError(
                        "this collection has no model: a hybrid search needs query embeddings "
                        "beside the texts"
                    )
                return texts, None
            return texts, self._check_query_vectors(embeddings, len(texts))
        if (queries is None) == (embeddings is None):
            raise CollectionError("pass query texts or query embeddings (one of them)")
        if queries is not None:
            queries = self._check_texts(queries)
            if self.model_name is None:
                raise CollectionError("this collection has no model: pass embeddings, not texts")
            return queries, None
        return None, self._check_query_vectors(embeddings, None)

    @staticmethod
    def _check_texts(queries: Sequence[str]) -> list[str]:
        if isinstance(queries, str):
            queries = [queries]
        queries = list(queries)
        if not all(isinstance(q, str) and q.strip() for q in queries):
            raise CollectionError("query texts must be non-blank strings")
        return queries

    def _check_query_vectors(self, embeddings: np.ndarray, n: int | None) -> np.ndarray:
        x = np.asarray(embeddings)
        nq = x.shape[0] if x.ndim == 2 else 1
        if n is not None and nq != n:
            raise CollectionError(f"{n} query texts but {nq} query embeddings")
        unit_vectors(x, nq, self.dim, "query embeddings")  # raises on bad input
        return np.ascontiguousarray(x.reshape(nq, self.dim), dtype=np.float32)

    def _check_embedded(self, vectors: np.ndarray, n: int) -> np.ndarray:
        """What the model gave for ``n`` texts, checked against the collection's width."""
        if vectors.shape != (n, self.dim):
            raise CollectionError(
                f"the model gives {vectors.shape[1:]}-d embeddings, the collection holds {self.dim}-d"
            )
        return vectors


#: The keys of :meth:`CollectionProtocol.stats`, whatever the implementation.
STATS_KEYS = (
    "documents",
    "dim",
    "model",
    "codec",
    "bits_per_vector",
    "index_bytes",
    "database_bytes",
    "segments",
    "pending_changes",
    "generation",
    "shards",
    "per_shard",
)

__all__ = [
    "SEARCH_MODES",
    "STATS_KEYS",
    "FilterError",
    "AddResult",
    "CollectionProtocol",
    "SearchResult",
]
