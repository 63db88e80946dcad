"""The document store of a collection: one SQLite database in WAL mode.

It holds, in one file (``documents.db``):

* ``documents``: one row per live document: ``key`` (the index's int64 id),
  the external ``id`` (unique), ``title``, ``text``, ``metadata`` (JSON) and a
  CRC-32 of those fields, checked whenever a row is read, so a damaged row is
  refused rather than served;
* ``changes``: the index journal, every add (keys + packed codes + scales) and
  delete (keys) since the index was last saved, numbered by ``seq``, each with a
  CRC-32 of all its fields (:func:`change_crc`), checked on replay;
* ``meta``: small settings (the next free key, ``schema_version``).

**Schema versions** (``meta.schema_version``; absent means 1): 2 added
``changes.crc``. A writable open migrates an older database in one
transaction (:data:`MIGRATIONS`); a read-only open reads it as it is.

A write is **one SQLite transaction** holding both the document rows and the
journal entry, committed with ``synchronous=FULL``: it is durable when the
commit returns, and the documents and the index can never disagree, because
the index is rebuilt from the journal after a crash (see
:mod:`binsearch.collection.collection`). SQLite is the one durable log of the collection.

SQLite's own write-ahead log checksums every frame but, on opening, silently
ignores every frame after the first damaged one (and the whole log when its
header is damaged). :func:`binsearch.collection.wal.check_sqlite_wal` refuses a log with a damaged
header, salt or whole frame instead of letting SQLite drop acknowledged
transactions; only a torn tail (a frame the file ends inside) is cut.
"""

from __future__ import annotations

import json
import os
import sqlite3
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
    scales BLOB,
    crc    INTEGER
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
#: The schema this binsearch writes (``meta.schema_version``).
SCHEMA_VERSION = 2


