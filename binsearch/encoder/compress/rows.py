"""Bits where the tokens are: a plane count per row of the word-embedding table.

WordPiece frequencies are Zipfian: a few thousand rows of the word table carry
almost every token a corpus or a query contains, while most of its 30,522 rows
are rarely or never read. Under one budget of stored bits for the table, each
row ``r`` gets ``k_r`` planes (1..:data:`MAX_ROW_PLANES`) minimising

    ``sum_r importance_r * error_r(k_r)``

where ``error_r(k)`` is the squared error of the row quantized alone at ``k``
planes and ``importance_r`` comes from token counts on calibration text of
several sources (:func:`row_importance`). Rows never seen keep one plane: they
still decode (a query of rare tokens still works), just coarsely.

Stored cost of a row at ``k`` planes: ``k`` padded sign words and ``k``
float16 scales, plus its width, one uint8 (:data:`WIDTH_BITS`). The row
indices of each width are implied by the widths, so nothing else is stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from binsearch.codes.quantize import binarize_weight, dequantize_weight
from binsearch.encoder.compress.format import (
    SCALE_BITS,
    TIER_SEP,
    WIDTH_BITS,
    CompressionError,
    QuantizedTensor,
    padded,
)

MAX_ROW_PLANES = 8
FIT_ITERS = 10  # alternating rounds of the final per-row fits (high plane counts need them)
PLAN_ITERS = 3  # rounds of the error estimates the plan is made from


def token_counts(
    tokenizer: Any, texts: Sequence[str], rows: int, max_length: int = 256
) -> np.ndarray:
    """float64 ``(rows,)``: how often each token id occurs in ``texts`` (as the model
    would see them: cut at ``max_length`` tokens, special tokens included)."""
    counts: Counter[int] = Counter()
    texts = list(texts)
    for start in range(0, len(texts), 512):
        batch = tokenizer(texts[start : start + 512], truncation=True, max_length=max_length)
        for ids in batch["input_ids"]:
            counts.update(ids)
    out = np.zeros(rows, dtype=np.float64)
    for i, c in counts.items():
        if 0 <= i < rows:
            out[i] = c
    return out


def row_importance(
    counts: Sequence[np.ndarray], special_ids: Sequence[int] = (), power: float = 0.5
) -> np.ndarray:
    """float64 ``(rows,)``: each source's counts as shares (so no source outweighs the
    others by its size), summed, raised to ``power``; special tokens (every text has
    them) get the largest importance. Rows no source saw get 0.

    ``power`` 0.5 spreads bits over more rows than raw frequency (1.0); measured on
    held-out SciFact with Cranfield + WordNet counts, 0.5 was better (see the docs).
    """
    counts = [np.asarray(c, dtype=np.float64) for c in counts if np.sum(c) > 0]
    if not counts:
        raise CompressionError("no token counts to allocate the table's rows by")
    share = sum(c / c.sum() for c in counts) / len(counts)
    out = share**power
    if len(special_ids):
        out[np.asarray(special_ids, dtype=np.int64)] = out.max()
    return out


def row_cost(planes: np.ndarray | int, cols: int) -> np.ndarray | int:
    """Stored bits of a row at ``planes`` planes: signs, scales and its uint8 width."""
    return planes * (padded(cols) + SCALE_BITS) + WIDTH_BITS


def row_errors(
    w: np.ndarray,
    candidates: np.ndarray | None = None,
    max_planes: int = MAX_ROW_PLANES,
    fitted: np.ndarray | None = None,
    keep: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """float64 ``(rows, max_planes)``: each row's squared error at 1..``max_planes`` planes.

    Every row (every ``fitted`` row, when given) is fitted at 1..4 planes; above 4
    only the ``candidates`` rows (those that may get more than 4: the important
    ones; all fitted rows when None). The others get an infinite error (rows not
    in ``fitted`` have a finite one only at 1 plane: they stay there). ``keep``,
    when given, receives ``{K: (row indices, float16 fitted rows)}``.
    """
    w = np.asarray(w, dtype=np.float32)
    rows = w.shape[0]
    errors = np.full((rows, max_planes), np.inf)
    every = np.arange(rows)
    some = every if fitted is None else np.asarray(fitted, dtype=np.int64)
    for k in range(1, max_planes + 1):
        sub = every if k == 1 else some if k <= 4 or candidates is None else candidates
        sub = np.asarray(sub, dtype=np.int64)
        if sub.size == 0:
            continue
        part = w[sub]
        fit = dequantize_weight(*binarize_weight(part, k, iters=PLAN_ITERS))
        errors[sub, k - 1] = ((part - fit) ** 2).sum(1)
        if keep is not None:
            keep[k] = (sub, fit.astype(np.float16))
    return errors


def convex_errors(errors: np.ndarray) -> np.ndarray:
    """Each row's lower convex hull over plane counts 1..K (infinite entries skipped):
    the errors the greedy allocation of :func:`plan_rows` is exact for."""
    rows, kmax = errors.shape
    hull = errors.astype(np.float64).copy()
    finite = np.isfinite(errors)
    for k in range(kmax):
        for i in range(k):
            for j in range(k + 1, kmax):
                ok = finite[:, i] & finite[:, j] & finite[:, k]
                t = (k - i) / (j - i)
                line = (1 - t) * errors[:, i] + t * errors[:, j]
                hull[:, k] = np.where(ok, np.minimum(hull[:, k], line), hull[:, k])
    return hull


def plan_rows(errors: np.ndarray, importance: np.ndarray, cols: int, budget: float) -> np.ndarray:
    """Planes per row (int64 ``(rows,)``, 1..K) minimising ``sum importance * error``
    within ``budget`` stored bits per weight of the table (:func:`row_cost` each row).

    Every row starts at 1 plane; then the single-plane upgrades with the largest
    error reduction are taken, best first, until the budget is spent. On each
    row's convex hull (:func:`convex_errors`) the gains fall with each plane, so
    this greedy choice is the exact optimum of the hull objective (the row costs
    differ by whole plane units). Raises :class:`CompressionError` when even one
    plane per row exceeds the budget.
    """
    errors = np.asarray(errors, dtype=np.float64)
    rows, kmax = errors.shape
    unit = padded(cols) + SCALE_BITS
    spare = budget * rows * cols - rows * row_cost(1, cols)
    if spare < -1e-6:
        raise CompressionError(
            f"a table budget of {budget:.3f} bits per weight is below one plane per row "
            f"({row_cost(1, cols) / cols:.3f})"
        )
    upgrades = int(max(spare, 0) // unit)
    hull = convex_errors(errors)
    with np.errstate(invalid="ignore"):  # inf - inf: a step onto an unfitted width
        gains = np.asarray(importance, dtype=np.float64)[:, None] * (hull[:, :-1] - hull[:, 1:])
    gains = np.where(np.isfinite(gains), gains, -np.inf)  # such a step is never taken
    flat = gains.ravel()
    upgrades = min(upgrades, int(np.count_nonzero(flat > 0)))
    if upgrades == 0:
        return np.ones(rows, dtype=np.int64)
    # stable order: within a row (non-increasing gains) earlier planes come first
    order = np.argsort(-flat, kind="stable")[:upgrades]
    widths = 1 + np.bincount(order // (kmax - 1), minlength=rows)
    return widths.astype(np.int64)


def quantize_rows(
    w: np.ndarray, widths: np.ndarray, name: str, iters: int = FIT_ITERS
) -> dict[str, QuantizedTensor]:
    """The table ``w`` stored row-wise: ``{NAME@K: tier}`` for each width K in use, each
    tier's rows those of width K in row order (``rows`` set, ``rows_implied``)."""
    w = np.asarray(w, dtype=np.float32)
    widths = np.asarray(widths)
    if widths.shape != (w.shape[0],) or widths.min() < 1 or widths.max() > MAX_ROW_PLANES:
        raise CompressionError(f"{name}: one width in 1..{MAX_ROW_PLANES} per row is needed")
    out = {}
    for k in np.unique(widths):
        rows = np.flatnonzero(widths == k)
        signs, scales = binarize_weight(w[rows], int(k), iters=iters)
        q = QuantizedTensor.from_signs(signs, scales, rows=rows)
        q.rows_implied = True
        out[f"{name}{TIER_SEP}{int(k)}"] = q
    return out


