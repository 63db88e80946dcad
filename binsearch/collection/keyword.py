"""The keyword index: an SQLite FTS5 table over each document's title and text, ranked by BM25.

The table ``keyword`` is an *external-content* FTS5 index of the ``documents``
table (it stores the inverted index, not a second copy of the text), kept in
step by triggers on ``documents``. A trigger runs inside the statement that
fires it, so the keyword index changes in the same transaction as the rows and
the journal: an acknowledged write is searchable by keyword, and a write the
crash interrupted is in neither. ``PRAGMA recursive_triggers`` is on for the
writing connection, so an ``INSERT OR REPLACE`` that replaces a row removes
its old terms too.

**Tokens.** ``porter unicode61 remove_diacritics 2``: Unicode letters and digits
form tokens (everything else separates them), lower-cased, diacritics removed,
then Porter-stemmed (English). A query is cut into tokens the same way, and a
document matches when it holds any of them (an ``OR`` of the query's terms).

**Ranking.** FTS5's ``bm25()`` over title and text as one field (both columns
weigh 1): for query terms ``t``,
``score(d) = Σ_t idf(t) · tf(t,d) · (k1 + 1) / (tf(t,d) + k1 · (1 − b + b · |d| / avgdl))``
with ``k1 = 1.2``, ``b = 0.75`` (fixed in FTS5),
``idf(t) = ln((N − n(t) + 0.5) / (n(t) + 0.5))`` (at least 1e-6), ``|d|`` the
document's tokens (title + text) and ``avgdl`` their mean. A term repeated in the
query counts once per repetition. Scores are positive, higher is better.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from typing import Any

import numpy as np

#: The schema version this module's table and triggers belong to (``PRAGMA user_version``).
SCHEMA_VERSION = 1
TOKENIZER = "porter unicode61 remove_diacritics 2"
#: BM25 parameters of FTS5's ``bm25()`` (fixed by SQLite; documented here).
K1, B = 1.2, 0.75

SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS keyword USING fts5(
    title, text, content='documents', content_rowid='key', tokenize='{TOKENIZER}'
);
CREATE TRIGGER IF NOT EXISTS keyword_insert AFTER INSERT ON documents BEGIN
    INSERT INTO keyword(rowid, title, text) VALUES (new.key, new.title, new.text);
END;
CREATE TRIGGER IF NOT EXISTS keyword_delete AFTER DELETE ON documents BEGIN
    INSERT INTO keyword(keyword, rowid, title, text) VALUES ('delete', old.key, old.title, old.text);
END;
CREATE TRIGGER IF NOT EXISTS keyword_update AFTER UPDATE ON documents BEGIN
    INSERT INTO keyword(keyword, rowid, title, text) VALUES ('delete', old.key, old.title, old.text);
    INSERT INTO keyword(rowid, title, text) VALUES (new.key, new.title, new.text);
END;
"""

_TOKEN = re.compile(r"[^\W_]+")


def install(db: sqlite3.Connection) -> bool:
    """Make ``db`` (the writing connection) keep the keyword index; build it if missing.

    A database of an older schema (no keyword index) is migrated here, in one
    transaction: the table and its triggers are created and filled from the
    stored rows. Returns True when it built the index.
    """
    db.execute("PRAGMA recursive_triggers = ON")
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version >= SCHEMA_VERSION:
        return False
    db.execute("BEGIN IMMEDIATE")
    try:
        if int(db.execute("PRAGMA user_version").fetchone()[0]) >= SCHEMA_VERSION:
            db.execute("ROLLBACK")  # another process migrated it meanwhile
            return False
        for statement in _statements(SCHEMA):
            db.execute(statement)
        db.execute("INSERT INTO keyword(keyword) VALUES ('rebuild')")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return True


def _statements(script: str) -> list[str]:
    """The statements of :data:`SCHEMA` (triggers hold ``;`` inside ``BEGIN ... END``)."""
    out, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        text = "\n".join(current).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            out.append(text)
            current = []
    return out


def tokens(text: str) -> list[str]:
    """The query's words as FTS5 cuts them before stemming (letters and digits)."""
    return _TOKEN.findall(text)


def match_expression(text: str) -> str | None:
    """An FTS5 query matching documents with any of ``text``'s tokens, or None if it has none."""
    words = tokens(text)
    if not words:
        return None
    return " OR ".join(f'"{w}"' for w in words)


def search(
    select: Callable[[str, list[Any]], list[tuple]],
    text: str,
    k: int,
    condition: tuple[str, list[Any]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` documents for ``text`` by BM25: float32 scores and int64 keys.

    ``select(sql, params)``: runs a read query (``DocStore.select``).
    ``condition``: an SQL condition over ``documents AS d`` and its parameters
    (a compiled filter); only documents meeting it are ranked. Best first, ties by key.
    """
    match = match_expression(text)
    if match is None:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    if condition is None:
        sql = (
            "SELECT rowid, -bm25(keyword) AS s FROM keyword WHERE keyword MATCH ? "
            "ORDER BY s DESC, rowid LIMIT ?"
        )
        params: list[Any] = [match, int(k)]
    else:
        where, extra = condition
        sql = (
            "SELECT keyword.rowid, -bm25(keyword) AS s FROM keyword "
            "JOIN documents AS d ON d.key = keyword.rowid "
            f"WHERE keyword MATCH ? AND {where} ORDER BY s DESC, keyword.rowid LIMIT ?"
        )
        params = [match, *extra, int(k)]
    rows = select(sql, params)
    keys = np.array([r[0] for r in rows], dtype=np.int64)
    scores = np.array([r[1] for r in rows], dtype=np.float32)
    return scores, keys


def document_tokens(db: sqlite3.Connection) -> dict[int, list[str]]:
    """Every document's indexed tokens (stemmed), in order: what BM25 counts (for checks)."""
    db.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.keyword_terms "
        "USING fts5vocab(main, keyword, instance)"
    )
    out: dict[int, list[tuple[int, int, str]]] = {}
    rows = db.execute("SELECT term, doc, col, offset FROM temp.keyword_terms")
    for term, doc, col, offset in rows:
        out.setdefault(int(doc), []).append((0 if col == "title" else 1, int(offset), term))
    return {doc: [t for _, _, t in sorted(items)] for doc, items in out.items()}


__all__ = ["B", "K1", "SCHEMA_VERSION", "TOKENIZER", "install", "match_expression", "search"]
