"""The contract of every codec: float embeddings in, packed codes (:mod:`index.codes`) out.

A :class:`Codec` writes documents with :meth:`Codec.encode` and queries with
:meth:`Codec.encode_queries`; a query may carry more planes than a document
and its own plane weights (the learned codecs score asymmetrically). The
codec's ``metric`` says how the index ranks its codes: ``"cosine"`` (codes of
unit vectors, divided by the stored norm) or ``"ip"`` (the centred grid's
unbiased inner-product estimate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

Metric = Literal["cosine", "ip"]


@dataclass(frozen=True)
class Codes:
    """Packed codes and their plane factors.

    ``words``: uint64 ``(n, P, ceil(m/64))``. ``scales``: float32 ``(n, P)`` or None:
    per-document scales of a document code, or a query's own plane weights;
    None means the fixed weights ``2^-p``.
    """

    words: np.ndarray
    scales: np.ndarray | None


class Codec(Protocol):
    """What the collection, the eval and the shards need of a codec."""

    name: str
    dim: int  # input embedding width d
    m: int  # bits per plane
    planes: int
    scaling: str  # "fixed" (plane weights 2^-p) or "per_document" (stored scales)
    metric: Metric

    def encode(self, x: np.ndarray) -> Codes:
        """Document codes of float32 ``(n, dim)`` embeddings."""
        ...

    def encode_queries(self, q: np.ndarray) -> Codes:
        """Query codes of float32 ``(nq, dim)`` embeddings (never stored)."""
        ...

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the codec (:func:`binsearch.codes.codecs.codec_from_config`)."""
        ...


def check_embeddings(x: np.ndarray, dim: int) -> np.ndarray:
    """``x`` as float32 ``(n, dim)``, finite; ValueError otherwise."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected embeddings of shape (n, {dim}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return x