def widths_of(tensors: Mapping[str, QuantizedTensor], name: str, rows: int) -> np.ndarray:
    """uint8 ``(rows,)``: each row's plane count, from the tiers of ``name``."""
    widths = np.zeros(rows, dtype=np.uint8)
    for key, q in tensors.items():
        if key.split(TIER_SEP, 1)[0] == name and q.rows is not None:
            widths[q.rows.astype(np.int64)] = q.bits
    return widths


def coverage(widths: np.ndarray, counts: np.ndarray) -> dict[int, dict[str, float]]:
    """Per width: how many rows have it and the share of the ``counts``' tokens they carry."""
    total = max(float(np.sum(counts)), 1e-300)
    return {
        int(k): {
            "rows": int(np.sum(widths == k)),
            "token_share": float(np.sum(counts[widths == k]) / total),
        }
        for k in range(1, int(widths.max()) + 1)
    }


TABLE_ROW_STEPS = (-1.4, -0.9, -0.4)  # row-wise table budgets offered: bits + each


def table_row_budgets(bits: float, cols: int) -> tuple[float, ...]:
    """Stored bits per weight offered to a row-wise word table for a model average of
    ``bits``: ``bits - 1.4``, ``- 0.9``, ``- 0.4`` (1.6 / 2.1 / 2.6 at 3 bits), none
    below one plane per row plus 0.1 (so at 2 bits: 1.17, 1.6)."""
    floor = row_cost(1, cols) / cols + 0.1
    return tuple(sorted({round(max(bits + s, floor), 3) for s in TABLE_ROW_STEPS}))