def _migrate_journal_crc(db: sqlite3.Connection) -> None:
    """Version 2: ``changes.crc``, filled in for the entries already there."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(changes)")}
    if "crc" not in columns:
        db.execute("ALTER TABLE changes ADD COLUMN crc INTEGER")
    rows = db.execute("SELECT seq, op, keys, codes, scales FROM changes").fetchall()
    db.executemany(
        "UPDATE changes SET crc = ? WHERE seq = ?",
        [(change_crc(seq, op, keys, codes, scales), seq) for seq, op, keys, codes, scales in rows],
    )


#: ``version -> step`` bringing a database from ``version - 1`` to ``version``.
MIGRATIONS = {2: _migrate_journal_crc}


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


def change_crc(seq: int, op: str, keys: bytes, codes: bytes | None, scales: bytes | None) -> int:
    """CRC-32 of a journal entry: its number, operation and each blob, length-prefixed."""
    crc = zlib.crc32(f"{int(seq)}:{op}".encode())
    for blob in (keys, codes, scales):
        crc = zlib.crc32(b"-1:" if blob is None else f"{len(blob)}:".encode(), crc)
        if blob is not None:
            crc = zlib.crc32(blob, crc)
    return crc


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
        readonly: never write (no schema creation or migration); see :meth:`pin`.
    """

    def __init__(
        self, path: str | os.PathLike[str], fsync: bool = True, readonly: bool = False
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        self.readonly = readonly
        try:
            self._db = self._connect()
            if readonly:
                self._db.execute("PRAGMA query_only=1")
                self.keyword_built = False
            else:
                self._create_or_migrate()
                # The keyword (FTS5) index: built here for a database older than it.
                self.keyword_built = keyword.install(self._db)
            self.schema_version = int(self.get_meta("schema_version", "1") or 1)
        except sqlite3.DatabaseError as exc:
            raise StoreCorruption(f"{self.path}: not a usable document database ({exc})") from None
        if self.schema_version > SCHEMA_VERSION:
            self._db.close()
            raise StoreCorruption(
                f"{self.path}: document database schema {self.schema_version}, this binsearch "
                f"reads up to {SCHEMA_VERSION}; use a newer binsearch"
            )

    def _create_or_migrate(self) -> None:
        """Create the tables (a new database) or bring an older schema up to date.

        One transaction: a crash leaves the old schema or the new one.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            fresh = not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            version = SCHEMA_VERSION if fresh else int(row[0]) if row else 1
            for step in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[step](db)
            if version <= SCHEMA_VERSION:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                    (str(max(version, SCHEMA_VERSION)),),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
        db.execute("PRAGMA busy_timeout=10000")
        # A log SQLite resets is cut back to empty at its next commit (see _checkpoint).
        db.execute("PRAGMA journal_size_limit=0")
        return db

    def _reader(self) -> sqlite3.Connection:
        if self.readonly:  # one connection, pinned at one point of the log (pin)
            if self._closed:
                raise RuntimeError("the collection is closed")
            return self._db
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

    # ------------------------------------------------------------------ read point
    def pin(self) -> None:
        """Read-only stores: see the database as it is now, for every later read.

        Opens one read transaction (WAL mode: a snapshot of the committed
        state) held until :meth:`unpin` or :meth:`close`; writers go on
        committing beside it. The log cannot be emptied past it meanwhile, so a
        long-lived read-only store should be reopened now and then.
        """
        if not self.readonly:
            raise RuntimeError("only a read-only store is pinned")
        self.unpin()
        self._db.execute("BEGIN")
        self._db.execute("SELECT count(*) FROM meta").fetchone()  # the snapshot starts here

    def unpin(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def journal_complete_after(self, seq: int) -> bool:
        """Whether every journal entry after ``seq`` up to the last one is still there."""
        last = self.last_seq()
        if last <= seq:
            return True
        (held,) = self._db.execute("SELECT count(*) FROM changes WHERE seq > ?", (seq,)).fetchone()
        return int(held) == last - seq  # numbers are consecutive: none dropped

    # ------------------------------------------------------------------ checks
    def quick_check(self, full: bool = False) -> None:
        """SQLite's structural check of the whole file (reads all of it); ``full``: also
        every index against its table (``integrity_check``, slower)."""
        pragma = "integrity_check" if full else "quick_check"
        try:
            result = [r[0] for r in self._db.execute(f"PRAGMA {pragma}").fetchall()]
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
            self._journal(
                db,
                "add",
                out.tobytes(),
                np.ascontiguousarray(codes, dtype=np.uint64).tobytes(),
                None if scales is None else np.ascontiguousarray(scales, np.float32).tobytes(),
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
                self._journal(db, "delete", keys.tobytes(), None, None)
        return keys

    def _keys_of(self, db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, int]:
        """The keys of the stored ``ids``, each confirmed by the row it points at.

        The lookup goes through SQLite's index on ``id``; a damaged entry there
        would point an id at another document's row (which passes its own CRC).
        Reading each found row back by key and comparing its id catches that.
        """
        found: dict[str, int] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            part = {
                doc_id: int(key)
                for doc_id, key in db.execute(
                    f"SELECT id, key FROM documents WHERE id IN ({marks})", chunk
                )
            }
            if part:
                keys = list(part.values())
                marks = ",".join("?" * len(keys))
                held = dict(
                    db.execute(f"SELECT key, id FROM documents WHERE key IN ({marks})", keys)
                )
                for doc_id, key in part.items():
                    if held.get(key) != doc_id:
                        raise StoreCorruption(
                            f"{self.path.name}: the id index points {doc_id!r} at the row of "
                            f"{held.get(key)!r} (damaged); restore the collection from a copy"
                        )
            found.update(part)
        return found

    # ------------------------------------------------------------------ journal
    def _journal(
        self,
        db: sqlite3.Connection,
        op: str,
        keys: bytes,
        codes: bytes | None,
        scales: bytes | None,
    ) -> None:
        """Append one journal entry, numbered and checksummed (inside a write transaction)."""
        seq = self.last_seq(db) + 1
        db.execute(
            "INSERT INTO changes (seq, op, keys, codes, scales, crc) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, op, keys, codes, scales, change_crc(seq, op, keys, codes, scales)),
        )

    def changes_after(self, seq: int, db: sqlite3.Connection | None = None) -> Iterator[Change]:
        """Journal entries with ``seq`` greater than ``seq``, in order, each checked.

        Raises :class:`StoreCorruption` at an entry that fails its CRC-32 (or,
        in a schema-2 database, has none): replaying it would put wrong codes,
        scales or keys into the index without a word.
        """
        db = self._db if db is None else db
        checked = self.schema_version >= 2
        crc_column = "crc" if checked else "NULL"
        cursor = db.execute(
            f"SELECT seq, op, keys, codes, scales, {crc_column} FROM changes "
            "WHERE seq > ? ORDER BY seq",
            (seq,),
        )
        for s, op, keys, codes, scales, crc in cursor:
            if checked and (
                crc is None
                or not isinstance(keys, bytes)
                or change_crc(s, op, keys, codes, scales) != crc
            ):
                raise StoreCorruption(
                    f"{self.path.name}: journal entry {s} fails its checksum (damaged); "
                    "restore the collection from a copy"
                )
            if len(keys) % 8:
                raise StoreCorruption(f"{self.path.name}: journal entry {s} is damaged")
            yield Change(int(s), op, np.frombuffer(keys, dtype=np.int64).copy(), codes, scales)

    def check_journal(self) -> int:
        """Read and check every journal entry (:meth:`changes_after`); how many there are."""
        return sum(1 for _ in self.changes_after(-1))

    def last_seq(self, db: sqlite3.Connection | None = None) -> int:
        """The number of the last journal entry ever written (0 if none)."""
        db = self._db if db is None else db
        row = db.execute("SELECT max(seq) FROM changes").fetchone()
        if row[0] is not None:
            return int(row[0])
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
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
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Fold the log into the database file and empty it if no reader holds it.

        An emptied log is appended to afterwards, never overwritten in place: a
        process killed between SQLite's two writes of a frame then leaves a
        short file (a torn tail, dropped), not a whole frame with an old page
        under a new header, which :func:`binsearch.collection.wal.check_sqlite_wal` would have to refuse.
        A reader inside a transaction keeps the log: then a passive checkpoint,
        without waiting for it.
        """
        try:
            self._db.execute("PRAGMA busy_timeout=0")
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.OperationalError:
            pass
        finally:
            self._db.execute("PRAGMA busy_timeout=10000")

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
            if self.readonly:
                self._db.close()
                return
            if checkpoint:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
            self._db.close()
