"""Queries for a corpus without judgments: held-out documents, or a file of queries.

The measure needs no relevance judgments: recall of the float model's own
top-k. Without queries, ``binsearch eval`` holds out a seeded sample of the
corpus's documents, uses their embeddings as queries and removes them from the
searched corpus (a held-out document never finds itself). The float truth is an
exact cosine scan over the searched rows, a block at a time
(:func:`float_truth`), so a corpus far larger than memory is measured with only
the queries and one block of documents in float.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from binsearch.collection.corpus import CorpusError
from binsearch.eval.sources import BLOCK, EmbeddingSource, block_count, blocks

DEFAULT_HOLDOUT = 1000
SMALL_SHARE = 10  # a corpus under DEFAULT_HOLDOUT * SMALL_SHARE documents holds out 1 in 10


def holdout_count(n: int, requested: int | None = None) -> int:
    """How many of ``n`` documents to hold out: ``requested``, else 1,000 or 10 % of a small corpus."""
    count = requested if requested is not None else min(DEFAULT_HOLDOUT, n // SMALL_SHARE)
    if count < 1 or count > n - 1:
        raise CorpusError(
            f"cannot hold out {count:,} of {n:,} documents as queries "
            "(need at least one query and one document left to search)"
        )
    return int(count)


def holdout_rows(n: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct row numbers of ``range(n)``, seeded, sorted ascending."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)


@dataclass
class Workload:
    """What one evaluation searches and with what.

    ``source`` rows minus ``excluded`` are the searched corpus (its row numbers
    are the keys every ranking returns); ``queries`` are unit float32 rows.
    ``doc_ids`` (one per source row) and ``qrels`` are set only with judgments.
    """

    source: EmbeddingSource
    queries: np.ndarray
    query_ids: list[str]
    excluded: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    kind: str = "held-out"  # "held-out", "queries" or "judged"
    doc_ids: list[str] | None = None
    qrels: dict[str, dict[str, int]] | None = None

    @property
    def searched(self) -> int:
        """Documents in the searched corpus."""
        return self.source.n - len(self.excluded)


def holdout_workload(source: EmbeddingSource, count: int | None = None, seed: int = 0) -> Workload:
    """Hold out ``count`` seeded rows of ``source`` as queries (removed from the searched corpus)."""
    rows = holdout_rows(source.n, holdout_count(source.n, count), seed)
    queries = source.take(rows)
    return Workload(source, queries, [f"row:{r}" for r in rows.tolist()], rows, "held-out")


def _merge_topk(
    best_s: np.ndarray, best_r: np.ndarray, s: np.ndarray, r: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of two candidate sets per query, by score then row number.

    The block's own best ``k`` are picked first, so only ``(nq, 2k)`` candidates
    are merged (not the whole block with its row numbers broadcast per query).
    """
    if s.shape[1] > k:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        s, rows = np.take_along_axis(s, part, 1), r[part]
    else:
        rows = np.broadcast_to(r, s.shape)
    s = np.concatenate([best_s, s], axis=1)
    r = np.concatenate([best_r, rows], axis=1)
    if s.shape[1] > k:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        s, r = np.take_along_axis(s, part, 1), np.take_along_axis(r, part, 1)
    order = np.lexsort((r, -s), axis=1)
    return np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)


def float_truth(
    work: Workload, depth: int, block: int = BLOCK, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-``depth`` ``(scores, rows)`` of every query over the searched rows.

    Ties are broken by the lower row number. Rows are source row numbers.
    """
    nq = work.queries.shape[0]
    best_s = np.empty((nq, 0), np.float32)
    best_r = np.empty((nq, 0), np.int64)
    bar = tqdm(
        total=block_count(work.source, block),
        desc="float truth",
        unit="block",
        disable=not progress,
    )
    with bar:
        for rows, x in blocks(work.source, work.excluded, block):
            best_s, best_r = _merge_topk(best_s, best_r, work.queries @ x.T, rows, depth)
            bar.update()
    return best_s, best_r


def overlap_per_query(ranked: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """``|top_k(run) ∩ top_k(reference)| / k`` for each query, float64 ``(nq,)``.

    A query whose reference holds fewer than ``k`` rows (a tiny corpus) is
    scored against that many.
    """
    out = np.empty(len(ranked), np.float64)
    for i, (a, b) in enumerate(zip(ranked, reference, strict=True)):
        ref = {int(v) for v in b[:k] if v >= 0}
        out[i] = len(ref.intersection(int(v) for v in a[:k])) / max(len(ref), 1)
    return out
