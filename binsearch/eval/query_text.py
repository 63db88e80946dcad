"""Query-like text for held-out documents: their opening words (or their titles).

A held-out document used whole as a query is easier than a real query: it is
as long as the documents it is compared with and sits among them, so its
float top-10 has wider margins and coarse codes keep more of it. Measured on
SciFact (1,000 held-out documents against the 300 judged claims, float
recall@10 of every default code, ``results/eval/report.md``): whole documents
overestimate by up to 0.053 (sign, 1 bit), their titles by up to 0.030, their
first 12 words by up to 0.018 (24 words: 0.050; a random or the last sentence
underestimates, by up to 0.042).

So when the corpus's text is at hand, ``binsearch eval`` queries with each
held-out document's first :data:`OPENING_WORDS` words (``opening``, the length
of a short query: SciFact's claims have 12.5 on average), or with its title
(``title``). The document itself stays out of the searched corpus, so the
query does not find its own source. No judgments are needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from binsearch.collection.corpus import Document, iter_corpus

OPENING_WORDS = 12  # about a short query's length (SciFact's claims: 12 words on average)
KINDS = ("opening", "title")  # what a held-out document can query with, besides itself


def query_text(doc: Document, kind: str = "opening") -> str:
    """``opening``: the first :data:`OPENING_WORDS` words of the text (of the title when the
    text is empty); ``title``: the title, or the opening words when there is none."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "title" and doc.title:
        return doc.title
    return " ".join((doc.text or doc.title).split()[:OPENING_WORDS])


def held_out_texts(
    corpus: Path,
    rows: np.ndarray,
    n: int,
    doc_ids: list[str] | None = None,
    kind: str = "opening",
) -> list[str | None] | None:
    """The ``kind`` of query text of each held-out row (None for an empty document), in one pass.

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
                texts[wanted[doc.id]] = query_text(doc, kind) or None
                found += 1
        return texts if found == len(wanted) else None
    kept: dict[int, str] = {}
    every: dict[int, str] = {}
    wanted_rows = {int(r) for r in rows}
    count = total = 0
    for doc in iter_corpus(corpus, empty="keep"):
        if total in wanted_rows:
            every[total] = query_text(doc, kind)
        if doc.content:
            if count in wanted_rows:
                kept[count] = query_text(doc, kind)
            count += 1
        total += 1
    chosen = kept if count == n else every if total == n else None
    if chosen is None:
        return None
    return [chosen.get(int(r)) or None for r in rows]
