"""What a collection's calls take and give: results, checked ids and vectors, query codes, the encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from binsearch.collection.directory import DEFAULT_MODEL, CollectionError

MAX_ID_CHARS = 512


@dataclass(frozen=True)
class AddResult:
    """What an add did: ``added`` new ids, ``replaced`` existing ones.

    ``keys``: the int64 keys the documents are stored under, in input order (a
    replaced id keeps the key it had).
    """

    added: int
    replaced: int
    keys: np.ndarray = field(
        repr=False, compare=False, default_factory=lambda: np.empty(0, np.int64)
    )


@dataclass
class SearchResult:
    """One query's hits, best first (score descending, ties by key ascending).

    ``ids``: the hits' ids; ``scores``: float32 ``(n,)``; ``keys``: int64 ``(n,)``.
    ``partial``: some shards of a sharded collection did not answer (only when
    the search allowed it); ``missing_shards`` lists them.
    """

    ids: list[str]
    scores: np.ndarray
    keys: np.ndarray
    rows: list[dict[str, Any]] | None = field(repr=False, default_factory=list)
    partial: bool = False
    missing_shards: list[int] = field(default_factory=list)
    #: Reads the hits' rows when they were not sent with the hits (a sharded search
    #: with ``documents=False``): ``ids -> rows``.
    fetch: Callable[[list[str]], list[dict[str, Any] | None]] | None = field(
        default=None, repr=False, compare=False
    )

    def documents(self) -> list[dict[str, Any]]:
        """The hits' stored documents: ``{"id", "title", "text", "metadata"}`` each."""
        if self.rows is None:
            if self.fetch is None:
                raise RuntimeError("this result carries no documents")
            self.rows = [d for d in self.fetch(self.ids) if d is not None]
        return [dict(r) for r in self.rows]

    def __len__(self) -> int:
        return len(self.ids)


def check_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str):
        raise CollectionError("ids must be a sequence of strings, not one string")
    ids = list(ids)
    for doc_id in ids:
        if not isinstance(doc_id, str) or not doc_id.strip():
            raise CollectionError(f"document ids must be non-blank strings, got {doc_id!r}")
        if len(doc_id) > MAX_ID_CHARS:
            raise CollectionError(f"document id longer than {MAX_ID_CHARS} characters")
    if len(set(ids)) != len(ids):
        raise CollectionError("document ids must be unique within one add")
    return ids


def content(doc: dict[str, Any]) -> str:
    """What the encoder embeds for a document: title and text, as the corpus readers do."""
    return f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()


def unit_vectors(x: Any, n: int, dim: int, what: str) -> np.ndarray:
    """``x`` checked as ``n`` finite, non-zero float32 vectors of width ``dim``, at unit length."""
    try:
        x = np.asarray(x)
        if x.dtype != np.float32:  # float64 input may exceed float32: check it there
            x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise CollectionError(f"{what} must be numbers") from None
    if x.dtype.kind != "f":
        raise CollectionError(f"{what} must be numbers")
    if x.ndim == 1 and n == 1:
        x = x[None, :]
    if x.shape != (n, dim):
        raise CollectionError(f"expected {what} of shape ({n}, {dim}), got {x.shape}")
    if not np.isfinite(x).all() or np.abs(x).max(initial=0) > np.finfo(np.float32).max:
        raise CollectionError(f"{what} must be finite float32 numbers")
    # Norms in float64: a float32 sum of squares can overflow for large finite values.
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    if np.any(norms == 0):
        raise CollectionError(f"a vector in {what} is all zeros: cosine similarity is undefined")
    if x.dtype == np.float32 and norms.max() < 1e30:  # the common case: no float64 copy
        return np.ascontiguousarray(x * (1.0 / norms).astype(np.float32)[:, None])
    return np.ascontiguousarray(x / norms[:, None], dtype=np.float32)


def load_encoder(manifest: dict[str, Any]) -> Any:
    """The encoder of the model a collection's manifest names (the bundled one, or its path)."""
    name = manifest.get("model")
    if name is None:
        raise CollectionError("this collection has no model: pass embeddings, not texts")
    from binsearch.encoder.model import Encoder

    where = name
    if name != DEFAULT_MODEL:
        where = manifest.get("model_path") or name
        if not Path(where).is_dir():
            raise CollectionError(
                f"this collection was built with the model {name!r}, "
                f"which is no longer at {where!r}: pass its directory as model="
            )
    return Encoder(where)
