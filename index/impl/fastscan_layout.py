"""The fast-scan layout of codes and the nibble tables of queries (:mod:`index.impl.fastscan`).

:class:`FastScanCodes` holds codes in blocks of 32 documents, byte position by
byte position; :class:`NibbleTables` one 16-entry int8 table per nibble of a
query, exact (:func:`symmetric_tables` on the power-of-two grid) or quantized
(:func:`quantized_tables`). The kernels that use them are in :mod:`index.impl.fastscan`,
whose docstring explains the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index.codes import unpack_codes, words_per_plane

#: Documents per block: one 256-bit register of bytes.
BLOCK = 32
#: Largest integer sum kept in the int16 lanes.
INT16_MAX = 32767

# ---------------------------------------------------------------------------
# Layout.


@dataclass(frozen=True)
class FastScanCodes:
    """Packed codes re-laid out for the fast-scan kernel.

    Attributes:
        blocks: uint8 ``(ceil(n / 32), P, ceil(m / 8), 32)``: code byte ``t`` of
            plane ``p`` of document ``32 b + i`` is ``blocks[b, p, t, i]``.
        scales: float32 ``(ceil(n / 32), P, 32)`` per-document plane weights, or
            ``(1, P, 32)`` when all documents share them (:attr:`per_document` False).
        n: documents; m: bits per plane; planes: planes per code.
    """

    blocks: np.ndarray
    scales: np.ndarray
    n: int
    m: int
    per_document: bool

    @property
    def planes(self) -> int:
        """Planes per code."""
        return int(self.blocks.shape[1])

    @property
    def n_bytes(self) -> int:
        """Code bytes per plane scanned, ``ceil(m / 8)``."""
        return int(self.blocks.shape[2])

    @property
    def nbytes(self) -> int:
        """Bytes held by the layout (codes with padding, plus scales)."""
        return int(self.blocks.nbytes + self.scales.nbytes)

    @classmethod
    def from_codes(
        cls, codes: np.ndarray, weights: np.ndarray, m: int | None = None
    ) -> FastScanCodes:
        """Convert packed codes (:func:`index.codes.pack_codes`) to the fast-scan layout.

        Args:
            codes: uint64 ``(n, P, ceil(m / 64))``.
            weights: float32 plane weights: ``(P,)`` shared by every document
                (e.g. :func:`index.codes.fixed_plane_weights`) or ``(n, P)`` per
                document (a ``BinaryIndex``'s stored scales).
            m: bits per plane; default ``64 * words``.

        Example:
            >>> codes = pack_codes(np.ones((40, 2, 100)))
            >>> FastScanCodes.from_codes(codes, fixed_plane_weights(2), m=100).blocks.shape
            (2, 2, 13, 32)
        """
        codes = np.asarray(codes)
        if codes.ndim != 3 or codes.dtype != np.uint64:
            raise ValueError(
                f"codes must be uint64 (n, planes, words), got {codes.dtype} {codes.shape}"
            )
        n, planes, n_words = codes.shape
        m = n_words * 64 if m is None else int(m)
        if m <= 0 or words_per_plane(m) != n_words:
            raise ValueError(f"m={m} does not fit {n_words} words per plane")
        w = np.asarray(weights, dtype=np.float32)
        if w.shape == (planes,):
            per_document = False
        elif w.shape == (n, planes):
            per_document = True
        else:
            raise ValueError(
                f"weights must have shape ({planes},) or ({n}, {planes}), got {w.shape}"
            )
        if not np.isfinite(w).all():
            raise ValueError("weights must be finite")
        n_bytes = (m + 7) // 8
        n_blocks = (n + BLOCK - 1) // BLOCK
        as_bytes = np.ascontiguousarray(codes, dtype="<u8").view(np.uint8)[:, :, :n_bytes]
        padded = np.zeros((n_blocks * BLOCK, planes, n_bytes), dtype=np.uint8)
        padded[:n] = as_bytes
        blocks = padded.reshape(n_blocks, BLOCK, planes, n_bytes).transpose(0, 2, 3, 1)
        if per_document:
            sc = np.zeros((n_blocks * BLOCK, planes), dtype=np.float32)
            sc[:n] = w
            scales = sc.reshape(n_blocks, BLOCK, planes).transpose(0, 2, 1)
        else:
            scales = np.broadcast_to(w[None, :, None], (1, planes, BLOCK))
        return cls(np.ascontiguousarray(blocks), np.ascontiguousarray(scales), n, m, per_document)

    def codes_of(self, rows: np.ndarray) -> np.ndarray:
        """Packed codes uint64 ``(len(rows), P, ceil(m / 64))`` of the given rows (back-conversion)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise ValueError(f"rows must be in 0..{self.n - 1}")
        n_words = words_per_plane(self.m)
        out = np.zeros((rows.shape[0], self.planes, 8 * n_words), dtype=np.uint8)
        out[:, :, : self.n_bytes] = self.blocks[rows // BLOCK, :, :, rows % BLOCK]
        return out.view("<u8").astype(np.uint64, copy=False)

    def weights_of(self, rows: np.ndarray) -> np.ndarray:
        """Plane weights float32 ``(len(rows), P)`` of the given rows."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not self.per_document:
            return np.repeat(self.scales[:1, :, 0], rows.shape[0], axis=0)
        return self.scales[rows // BLOCK, :, rows % BLOCK]


# ---------------------------------------------------------------------------
# Tables.


@dataclass(frozen=True)
class NibbleTables:
    """Per-query int8 nibble tables: ``<v_q, s>`` restricted to nibble ``t`` is ``scale * entry``.

    Attributes:
        tables: int8 ``(nq, ceil(m / 8), 2, 32)``; ``tables[j, t, h, x]`` for
            ``x < 16`` is the entry of nibble value ``x`` at nibble position
            ``2t + h``; entries ``16..31`` repeat ``0..15`` (second 128-bit lane).
        scale: float32 ``(nq,)``.
        groups: int64 ``(nq,)``: byte positions whose int8 sums cannot overflow.
        exact: whether ``scale * sum`` is the exact score (see the module docstring).
    """

    tables: np.ndarray
    scale: np.ndarray
    groups: np.ndarray
    exact: bool


def _nibble_signs() -> np.ndarray:
    """float64 ``(16, 4)``: the ±1 signs nibble value ``x`` encodes on its 4 dimensions."""
    bits = (np.arange(16)[:, None] >> np.arange(4)[None, :]) & 1
    return (2.0 * bits - 1.0).astype(np.float64)


def _float_nibble_tables(values: np.ndarray) -> np.ndarray:
    """float64 ``(nq, ceil(m / 8), 2, 16)`` nibble tables of query values ``(nq, m)``."""
    nq, m = values.shape
    n_bytes = (m + 7) // 8
    padded = np.zeros((nq, n_bytes * 8), dtype=np.float64)
    padded[:, :m] = values
    return padded.reshape(nq, n_bytes, 2, 4) @ _nibble_signs().T


def _pack_tables(integer: np.ndarray, scale: np.ndarray, exact: bool) -> NibbleTables:
    """int8 tables from integer tables ``(nq, T, 2, 16)`` that satisfy the overflow bounds."""
    pair = np.abs(integer).max(axis=3).sum(axis=2)  # (nq, T): largest |lo + hi| per byte
    widest = np.maximum(pair.max(axis=1, initial=0), 1)
    groups = np.maximum(127 // widest, 1).astype(np.int64)
    tables = np.concatenate([integer, integer], axis=3).astype(np.int8)
    return NibbleTables(np.ascontiguousarray(tables), scale.astype(np.float32), groups, exact)


def _fits(integer: np.ndarray) -> bool:
    """Whether integer tables keep int8 byte sums and int16 plane sums free of overflow."""
    pair = np.abs(integer).max(axis=-1).sum(axis=-1)  # (..., T)
    return bool(pair.max(initial=0) <= 127 and pair.sum(axis=-1).max(initial=0) <= INT16_MAX)


#: Byte positions the quantized tables let the kernel sum in int8 before widening.
QUANTIZED_GROUP = 4


def quantized_tables(values: np.ndarray, group: int = QUANTIZED_GROUP) -> NibbleTables:
    """Approximate int8 tables of real query values (float ``(nq, m)``), one scale per query.

    Entries are ``round(T / scale)`` with the smallest scale such that ``group``
    bytes' lookups sum within int8 and a plane's sum fits int16; the rounding
    error of a plane's score is at most ``scale / 2`` per nibble. A larger
    ``group`` widens to int16 less often (each widening is extra work per
    byte position) but rounds coarser: ``group = 4`` leaves
    entries of about 4 bits (``|lo| + |hi| <= 31``), and the re-scoring of
    ``k * rescore_factor`` candidates recovers the exact order.
    """
    if not 1 <= int(group) <= 63:
        raise ValueError(f"group must be in 1..63, got {group}")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"values must have shape (nq, m), got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("query values must be finite")
    table = _float_nibble_tables(values)
    n_bytes = table.shape[1]
    if n_bytes >= INT16_MAX // 4:
        raise ValueError(f"m={values.shape[1]} is too long for int16 plane sums")
    pair = np.abs(table).max(axis=3).sum(axis=2)  # (nq, T)
    # Rounding adds at most 1 per byte pair: budget 127 // group - 1 per byte pair
    # (so group bytes sum within int8), INT16_MAX - T per plane.
    budget = 127 // int(group) - 1
    scale = np.maximum(pair.max(axis=1) / budget, pair.sum(axis=1) / (INT16_MAX - n_bytes))
    scale = np.where(scale > 0, scale, 1.0)
    integer = np.rint(table / scale[:, None, None, None]).astype(np.int64)
    return _pack_tables(integer, scale, exact=False)


def _power_of_two_grid(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of float32 ``weights (nq, P)``: the largest ``2**e`` with ``weights / 2**e`` integer.

    Returns ``(steps float64 (nq,), counts float64 (nq, P))`` with
    ``weights = steps[:, None] * counts`` exactly (an all-zero row gets step 1).
    """
    w = np.asarray(weights, dtype=np.float64)
    mant, exp = np.frexp(np.abs(w))
    mant_int = (mant * 2.0**53).astype(np.int64)  # exact: float32 has 24 significant bits
    lowest = mant_int & -mant_int
    trailing = np.log2(np.where(lowest > 0, lowest, 1)).astype(np.int64)
    e = np.where(w != 0, exp - 53 + trailing, np.iinfo(np.int64).max).min(axis=1, initial=0)
    e = np.where(np.any(w != 0, axis=1), e, 0)
    steps = np.ldexp(1.0, e)
    return steps, w / steps[:, None]


def exact_tables_possible(query_weights: np.ndarray, m: int) -> bool:
    """A cheap sufficient test that :func:`symmetric_tables` will be exact for these weights.

    Looks at the weights only (no query bits): with ``w = step * counts``
    (:func:`_power_of_two_grid`) a nibble entry is at most ``4 * sum|counts|``,
    so ``8 * sum|counts| <= 127`` keeps byte sums in int8 and
    ``ceil(m / 8) * 8 * sum|counts| <= 32767`` plane sums in int16. True for
    BEBR's ``2**-p`` weights up to 4 planes and ``m <= 2184``.
    """
    w = np.asarray(query_weights, dtype=np.float32)
    if w.ndim != 2 or w.shape[0] == 0 or not np.isfinite(w).all():
        return False
    steps, counts = _power_of_two_grid(w)
    worst = float(np.abs(counts).sum(axis=1).max())
    return bool(
        steps.min() >= 2.0**-126 and 8 * worst <= 127 and -(-int(m) // 8) * 8 * worst <= INT16_MAX
    )


def symmetric_tables(query_codes: np.ndarray, query_weights: np.ndarray, m: int) -> NibbleTables:
    """Nibble tables of query codes: exact where possible, else quantized.

    Args:
        query_codes: uint64 ``(nq, Pq, ceil(m / 64))``.
        query_weights: float ``(nq, Pq)`` plane weights.
        m: bits per plane.

    Exact (``result.exact``) when every query's weights are integer multiples
    ``n_p * 2**e`` of one power of two (``e >= -126``) and the integer tables fit
    the int8 / int16 bounds: then scores equal the popcount kernels' float32
    scores bit for bit. With BEBR's fixed weights ``2**-p`` that is every query
    of up to 4 planes (``m <= 4368``), and of 5 planes when ``m % 4 == 0`` and
    ``m <= 2112`` (entries ``|T| <= 2 * (2**Pq - 1)`` once halved: they are even
    when ``m % 4 == 0``). Otherwise (any query of the batch) the tables are
    :func:`quantized_tables` of the query values.
    """
    query_codes = np.asarray(query_codes)
    query_weights = np.asarray(query_weights, dtype=np.float32)
    if query_codes.ndim != 3 or query_codes.dtype != np.uint64:
        raise ValueError(
            f"query codes must be uint64 (nq, planes, words), got {query_codes.dtype} {query_codes.shape}"
        )
    if query_weights.shape != query_codes.shape[:2]:
        raise ValueError(
            f"query weights must have shape {query_codes.shape[:2]}, got {query_weights.shape}"
        )
    if not np.isfinite(query_weights).all():
        raise ValueError("query weights must be finite")
    nq = query_codes.shape[0]
    signs = unpack_codes(query_codes, m).astype(np.float64)  # (nq, Pq, m) of ±1
    steps, counts = _power_of_two_grid(query_weights)
    if nq and steps.min() >= 2.0**-126 and np.abs(counts).sum(axis=1).max() <= 2**20:
        table = _float_nibble_tables(np.einsum("jpm,jp->jm", signs, counts))
        # Sums of 4 same-parity integers are even (unless m % 4 leaves a short nibble).
        even = np.all(table % 2 == 0, axis=(1, 2, 3))
        table = np.where(even[:, None, None, None], table / 2, table).astype(np.int64)
        if _fits(table):
            return _pack_tables(table, np.where(even, 2 * steps, steps), exact=True)
    values = np.einsum("jpm,jp->jm", signs, query_weights.astype(np.float64))
    return quantized_tables(values)


# ---------------------------------------------------------------------------
# Top-k.
