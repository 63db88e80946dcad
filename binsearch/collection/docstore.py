"""The document store of a collection: one SQLite database in WAL mode.

It holds, in one file (``documents.db``):

* ``documents``: one row per live document: ``key`` (the index's int64 id),
  the external ``id`` (unique), ``title``, ``text``, ``metadata`` (JSON) and a
  CRC-32 of those fields, checked whenever a row is read, so a damaged row is
  refused rather than served;
* ``changes``: the index journal, every add (keys + packed codes + scales) and
  delete (keys) since the index was last saved, numbered by ``seq``;
* ``meta``: small settings (the next free key).

A write is **one SQLite transaction** holding both the document rows and the
journal entry, committed with ``synchronous=FULL``: it is durable when the
commit returns, and the documents and the index can never disagree, because
the index is rebuilt from the journal after a crash (see
:mod:`binsearch.collection.collection`). SQLite is the one durable log of the collection.

SQLite's own write-ahead log checksums every frame but, on opening, silently
ignores every frame after the first damaged one. :func:`check_sqlite_wal`
refuses a log whose damage is followed by valid frames (lost acknowledged
transactions) instead of letting SQLite drop them; only a torn tail is cut.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from binsearch.collection import keyword

DATABASE = "documents.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    key      INTEGER PRIMARY KEY,
    id       TEXT NOT NULL UNIQUE,
    title    TEXT NOT NULL,
    text     TEXT NOT NULL,
    metadata TEXT,
    crc      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    op     TEXT NOT NULL CHECK (op IN ('add', 'delete')),
    keys   BLOB NOT NULL,
    codes  BLOB,
    scales BLOB
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreCorruption(ValueError):
    """A stored file or row failed its integrity check."""


class DiskFull(OSError):
    """A write could not be made durable because the disk is full; nothing was stored."""


@dataclass(frozen=True)
class Change:
    """One journal entry: ``op`` ``"add"`` (with codes) or ``"delete"`` of int64 ``keys``."""

    seq: int
    op: str
    keys: np.ndarray
    codes: bytes | None
    scales: bytes | None


def row_crc(doc_id: str, title: str, text: str, metadata: str | None) -> int:
    """CRC-32 of a document row's fields (what a read checks).

    Each field is prefixed by its length, so moving text from one field to
    the next changes the checksummed bytes (``None`` metadata is length -1).
    """
    fields = (doc_id, title, text)
    payload = "".join(f"{len(f)}:{f}" for f in fields)
    payload += "-1:" if metadata is None else f"{len(metadata)}:{metadata}"
    return zlib.crc32(payload.encode("utf-8", "surrogatepass"))


def _row(key: int, doc_id: str, doc: dict[str, Any]) -> tuple:
    """The ``documents`` table row of a document: key, id, title, text, metadata JSON, CRC."""
    title, text = doc.get("title") or "", doc.get("text") or ""
    meta = doc.get("metadata")
    meta_json = None if meta is None else json.dumps(meta, ensure_ascii=False)
    return (key, doc_id, title, text, meta_json, row_crc(doc_id, title, text, meta_json))


def _full(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "full" in text or "no space" in text


class DocStore:
    """The SQLite database of one collection. Thread-safe.

    One connection writes (under a lock); each reading thread has its own
    connection, so searches read rows while a write commits (WAL mode).

    Args:
        path: the database file.
        fsync: ``synchronous=FULL`` (durable on commit) if True, else ``NORMAL``.
    """

    def __init__(self, path: str | os.PathLike[str], fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        try:
            self._db = self._connect()
            with self._db:
                self._db.executescript(SCHEMA)
            # Schema version 1: the keyword (FTS5) index, built here for an older database.
            self.keyword_built = keyword.install(self._db)
        except sqlite3.DatabaseError as exc:
            raise StoreCorruption(f"{self.path}: not a usable document database ({exc})") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def _reader(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise RuntimeError("the collection is closed")
            db = self._connect()
            db.execute("PRAGMA query_only=1")
            self._local.db = db
            with self._lock:
                self._readers.append(db)
        return db

    # ------------------------------------------------------------------ checks
    def quick_check(self) -> None:
        """SQLite's structural check of the whole file (reads all of it)."""
        try:
            result = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            raise StoreCorruption(f"{self.path}: damaged database ({exc})") from None
        if result != ["ok"]:
            raise StoreCorruption(f"{self.path}: damaged database ({'; '.join(result[:3])})")

    # ------------------------------------------------------------------ meta
    def get_meta(self, name: str, default: str | None = None) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, name: str, value: str) -> None:
        with self._lock, self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def next_key(self) -> int:
        """The smallest key never handed out (keys are never reused)."""
        return self.next_key_locked(self._reader())

    # ------------------------------------------------------------------ write
    class _Tx:
        def __init__(self, store: DocStore) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._db.execute("BEGIN IMMEDIATE")
            return self.store._db

        def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
            db = self.store._db
            commit_failed = False
            if exc is None:
                try:
                    db.execute("COMMIT")
                    return
                except sqlite3.Error as commit_error:
                    exc, commit_failed = commit_error, True
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and _full(exc):
                raise DiskFull(
                    "the disk is full: the write was not stored; free space and retry"
                ) from None
            if commit_failed:  # rolled back: the caller must not report the write as stored
                raise exc

    def _transaction(self) -> DocStore._Tx:
        return DocStore._Tx(self)

    def upsert(
        self,
        ids: Sequence[str],
        documents: Sequence[dict[str, Any]],
        codes: np.ndarray,
        scales: np.ndarray | None,
        keys: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]:
        """Store documents and their codes in one durable transaction.

        An id already stored keeps its key (the index replaces its code in
        place); a new id gets ``keys[i]`` if given, else the next free key.
        Returns the int64 keys of the rows and how many ids were replaced.
        Raises :class:`DiskFull` (nothing stored) when the disk is full.
        """
        n = len(ids)
        with self._lock, self._transaction() as db:
            existing = self._keys_of(db, ids)
            next_key = self.next_key_locked(db)
            out = np.empty(n, dtype=np.int64)
            fresh = 0
            for i, doc_id in enumerate(ids):
                if doc_id in existing:
                    out[i] = existing[doc_id]
                elif keys is not None:
                    out[i] = int(keys[i])
                else:
                    out[i] = next_key + fresh
                    fresh += 1
            rows = [
                _row(int(key), doc_id, doc)
                for key, doc_id, doc in zip(out, ids, documents, strict=True)
            ]
            db.executemany("INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.execute(
                "INSERT INTO changes (op, keys, codes, scales) VALUES ('add', ?, ?, ?)",
                (
                    out.tobytes(),
                    np.ascontiguousarray(codes, dtype=np.uint64).tobytes(),
                    None if scales is None else np.ascontiguousarray(scales, np.float32).tobytes(),
                ),
            )
            top = max(next_key + fresh, int(out.max()) + 1 if n else 0)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('next_key', ?)", (str(top),))
        return out, len(existing)

    def bulk_insert(self, rows: Sequence[tuple[int, str, dict[str, Any]]]) -> None:
        """Insert new rows ``(key, id, document)`` without journaling (bulk indexing)."""
        data = [_row(key, doc_id, doc) for key, doc_id, doc in rows]
        with self._lock, self._transaction() as db:
            db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)", data)
            if data:
                top = max(k for k, _, _ in rows) + 1
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('next_key', ?)",
                    (str(max(top, self.next_key_locked(db))),),
                )

    def next_key_locked(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT value FROM meta WHERE name = 'next_key'").fetchone()
        if row is not None:
            return int(row[0])
        row = db.execute("SELECT max(key) FROM documents").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def delete(self, ids: Sequence[str]) -> np.ndarray:
        """Delete ``ids`` (absent ones ignored) in one durable transaction; their keys."""
        with self._lock, self._transaction() as db:
            found = self._keys_of(db, ids)
            keys = np.array(sorted(found.values()), dtype=np.int64)
            if len(keys):
                db.executemany("DELETE FROM documents WHERE key = ?", [(int(k),) for k in keys])
                db.execute("INSERT INTO changes (op, keys) VALUES ('delete', ?)", (keys.tobytes(),))
        return keys

    @staticmethod
    def _keys_of(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for doc_id, key in db.execute(
                f"SELECT id, key FROM documents WHERE id IN ({marks})", chunk
            ):
                found[doc_id] = int(key)
        return found

    # ------------------------------------------------------------------ journal
    def changes_after(self, seq: int) -> Iterator[Change]:
        """Journal entries with ``seq`` greater than ``seq``, in order."""
        cursor = self._db.execute(
            "SELECT seq, op, keys, codes, scales FROM changes WHERE seq > ? ORDER BY seq", (seq,)
        )
        for s, op, keys, codes, scales in cursor:
            yield Change(int(s), op, np.frombuffer(keys, dtype=np.int64).copy(), codes, scales)

    def last_seq(self) -> int:
        row = self._db.execute("SELECT max(seq) FROM changes").fetchone()
        if row[0] is not None:
            return int(row[0])
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return 0 if row is None else int(row[0])

    def pending_changes(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM changes").fetchone()[0])

    def drop_changes(self, upto: int) -> None:
        """Forget journal entries up to ``upto`` (the saved index holds them), then checkpoint."""
        with self._lock, self._transaction() as db:
            db.execute("DELETE FROM changes WHERE seq <= ?", (upto,))
        # Under the lock: a checkpoint running on this connection while a writer
        # commits on it fails that COMMIT ("SQL statements in progress").
        with self._lock:
            try:  # fold the log into the database file; readers may keep parts of it busy
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.OperationalError:
                pass

    # ------------------------------------------------------------------ read
    def keys_of(self, ids: Sequence[str]) -> dict[str, int]:
        """The keys of those ``ids`` that are stored."""
        return self._keys_of(self._reader(), ids)

    def rows(self, keys: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The rows of ``keys`` (missing keys are left out), each checked against its CRC."""
        out: dict[int, dict[str, Any]] = {}
        keys = [int(k) for k in keys]
        db = self._reader()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = (
                f"SELECT key, id, title, text, metadata, crc FROM documents WHERE key IN ({marks})"
            )
            try:
                fetched = db.execute(sql, chunk).fetchall()
            except sqlite3.DatabaseError as exc:
                raise StoreCorruption(f"{self.path.name}: damaged database ({exc})") from None
            for key, doc_id, title, text, meta, crc in fetched:
                if row_crc(doc_id, title, text, meta) != crc:
                    raise StoreCorruption(
                        f"{self.path.name}: document with key {key} fails its checksum (damaged); "
                        "restore the collection from a copy"
                    )
                out[int(key)] = {
                    "id": doc_id,
                    "title": title,
                    "text": text,
                    "metadata": None if meta is None else json.loads(meta),
                }
        return out

    def select(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Rows of a read-only query on this thread's reader (filters, keyword search)."""
        try:
            return self._reader().execute(sql, list(params)).fetchall()
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            raise StoreCorruption(f"{self.path.name}: damaged database ({exc})") from None

    def row_by_id(self, doc_id: str) -> dict[str, Any] | None:
        key = self.keys_of([doc_id]).get(doc_id)
        return None if key is None else self.rows([key]).get(key)

    def count(self) -> int:
        return int(self._reader().execute("SELECT count(*) FROM documents").fetchone()[0])

    def all_keys(self) -> np.ndarray:
        """Every stored key, ascending (for consistency checks)."""
        rows = self._reader().execute("SELECT key FROM documents ORDER BY key").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def close(self, checkpoint: bool = True) -> None:
        """Close every connection; ``checkpoint`` first folds the log into the database file."""
        self._closed = True
        with self._lock:
            for db in self._readers:
                db.close()
            self._readers.clear()
            if checkpoint:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
            self._db.close()


# ---------------------------------------------------------------------- WAL check
_WAL_MAGIC = (0x377F0682, 0x377F0683)


def _wal_checksum(data: bytes, big_endian: bool, s0: int, s1: int) -> tuple[int, int]:
    words = np.frombuffer(data, dtype=">u4" if big_endian else "<u4").astype(np.uint64)
    mask = 0xFFFFFFFF
    # The sums are sequential (each depends on the last); 8-byte steps, as SQLite does.
    for i in range(0, len(words), 2):
        s0 = (s0 + int(words[i]) + s1) & mask
        s1 = (s1 + int(words[i + 1]) + s0) & mask
    return s0, s1


def check_sqlite_wal(db_path: str | os.PathLike[str]) -> None:
    """Refuse a SQLite WAL file damaged *before* its last valid frame.

    SQLite replays the WAL up to the first frame whose checksum fails and
    silently ignores the rest: a flipped byte mid-file would drop every later
    (acknowledged) transaction. A frame of the current salt with a valid
    checksum-free header after the damage means exactly that; refuse to open.
    A damaged or torn *last* frame is a write the crash interrupted (never
    acknowledged) and is left for SQLite to discard.
    """
    wal = Path(f"{db_path}-wal")
    if not wal.is_file() or wal.stat().st_size < 32:
        return
    data = wal.read_bytes()
    magic, _version, page_size, _ckpt, salt1, salt2, c0, c1 = struct.unpack(">8I", data[:32])
    if magic not in _WAL_MAGIC:
        raise StoreCorruption(f"{wal}: not a SQLite write-ahead log (damaged header)")
    big = magic & 1 == 1
    s0, s1 = _wal_checksum(data[:24], big, 0, 0)
    if (s0, s1) != (c0, c1):
        return  # a damaged header: SQLite ignores the whole log (nothing after it is valid)
    frame = 24 + page_size
    offset, damaged_at, prev = 32, None, (s0, s1)
    while offset + frame <= len(data):
        header = data[offset : offset + 24]
        _page, _commit, fs1, fs2, f0, f1 = struct.unpack(">6I", header)
        if (fs1, fs2) != (salt1, salt2):
            break  # frames of an earlier log generation: stale, not ours
        t = _wal_checksum(header[:8], big, *prev)
        t = _wal_checksum(data[offset + 24 : offset + frame], big, *t)
        if t != (f0, f1) and damaged_at is None:
            damaged_at = offset
        elif t == (f0, f1) and damaged_at is not None:
            raise StoreCorruption(
                f"{wal.name}: damaged at byte {damaged_at} with committed frames after it; "
                "refusing to open (SQLite would silently drop them). Restore the file, or "
                "move it aside to accept losing those writes"
            )
        prev = (f0, f1)  # each frame's sum chains from the last frame's stored sum
        offset += frame
