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
ignores every frame after the first damaged one (and the whole log when its
header is damaged). :func:`check_sqlite_wal` refuses a log with a damaged
header, salt or whole frame instead of letting SQLite drop acknowledged
transactions; only a torn tail (a frame the file ends inside) is cut.
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
        except sqlite3.DatabaseError as exc:
            raise StoreCorruption(f"{self.path}: not a usable document database ({exc})") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
        db.execute("PRAGMA busy_timeout=10000")
        # A log SQLite resets is cut back to empty at its next commit (see _checkpoint).
        db.execute("PRAGMA journal_size_limit=0")
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
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Fold the log into the database file and empty it if no reader holds it.

        An emptied log is appended to afterwards, never overwritten in place: a
        process killed between SQLite's two writes of a frame then leaves a
        short file (a torn tail, dropped), not a whole frame with an old page
        under a new header, which :func:`check_sqlite_wal` would have to refuse.
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


def _db_page_size(db_path: Path) -> int | None:
    """The page size the database file's header gives (None if unreadable)."""
    try:
        with open(db_path, "rb") as f:
            head = f.read(100)
    except OSError:
        return None
    if len(head) < 18 or not head.startswith(b"SQLite format 3\0"):
        return None
    size = struct.unpack(">H", head[16:18])[0]
    return 65536 if size == 1 else size


def _frame_valid(data: bytes, offset: int, page: int, big: bool, prev: tuple[int, int]) -> bool:
    """Whether the frame at ``offset`` checksums, chained from ``prev`` (salts not looked at)."""
    f0, f1 = struct.unpack(">2I", data[offset + 16 : offset + 24])
    t = _wal_checksum(data[offset : offset + 8], big, *prev)
    return _wal_checksum(data[offset + 24 : offset + 24 + page], big, *t) == (f0, f1)


def _refuse(wal: Path, what: str, offset: int) -> StoreCorruption:
    return StoreCorruption(
        f"{wal.name}: {what}; refusing to open (SQLite would silently drop the acknowledged "
        f"writes from there on). Restore the collection from a copy, or run `truncate -s "
        f"{offset} {wal.name}` to accept losing them"
    )


def check_sqlite_wal(db_path: str | os.PathLike[str]) -> None:
    """Refuse a SQLite WAL file whose damage would make SQLite drop acknowledged writes.

    SQLite replays the WAL up to the first frame that fails its checksum or
    salt and silently ignores the rest (a damaged *header* makes it ignore the
    whole log). Each frame is classified by two independent facts: its
    checksum chains from the previous frame's stored checksum, and its salts
    equal the header's. Both: a frame of this log. Neither: a frame of an
    earlier generation of the file (or the end of the log): the scan stops.
    Exactly one: a frame of this log whose bytes changed -- refused, wherever it
    is, with the byte offset to truncate at to accept the loss. A damaged
    header is refused when the first frame still chains from it. Only a torn
    tail (a last frame the file ends inside, the write a crash cut short and
    never acknowledged) is left for SQLite to discard.
    """
    db_path = Path(db_path)
    wal = Path(f"{db_path}-wal")
    if not wal.is_file() or wal.stat().st_size < 32:
        return
    data = wal.read_bytes()
    magic, _version, page, _ckpt, salt1, salt2, c0, c1 = struct.unpack(">8I", data[:32])
    if magic not in _WAL_MAGIC:
        if len(data) >= 32 + 24 + 512:
            raise _refuse(wal, "not a SQLite write-ahead log (damaged header)", 0)
        return
    big = magic & 1 == 1
    computed = _wal_checksum(data[:24], big, 0, 0)
    if computed != (c0, c1):
        # SQLite ignores the whole log. If its first frame still chains from the
        # header (stored or recomputed checksum), the log holds real frames.
        pages = {p for p in (page, _db_page_size(db_path)) if p and 512 <= p <= 65536}
        for p in pages:
            if len(data) >= 32 + 24 + p and any(
                _frame_valid(data, 32, p, big, prev) for prev in {(c0, c1), computed}
            ):
                raise _refuse(wal, "its header is damaged and frames follow it", 0)
        return
    frame = 24 + page
    offset, prev = 32, (c0, c1)
    while offset + frame <= len(data):
        fs1, fs2, f0, f1 = struct.unpack(">4I", data[offset + 8 : offset + 24])
        salted = (fs1, fs2) == (salt1, salt2)
        chained = _frame_valid(data, offset, page, big, prev)
        if not salted and not chained:
            return  # a frame of an earlier generation of the file: the log ends here
        if not (salted and chained):
            number = (offset - 32) // frame + 1
            part = "salt" if chained else "checksum"
            raise _refuse(wal, f"frame {number} (byte {offset}) fails its {part}", offset)
        prev = (f0, f1)  # each frame's sum chains from the last frame's stored sum
        offset += frame
