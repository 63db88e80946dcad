"""faiss interop: 1-plane codes to and from ``IndexBinaryFlat`` (faiss imported lazily).

faiss stores dimension ``j`` at bit ``j % 8`` of byte ``j // 8``, which is
exactly our layout (:mod:`index.codes`) read as bytes, so codes copy over
unchanged when ``m`` is a multiple of 8. faiss ranks by Hamming distance, i.e.
by our 1-plane score ``m - 2 * hamming``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from index.codes import words_per_plane

if TYPE_CHECKING:
    from index.code_store import CodeStore

S = TypeVar("S", bound="CodeStore")


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


def to_faiss(index: CodeStore) -> Any:
    """``IndexBinaryIDMap(IndexBinaryFlat(m))`` holding a 1-plane index's live codes and keys."""
    import faiss  # optional: index/ itself depends on numpy and numba only

    if index.planes != 1 or index.m % 8:
        raise ValueError("faiss export needs 1-plane codes with m a multiple of 8")
    flat = faiss.IndexBinaryFlat(index.m)
    out = faiss.IndexBinaryIDMap(flat)
    out.add_with_ids(codes_to_bytes(index.codes, index.m), index.keys)
    return out


def from_faiss(cls: type[S], faiss_index: Any, metric: str = "ip", **kwargs: Any) -> S:
    """A ``cls`` index of the codes of ``IndexBinaryFlat`` or an ``IndexBinaryIDMap`` of one.

    Keys come from the id map, or are ``0..n-1`` for a bare flat index.
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
