"""The code format shared by ``binsearch`` and ``index`` (DESIGN.md, "The code format").

A code has ``P`` planes of ``m`` bits. Dimension ``j`` of plane ``p`` is bit
``j % 64`` of uint64 word ``j // 64`` (little-endian, LSB first); a set bit
means +1, a clear bit -1. Storage is document-major: ``words[i, p, w]``.

Plane ``p`` carries a weight, either fixed (``w_p = 2**-p``) or per document
(``alpha[i, p]``), and the value of dimension ``j`` is
``v_j = sum_p w_p * (2 * bit_pj - 1)``.

Nobody else packs bits: every producer of codes goes through :func:`pack_codes`.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64


def words_per_plane(m: int) -> int:
    """Number of uint64 words holding ``m`` bits."""
    return (int(m) + WORD_BITS - 1) // WORD_BITS


def fixed_plane_weights(planes: int) -> np.ndarray:
    """BEBR's fixed plane weights ``[1, 1/2, 1/4, ...]`` as float32, shape ``(planes,)``."""
    return np.float32(2.0) ** -np.arange(planes, dtype=np.float32)


def pack_codes(signs: np.ndarray) -> np.ndarray:
    """Pack sign planes into document-major uint64 words.

    Args:
        signs: shape ``(n, P, m)``; any numeric or bool dtype. A value > 0 (or
            ``True``) is +1 and becomes a set bit; anything else is -1.

    Returns:
        uint64 array of shape ``(n, P, ceil(m / 64))``; padding bits are clear.

    Example:
        >>> pack_codes(np.array([[[1, -1, 1]]]))  # bits 0 and 2 set
        array([[[5]]], dtype=uint64)
    """
    signs = np.asarray(signs)
    if signs.ndim != 3:
        raise ValueError(f"signs must have shape (n, planes, m), got {signs.shape}")
    n, planes, m = signs.shape
    n_words = words_per_plane(m)
    bits = np.zeros((n, planes, n_words * WORD_BITS), dtype=np.uint8)
    bits[:, :, :m] = signs > 0
    packed = np.packbits(bits, axis=-1, bitorder="little")  # (n, P, 8 * n_words) bytes
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)


def unpack_codes(words: np.ndarray, m: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: int8 ±1 array of shape ``(n, P, m)``."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    if words.ndim != 3:
        raise ValueError(f"words must have shape (n, planes, words), got {words.shape}")
    if words.shape[2] != words_per_plane(m):
        raise ValueError(f"{words.shape[2]} words per plane cannot hold exactly {m} bits")
    as_bytes = words.astype("<u8", copy=False).view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, bitorder="little")[:, :, :m]
    return (bits.astype(np.int8) * 2 - 1).astype(np.int8)


def code_values(words: np.ndarray, m: int, weights: np.ndarray) -> np.ndarray:
    """Real values ``v = sum_p w_p * sign_p`` of packed codes, float32 ``(n, m)``.

    ``weights`` is ``(P,)`` for fixed plane weights or ``(n, P)`` per document.
    This is the slow, obvious reference; kernels must agree with it.
    """
    signs = unpack_codes(words, m).astype(np.float32)
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 1:
        w = np.broadcast_to(w, signs.shape[:2])
    return np.einsum("npm,np->nm", signs, w)


def quantize_query(x: np.ndarray, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Slice float queries into ``bits`` sign planes so the popcount kernel scores them.

    Each query is quantized uniformly on ``[-a, a]`` (``a`` = its largest
    magnitude) to odd integers ``y = 2u - L``, ``u`` in ``0..L``, ``L = 2**bits - 1``.
    Writing ``u`` in binary, ``y = sum_k 2**k (2 u_k - 1)``: a sum of sign planes
    with weights ``2**k``, i.e. an ordinary multi-plane code. Its values are
    ``a * y / L`` and its score against any document code is the exact inner
    product of those values with the document's code values.

    Args:
        x: float ``(nq, m)`` queries.
        bits: planes per query, 1..16.

    Returns:
        ``(codes, weights)``: uint64 ``(nq, bits, ceil(m/64))`` (most significant
        plane first) and float32 ``(nq, bits)`` plane weights.

    Example:
        >>> codes, w = quantize_query(np.array([[1.0, -1.0, 1 / 3]]), bits=2)
        >>> code_values(codes, 3, w)  # L = 3: y = 3, -3, 1 times a / L = 1/3
        array([[ 1.        , -1.        ,  0.33333334]], dtype=float32)
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"queries must have shape (nq, m), got {x.shape}")
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    if not np.isfinite(x).all():
        raise ValueError("queries must be finite")
    levels = (1 << int(bits)) - 1
    a = np.abs(x).max(axis=1, keepdims=True)
    safe = np.where(a > 0, a, 1.0)  # an all-zero query gets zero weights: values 0
    u = np.clip(np.rint((x / safe + 1.0) / 2.0 * levels), 0, levels).astype(np.int64)
    shifts = np.arange(bits - 1, -1, -1)  # plane p carries bit (bits - 1 - p)
    planes = ((u[:, None, :] >> shifts[None, :, None]) & 1).astype(np.int8)
    weights = (a / levels) * (2.0**shifts)[None, :]
    return pack_codes(planes), weights.astype(np.float32)


def byte_tables(values: np.ndarray) -> np.ndarray:
    """Per-byte lookup tables of query values for SDC scoring, float32 ``(nq, ceil(m/8), 256)``.

    ``tables[j, t, v] = sum_b values[j, 8t + b] * (2 * bit_b(v) - 1)``: the
    inner product of the query with the signs byte value ``v`` encodes at code
    byte ``t`` (dimensions past ``m`` count as 0).

    Args:
        values: float ``(nq, m)`` query values (code values for symmetric SDC,
            the float query itself for exact asymmetric scoring).
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"values must have shape (nq, m), got {values.shape}")
    nq, m = values.shape
    n_bytes = (m + 7) // 8
    padded = np.zeros((nq, n_bytes * 8), dtype=np.float32)
    padded[:, :m] = values
    bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1
    signs = (2 * bits - 1).astype(np.float32)  # (256, 8)
    return np.ascontiguousarray(padded.reshape(nq, n_bytes, 8) @ signs.T)
