"""Codec + index over bare embeddings, in memory: what quality evaluation scans.

No documents, no model, nothing on disk: for those, use
:class:`binsearch.Collection`. Queries are coded exactly as a collection codes
them (:func:`binsearch.collection.collection.query_codes`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.codes.codecs import Codec
from index import BinaryIndex

DOCUMENTS = "documents.jsonl"


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    title: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def index_embeddings(
    embeddings: np.ndarray,
    codec: Codec,
    ids: np.ndarray | None = None,
    batch_size: int = 4096,
    progress: bool = False,
    meta: dict[str, Any] | None = None,
) -> BinaryIndex:
    """Binarize float32 ``(n, d)`` embeddings with ``codec`` into a new index.

    ``ids`` default to row numbers. Encoding runs in batches (progress bar
    optional) so memory stays bounded by one batch of unpacked signs.
    """
    n = embeddings.shape[0]
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    # A codec may rank by the inner product (the centred grid codec's unbiased estimate).
    metric = getattr(codec, "metric", "cosine")
    index = BinaryIndex(codec.m, codec.planes, codec.weights, metric, meta=meta)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="binarizing", unit="batch", disable=not progress):
        stop = min(start + batch_size, n)
        codes = codec.encode(embeddings[start:stop])
        index.add(codes.words, ids[start:stop], codes.scales)
    return index


def search_embeddings(
    index: BinaryIndex, codec: Codec, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores, ids)`` for float32 query embeddings ``(nq, d)``."""
    from binsearch.collection.collection import query_codes

    words, weights = query_codes(codec, index, queries)
    # "fast": fast-scan where the kernel chooser finds it faster, also with quantized tables whose
    # best 4k are re-scored exactly (the query is itself a binarized float).
    return index.search(words, k, weights, method="fast")
