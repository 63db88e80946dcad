"""What a collection's calls take and give: results, checked ids and vectors, query codes, the encoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from binsearch.codes.codecs import Codec
from binsearch.collection.directory import DEFAULT_MODEL, CollectionError
from index import BinaryIndex

MAX_ID_CHARS = 512


@dataclass(frozen=True)
class AddResult:
    added: int
    replaced: int


@dataclass
class SearchResult:
    """One query's hits, best first (ties by key ascending).

    ``ids``: external ids; ``scores``: float32 ``(n,)``; ``keys``: int64 ``(n,)``.
    """

    ids: list[str]
    scores: np.ndarray
    keys: np.ndarray
    rows: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def documents(self) -> list[dict[str, Any]]:
        """The hits' stored documents: ``{"id", "title", "text", "metadata"}`` each."""
        return [dict(r) for r in self.rows]

    def __len__(self) -> int:
        return len(self.ids)


def query_codes(codec: Codec, index: BinaryIndex, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Query codes and plane weights for float32 queries ``(nq, d)``.

    Learned codecs write queries (never stored) with more planes than documents
    (``encode_queries``); a codec without per-query scales uses the index's
    fixed plane weights. Returns uint64 ``(nq, Pq, words)`` and float32 ``(nq, Pq)``.
    """
    codes = getattr(codec, "encode_queries", codec.encode)(x)
    weights = codes.scales
    if weights is None:
        pq = codes.words.shape[1]
        weights = np.broadcast_to(index.default_query_weights(pq), (codes.words.shape[0], pq))
    return codes.words, np.ascontiguousarray(weights, dtype=np.float32)


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
