"""Query-like text for held-out documents: a title, or the opening words.

A held-out document used whole as a query is easier than a real query: it is
as long as the documents it is compared with and sits among them, so its
float top-10 has wider margins and coarse codes keep more of it. Measured on
SciFact (1,000 held-out documents against the 300 judged claims, float
recall@10, ``results/eval/report.md``): whole documents overestimate by up to
0.053 (sign, 1 bit); their titles, short like real queries, by at most 0.030.

So when the corpus's text is at hand, ``binsearch eval`` queries with each
held-out document's title, or, for a document without one, its first
:data:`OPENING_WORDS` words. The document itself stays out of the searched
corpus, so the query does not find its own source. No judgments are needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from binsearch.collection.corpus import Document, iter_corpus

OPENING_WORDS = 12  # about a short query's length (SciFact's claims: 12 words on average)
CHOICES = ("auto", "title", "document")


def query_text(doc: Document) -> str:
    """The title, or the first :data:`OPENING_WORDS` words of the text (never empty for a kept doc)."""
    if doc.title:
        return doc.title
    return " ".join(doc.text.split()[:OPENING_WORDS])


def held_out_texts(
    corpus: Path, rows: np.ndarray, n: int, doc_ids: list[str] | None = None
) -> list[str | None] | None:
    """The query text of each held-out row (None for an empty document), in one streamed pass.

    With ``doc_ids`` (one per embedding row) rows are matched by id. Without,
    rows number the corpus's non-empty documents in order, as ``binsearch eval``
    encodes them (or all of them, when that is the count that matches ``n``).
    Returns None when the corpus does not line up with the ``n`` embedding rows:
    the caller then queries with the documents' embeddings.
    """
    if doc_ids is not None:
        if len(doc_ids) != n:
            return None
        wanted = {doc_ids[int(r)]: i for i, r in enumerate(rows)}
        texts: list[str | None] = [None] * len(rows)
        found = 0
        for doc in iter_corpus(corpus, empty="keep"):
            if doc.id in wanted:
                texts[wanted[doc.id]] = query_text(doc) or None
                found += 1
        return texts if found == len(wanted) else None
    kept: dict[int, str] = {}
    every: dict[int, str] = {}
    wanted_rows = {int(r) for r in rows}
    count = total = 0
    for doc in iter_corpus(corpus, empty="keep"):
        if total in wanted_rows:
            every[total] = query_text(doc)
        if doc.content:
            if count in wanted_rows:
                kept[count] = query_text(doc)
            count += 1
        total += 1
    chosen = kept if count == n else every if total == n else None
    if chosen is None:
        return None
    return [chosen.get(int(r)) or None for r in rows]
