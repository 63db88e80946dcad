"""How a :class:`~binsearch.collection.collection.Collection` saves itself and reports on itself.

The persistence half of ``Collection`` (a mixin, as :mod:`binsearch.collection.searching`
is its search half): snapshots (the index's changed segment files, stamped with the
journal number they cover, then the journal dropped up to it), the background
snapshot every ``snapshot_every`` changes, ``stats()`` and the full ``check()``.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from typing import Any

from binsearch.collection.directory import INDEX_DIR
from binsearch.collection.docstore import DiskFull, StoreCorruption

log = logging.getLogger("binsearch.collection")


class PersistenceMixin:
    """``snapshot``, ``stats`` and ``check`` of a ``Collection``."""

    def _maybe_snapshot(self) -> None:
        if self._since_snapshot < self.snapshot_every or self._snapshotting:
            return
        self._snapshotting = True
        self._snapshot_thread = threading.Thread(target=self._background_snapshot, daemon=True)
        self._snapshot_thread.start()

    def _background_snapshot(self) -> None:
        try:
            self.snapshot()
        except Exception as exc:  # the journal still holds every write; retried later
            log.error(json.dumps({"event": "snapshot_failed", "error": str(exc)}))
        finally:
            self._snapshotting = False

    def snapshot(self) -> dict[str, Any]:
        """Save what changed since the last snapshot; returns what it did.

        Writes the index's new segment files and tombstone masks and a new
        manifest generation (stamped with the journal number it covers), then
        drops that much of the journal and checkpoints the database. Writes go
        on meanwhile. Returns ``{"generation", "documents", "seconds", "bytes_written"}``.
        """
        self._check_writable()
        started = time.perf_counter()
        with self._snapshot_lock:
            folder = self.path / INDEX_DIR
            before = {p.name: p.stat().st_size for p in folder.iterdir()}
            with self._write_lock:
                # The index is sealed at exactly the change `seq`: a reader that
                # loads this generation and replays the journal after `seq`, at
                # one point of the log, sees exactly that point (never a later
                # code under an earlier document row).
                seq = self.store.last_seq()
                self.index.meta["applied_seq"] = seq
                meta = dict(self.index.meta)
                sealed = self.index.seal()
                pending = self._since_snapshot
                self._since_snapshot = 0
            try:
                self.index.save(folder, sealed=sealed, meta=meta)
            except BaseException as exc:
                with self._write_lock:
                    self._since_snapshot += pending
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    full = DiskFull(
                        "the disk is full: the snapshot was not written (every write is "
                        "still durable in the journal); free space and retry"
                    )
                    full.errno = errno.ENOSPC
                    raise full from None
                raise
            self.store.drop_changes(seq)
            after = {p.name: p.stat().st_size for p in folder.iterdir()}
            written = sum(size for name, size in after.items() if name not in before)
            written += after.get("manifest.json", 0)
        info = {
            "generation": int(json.loads((folder / "manifest.json").read_text())["generation"]),
            "documents": len(self),
            "seconds": round(time.perf_counter() - started, 4),
            "bytes_written": int(written),
        }
        log.info(json.dumps({"event": "snapshot", **info}))
        return info

    def stats(self) -> dict[str, Any]:
        """Counts and sizes: documents, bits per vector, bytes of index and database.

        The keys are :data:`binsearch.collection.protocol.STATS_KEYS`; ``generation``
        is the journal number the last snapshot covers.
        """
        index_bytes = 0
        for file in (self.path / INDEX_DIR).iterdir():
            try:
                index_bytes += file.stat().st_size
            except FileNotFoundError:  # a snapshot renamed or removed it meanwhile
                pass
        return {
            "documents": len(self),
            "dim": self.dim,
            "model": self.model_name,
            "codec": self.codec.config() if self.codec.name != "rbe" else {"codec": "rbe"},
            "bits_per_vector": self.index.bits_per_vector,
            "index_bytes": int(index_bytes),
            "database_bytes": int(self.store.size_bytes()),
            "segments": self.index.segment_count,
            "pending_changes": int(self._since_snapshot),
            "generation": int(self.index.meta.get("applied_seq", 0)),
            "shards": 1,
            "per_shard": None,
        }

    def check(self) -> dict[str, Any]:
        """Full consistency check: database structure, every row's and journal entry's
        checksum, keys vs index."""
        self.store.quick_check(full=True)
        self.store.check_journal()
        keys = self.store.all_keys()
        if len(keys):
            self.store.rows(keys)  # raises on a damaged row
        missing = keys[~self.index.contains(keys)] if len(keys) else keys
        if len(missing) or len(keys) != len(self.index):
            raise StoreCorruption(
                f"{self.path}: {len(missing)} stored documents have no code; "
                f"database {len(keys)} vs index {len(self.index)}"
            )
        return {"documents": int(len(keys)), "ok": True}