def table_row_options(
    w: np.ndarray,
    importance: np.ndarray,
    budgets: Sequence[float],
    candidates: int = 8000,
) -> dict[Any, tuple[int, np.ndarray, np.ndarray]]:
    """Row-wise candidates of the word table: ``{("rows", budget): (stored bits,
    dequantized table from the planning fits, widths)}``. Rows above 4 planes are
    fitted only among the ``candidates`` most important ones."""
    seen = np.flatnonzero(importance > 0)
    top = np.sort(seen[np.argsort(-importance[seen], kind="stable")[:candidates]])
    fits: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors = row_errors(w, top, fitted=seen, keep=fits)
    cols = w.shape[1]
    out: dict[Any, tuple[int, np.ndarray, np.ndarray]] = {}
    for budget in budgets:
        widths = plan_rows(errors, importance, cols, budget)
        table = np.zeros_like(w, dtype=np.float32)
        for k, (rows, fit) in fits.items():  # the planning fits, assembled by width
            chosen = widths[rows] == k
            table[rows[chosen]] = fit[chosen]
        cost = int(sum(row_cost(int(k), cols) for k in widths))
        out[("rows", budget)] = (cost, table, widths)
    return out


def table_row_candidates(
    tokenizer: Any, w: np.ndarray, bits: float, table_texts: Mapping[str, Sequence[str]]
) -> tuple[dict[Any, tuple[int, np.ndarray]], dict[Any, np.ndarray], dict[str, np.ndarray]]:
    """Row-wise candidates for the word table ``w``: ``(options, widths, counts)``.

    Token counts of each source in ``table_texts`` give the rows' importance
    (:func:`binsearch.encoder.compress.rows.row_importance`); each budget of
    :func:`table_row_budgets` gets its plan. ``options`` maps ``("rows", budget)``
    to (stored bits, dequantized table) for the sensitivity probes, ``widths``
    to the plan.
    """
    rows = w.shape[0]
    counts = {s: token_counts(tokenizer, t, rows) for s, t in table_texts.items() if t}
    importance = row_importance(list(counts.values()), tokenizer.all_special_ids)
    found = table_row_options(w, importance, table_row_budgets(bits, w.shape[1]))
    options = {k: (cost, table) for k, (cost, table, _) in found.items()}
    return options, {k: v[2] for k, v in found.items()}, counts
