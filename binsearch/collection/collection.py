"""``Collection``: the one object that pairs a codec, a scan index, a document store and a model.

>>> import numpy as np
>>> from binsearch import Collection
>>> c = Collection.create(tmp / "docs", codec="residual", bits=2, model=None, dim=4)
>>> c.add(["a", "b"], embeddings=np.eye(2, 4, dtype=np.float32), texts=["first", "second"])
AddResult(added=2, replaced=0)
>>> c.search(embeddings=np.array([[1, 0, 0, 0]], np.float32), k=1)[0].ids
['a']

A collection directory holds:

* ``collection.json`` — format, model, codec configuration, dimension;
* ``index/`` — the :class:`index.BinaryIndex` (immutable segment files and a
  manifest; memory-mapped on open);
* ``documents.db`` — SQLite in WAL mode (:mod:`binsearch.collection.docstore`): the
  documents, the id ↔ key map and the journal of index changes since the
  index was last saved;
* ``collection.lock`` — held by the one process that writes.

**Writes.** An add or delete is one SQLite transaction (rows + journal entry),
fsynced before it returns; then the index applies it in one atomic step, so a
search sees all of a batch or none of it. SQLite is the single durable log.

**Snapshots** save the index (only segments not yet on disk, the tombstone
masks and a new manifest generation, stamped with the last journal number it
holds), then drop the journal up to that number and checkpoint SQLite: the
cost follows the changes, not the collection. After a crash, :meth:`open`
loads the last saved index and re-applies the journal after its stamp.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from binsearch.codes.codecs import Codec, codec_from_config, make_codec
from binsearch.collection.coded_index import RESCORE_FACTOR, CodedIndex
from binsearch.collection.directory import (
    COLLECTION_FORMAT_VERSION,
    DEFAULT_MODEL,
    FORMAT_NAME,
    INDEX_DIR,
    LOCK,
    MANIFEST,
    SHARD_MAP,
    CollectionError,
    ReadOnlyLock,
    atomic_json,
    read_collection_manifest,
    take_lock,
)
from binsearch.collection.docstore import (
    DATABASE,
    DiskFull,
    DocStore,
    StoreCorruption,
)
from binsearch.collection.opening import check_wal, load_at_one_point, refuse_unfinished
from binsearch.collection.persistence import PersistenceMixin
from binsearch.collection.protocol import CollectionProtocol
from binsearch.collection.searching import SearchMixin
from binsearch.collection.types import (
    AddResult,
    SearchResult,
    content,
    load_encoder,
    unit_vectors,
)
from index import BinaryIndex, IndexFormatError

log = logging.getLogger("binsearch.collection")

KNOWN_DIMS = {DEFAULT_MODEL: 384}
#: Index changes (documents) after which a write starts a background snapshot.
SNAPSHOT_EVERY = 50_000
#: quick_check the database on open when it is smaller than this (it reads the file).
QUICK_CHECK_BYTES = 256 << 20

__all__ = [
    "RESCORE_FACTOR",
    "AddResult",
    "Collection",
    "CollectionError",
    "DiskFull",
    "SearchResult",
    "StoreCorruption",
    "read_collection_manifest",
    "FORMAT_NAME",
    "COLLECTION_FORMAT_VERSION",
    "INDEX_DIR",
    "LOCK",
    "MANIFEST",
    "SHARD_MAP",
    "IndexFormatError",
]


class Collection(SearchMixin, PersistenceMixin, CollectionProtocol):
    """Documents, their binary codes and the model that made them, in one directory.

    Use :meth:`create` or :meth:`open`; close with :meth:`close` (or ``with``).
    Thread-safe: searches run concurrently with each other and with writes.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        index: BinaryIndex,
        store: DocStore,
        lock_file: Any,
        encoder: Any = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.coded = CodedIndex(codec_from_config(manifest["codec"]), index)
        self.dim: int = int(manifest["dim"])
        self.model_name: str | None = manifest.get("model")
        self.store = store
        self._lock_file = lock_file
        self._encoder = encoder
        self._encoder_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._since_snapshot = 0
        self._snapshotting = False
        self._snapshot_thread: threading.Thread | None = None
        self._bulk = False
        self.snapshot_every = SNAPSHOT_EVERY
        self.closed = False
        #: What the last filtered search's filter did (fields, rows matched, time).
        self.last_filter: dict[str, Any] | None = None

    @property
    def codec(self) -> Codec:
        """The codec that writes this collection's codes."""
        return self.coded.codec

    @property
    def index(self) -> BinaryIndex:
        """The scan index of the codes (keys are the document store's keys)."""
        return self.coded.index

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        codec: str | Codec = "residual",
        bits: int = 2,
        model: str | None = DEFAULT_MODEL,
        dim: int | None = None,
        *,
        fsync: bool = True,
        encoder: Any = None,
        loading: bool = False,
    ) -> Collection:
        """Create an empty collection at ``path`` (a new or empty directory).

        Args:
            codec: ``"sign"``, ``"residual"`` or a codec object (e.g. a trained ``rbe``).
            bits: planes per code (bits per dimension) for a named codec.
            model: sentence-transformers model name or directory that embeds
                texts; ``None`` for a collection fed embeddings only (then give ``dim``).
            dim: embedding width; default the model's.
            encoder: an already loaded encoder (or a test fake) for ``model``.
            loading: the directory is born marked as a load in progress, which
                :meth:`bulk` clears when it finishes: a process killed before
                that leaves a directory :meth:`open` refuses, never a valid,
                empty (or partial) collection.
        """
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise CollectionError(f"{path} exists and is not empty; choose a new directory")
        model_path = None
        if model is not None:
            if encoder is None:
                from binsearch.encoder.model import Encoder

                encoder = Encoder(model)
            name = encoder.name
            if name != DEFAULT_MODEL and getattr(encoder, "path", None) is not None:
                model_path = str(Path(encoder.path).resolve())
            # The bundled model's width is known: creating needs no model load.
            known = KNOWN_DIMS.get(name) if type(encoder).__name__ == "Encoder" else None
            model_dim = known or int(encoder.dim)
            if dim is not None and dim != model_dim:
                raise CollectionError(f"the model {name} gives {model_dim}-d embeddings, not {dim}")
            dim = model_dim
        else:
            name = None
            if dim is None:
                raise CollectionError("a collection without a model needs dim=")
        if isinstance(codec, str):
            codec = make_codec(codec, int(dim), 1 if codec == "sign" else bits)
        if codec.dim != dim:
            raise CollectionError(f"the codec takes {codec.dim}-d embeddings, not {dim}")
        path.mkdir(parents=True, exist_ok=True)
        CodedIndex.new(codec, meta={"applied_seq": 0}).index.save(path / INDEX_DIR)
        store = DocStore(path / DATABASE, fsync=fsync)
        if loading:  # before collection.json exists: no instant where the directory looks done
            store.set_meta("bulk_in_progress", "1")
        store.close()
        manifest = {
            "format": FORMAT_NAME,
            "format_version": COLLECTION_FORMAT_VERSION,
            "model": name,
            "model_path": model_path,
            "dim": int(dim),
            "codec": codec.config(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_json(path / MANIFEST, manifest)  # last: its presence means "complete"
        lock_file = take_lock(path)
        try:
            return cls._open_locked(
                path, manifest, lock_file, True, None, fsync, True, encoder, unfinished_ok=loading
            )
        except BaseException:
            lock_file.close()
            raise

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        mmap: bool = True,
        *,
        model: str | None = None,
        fsync: bool = True,
        verify: bool = True,
        encoder: Any = None,
        readonly: bool = False,
    ) -> Collection:
        """Open a collection for reading and writing (one writing process per directory).

        Args:
            mmap: memory-map the index segments (instant open, shared page cache).
            model: the model's directory, if it moved since the collection was made.
            verify: check every index file's CRC-32 and the database's structure
                (the latter on databases under 256 MB; rows are always checked on read).
            encoder: an already loaded encoder (or a test fake) for the collection's model.
            readonly: search and read only, beside a process that may be writing
                (no lock taken; sees the writes committed before it opened).
        """
        path = Path(path)
        manifest = read_collection_manifest(path)
        lock_file = ReadOnlyLock() if readonly else take_lock(path)
        try:
            return cls._open_locked(path, manifest, lock_file, mmap, model, fsync, verify, encoder)
        except BaseException:
            lock_file.close()
            raise

    @classmethod
    def _open_locked(
        cls,
        path: Path,
        manifest: dict[str, Any],
        lock_file: Any,
        mmap: bool,
        model: str | None,
        fsync: bool,
        verify: bool,
        encoder: Any,
        unfinished_ok: bool = False,
    ) -> Collection:
        db_path = path / DATABASE
        if not db_path.is_file():
            raise StoreCorruption(f"{path}: {DATABASE} is missing")
        readonly = isinstance(lock_file, ReadOnlyLock)
        check_wal(path, db_path, readonly)
        store = DocStore(db_path, fsync=fsync, readonly=readonly)
        try:
            if not unfinished_ok:
                refuse_unfinished(path, store)
            if readonly:
                index = load_at_one_point(path, store, mmap, verify)
                refuse_unfinished(path, store)
            else:
                index = BinaryIndex.load(path / INDEX_DIR, mmap=mmap, verify=verify)
            if verify and store.size_bytes() < QUICK_CHECK_BYTES:
                store.quick_check()
            if encoder is not None and encoder.name != manifest.get("model"):
                raise CollectionError(
                    f"{path} was built with model {manifest.get('model')!r}, not {encoder.name!r}"
                )
            collection = cls(path, manifest, index, store, lock_file, encoder)
            if model is not None:
                collection._set_model(model)
            collection._replay()
            stored = store.count()  # read-only: at the same point of the log as the replay
            if stored != len(index):
                raise StoreCorruption(
                    f"{path}: the document database holds {stored} documents but the index "
                    f"{len(index)}; the collection is damaged"
                )
        except BaseException:
            store.close(checkpoint=False)  # a refused open changes nothing
            raise
        return collection

    def _replay(self) -> None:
        """Re-apply journal entries the saved index does not hold yet."""
        applied = int(self.index.meta.get("applied_seq", 0))
        index, planes, words = self.index, self.codec.planes, self.index.n_words
        replayed = 0
        for change in self.store.changes_after(applied):
            if change.op == "delete":
                index.remove(change.keys)
            else:
                n = len(change.keys)
                try:
                    codes = np.frombuffer(change.codes, np.uint64).reshape(n, planes, words)
                    scales = None
                    if change.scales is not None:
                        scales = np.frombuffer(change.scales, np.float32).reshape(n, planes)
                except (TypeError, ValueError):
                    raise StoreCorruption(
                        f"{self.store.path.name}: journal entry {change.seq} does not fit the "
                        "index's code shape (damaged)"
                    ) from None
                index.add(codes, change.keys, scales)
            replayed += 1
        self.replayed = replayed
        self._since_snapshot = replayed

    def _set_model(self, model: str) -> None:
        from binsearch.encoder.model import Encoder

        encoder = Encoder(model)
        if encoder.name != self.model_name:
            raise CollectionError(
                f"{self.path} was built with model {self.model_name!r}, not {encoder.name!r}"
            )
        self._encoder = encoder

    @property
    def encoder(self) -> Any:
        """The collection's text encoder, loaded on first use."""
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    self._encoder = load_encoder(self.manifest)
        return self._encoder

    def ready(self, timeout: float = 2.0) -> bool:
        """True while the collection is open (it has no remote parts to wait for)."""
        return not self.closed

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return (
            f"Collection({str(self.path)!r}, {len(self)} documents, codec "
            f"{self.codec.name} x{self.codec.planes}, model {self.model_name!r})"
        )

    # ------------------------------------------------------------------ write
    def embed(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """Embed texts with the collection's model: float32 ``(n, dim)``."""
        extra = {"progress": True} if progress else {}  # test fakes take no progress flag
        vectors = self.encoder.encode(list(texts), batch_size=batch_size, **extra)
        return self._check_embedded(vectors, len(texts))

    def add(
        self,
        ids: Sequence[str],
        embeddings: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        documents: Sequence[dict[str, Any]] | None = None,
        keys: np.ndarray | None = None,
    ) -> AddResult:
        """Add or replace documents; durable when it returns.

        Args:
            ids: unique external ids; an id already stored is replaced.
            embeddings: float32 ``(n, dim)``; default: the model embeds title + text.
            texts: each document's text (shorthand for ``documents=[{"text": t}]``).
            documents: ``{"title", "text", "metadata"}`` dicts (any may be missing).
            keys: int64 index keys for *new* ids (a sharded collection hands out
                global keys); default the next free keys.
        """
        self._check_writable()
        ids, documents, embeddings, keys = self._check_add(ids, embeddings, texts, documents, keys)
        n = len(ids)
        if n == 0:
            return AddResult(0, 0)
        if embeddings is None:
            embeddings = self.embed([content(d) for d in documents])
        vectors = unit_vectors(embeddings, n, self.dim, "embeddings")
        codes = self.codec.encode(vectors)
        return self.add_codes(ids, documents, codes.words, codes.scales, keys)

    def add_codes(
        self,
        ids: list[str],
        documents: list[dict[str, Any]],
        words: np.ndarray,
        scales: np.ndarray | None,
        keys: np.ndarray | None = None,
        *,
        stored_scales: bool = False,
    ) -> AddResult:
        """:meth:`add` for codes the codec already made (checked ids and documents).

        ``stored_scales``: the scales are as another index stored them (codes moved
        between collections, e.g. a split into shards): kept bit for bit. Only
        inside :meth:`bulk`.
        """
        n = len(ids)
        if stored_scales and not self._bulk:
            raise CollectionError("codes with stored scales are added only in a bulk load")
        with self._write_lock:
            if self._bulk:
                if keys is None:
                    raise CollectionError("a bulk load needs keys")
                self.store.bulk_insert(list(zip(keys.tolist(), ids, documents, strict=True)))
                self.index.add(words, keys, scales, stored_scales=stored_scales)
                return AddResult(n, 0, keys)
            stored, replaced = self.store.upsert(ids, documents, words, scales, keys)
            self.index.add(words, stored, scales)
            self._since_snapshot += n
        self._maybe_snapshot()
        return AddResult(n - replaced, replaced, np.asarray(stored, dtype=np.int64))

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id (absent ones ignored); durable when it returns. How many."""
        self._check_writable()
        if isinstance(ids, str):
            ids = [ids]
        with self._write_lock:
            keys = self.store.delete(list(ids))
            if len(keys):
                self.index.remove(keys)
                self._since_snapshot += len(keys)
        self._maybe_snapshot()
        return int(len(keys))

    @contextmanager
    def bulk(self) -> Iterator[Collection]:
        """Fast loading of an empty collection: no journal, one snapshot at the end.

        Inside the block :meth:`add` needs ``keys`` and new ids only. If the
        process dies inside it, :meth:`open` refuses the directory (the
        loading must be run again) rather than serving part of it.
        """
        self._check_open()
        if len(self):
            raise CollectionError("bulk loading needs an empty collection")
        self.store.set_meta("bulk_in_progress", "1")
        self._bulk = True
        try:
            yield self
        finally:
            self._bulk = False
        self.index.compact()  # one segment, not one per SEGMENT_ROWS rows: fewer to scan
        self.snapshot()
        with self.store._lock, self.store._transaction() as db:
            db.execute("DELETE FROM meta WHERE name = 'bulk_in_progress'")

    # ------------------------------------------------------------------ read
    def get(self, doc_id: str) -> dict[str, Any] | None:
        """The stored document ``{"id", "title", "text", "metadata"}`` or None."""
        self._check_open()
        return self.store.row_by_id(doc_id)

    def rescore(
        self, vectors: np.ndarray, keys: Sequence[np.ndarray], k: int
    ) -> list[SearchResult]:
        """The best ``k`` of each query's candidate ``keys`` by the float query (unit ``(nq, dim)``).

        The second phase of a sharded ``rescore=True`` search: each shard re-scores
        its own candidates exactly as one collection does (:meth:`CodedIndex.rescore`).
        """
        self._check_open()
        hits = [
            self.coded.rescore(v, np.asarray(ks, dtype=np.int64), k)
            if len(ks)
            else (np.empty(0, np.float32), np.empty(0, np.int64))
            for v, ks in zip(vectors, keys, strict=True)
        ]
        return self._with_rows(hits)

    def _with_rows(self, hits: list[tuple[np.ndarray, np.ndarray]]) -> list[SearchResult]:
        """Results with their document rows; hits deleted since the scan are dropped."""
        wanted = [ks for _, ks in hits]
        rows = self.store.rows(np.unique(np.concatenate([np.empty(0, np.int64), *wanted])))
        results = []
        for s, ks in hits:
            live = np.array([int(key) in rows for key in ks], dtype=bool)
            s, ks = s[live], ks[live]
            hit_rows = [rows[int(key)] for key in ks]
            results.append(SearchResult([r["id"] for r in hit_rows], s, ks, hit_rows))
        return results

    def warm(self, defer_measuring: bool = False) -> Callable[[], int] | None:
        """Compile (or load) the scan kernels and take the kernel choices now, and the write
        path's when writable: the first request then waits for none of it. Reads no row.

        With ``defer_measuring``, shapes this machine never measured stay on the exact
        popcount kernel until the returned callable measures them (None: none left).
        """
        self._check_open()
        chooser = self.coded.index.kernels
        if defer_measuring:
            chooser.deferred = True
        try:
            self.coded.warm(writes=not isinstance(self._lock_file, ReadOnlyLock))
        finally:
            if not chooser.pending:
                chooser.deferred = False
        return chooser.measure_pending if chooser.pending else None

    def close(self, snapshot: bool = True) -> None:
        """Snapshot pending changes (unless ``snapshot=False``) and release the directory."""
        if self.closed:
            return
        try:
            if snapshot and self._since_snapshot and not isinstance(self._lock_file, ReadOnlyLock):
                self.snapshot()
        finally:
            self.closed = True
            # A background snapshot still writing must finish before the lock is
            # released (another process may open the directory next).
            if self._snapshot_thread is not None:
                self._snapshot_thread.join()
            self.index.wait_for_compaction()
            self.store.close()
            self._lock_file.close()

    def _check_open(self) -> None:
        if self.closed:
            raise CollectionError("the collection is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if isinstance(self._lock_file, ReadOnlyLock):
            raise CollectionError(f"{self.path} was opened read-only")
