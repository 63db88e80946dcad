"""Opening a collection directory: the WAL check, the unfinished-load refusal, and a
read-only open at one consistent point of the log beside a live writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from binsearch.collection.directory import INDEX_DIR, CollectionError, writer_alive
from binsearch.collection.docstore import DocStore, StoreCorruption
from binsearch.collection.wal import check_sqlite_wal
from index import BinaryIndex, IndexFormatError

#: Tries of a read-only open whose index generation a snapshot replaced meanwhile.
READ_RETRIES = 50


def check_wal(path: Path, db_path: Path, readonly: bool) -> None:
    """:func:`check_sqlite_wal`, but a live writer's log is not judged by a reader.

    A reader beside a live writer may read a frame the writer is appending;
    that writer's SQLite owns the log (the check is for recovery after a crash,
    which the writer's own open did).
    """
    try:
        check_sqlite_wal(db_path)
    except StoreCorruption:
        if readonly and writer_alive(path):
            return
        raise


def refuse_unfinished(path: Path, store: DocStore) -> None:
    if store.get_meta("bulk_in_progress"):
        raise CollectionError(
            f"indexing into {path} was interrupted before it finished (or is still running); "
            "delete the directory and run `binsearch index` again"
        )


def _index_generation(folder: Path) -> Any:
    try:
        return json.loads((folder / "manifest.json").read_text()).get("generation")
    except (OSError, ValueError, AttributeError):
        return None


def load_at_one_point(path: Path, store: DocStore, mmap: bool, verify: bool) -> BinaryIndex:
    """The saved index, with ``store`` pinned at a point of the log whose journal extends it.

    Load the index (generation G, holding exactly the changes up to its
    ``applied_seq``), then pin the database: every change G holds is committed
    before the pin, so the pin sees them all; if a later snapshot dropped
    journal entries G lacks before the pin, or removed G's files while they
    were read, try again with the newer generation. The result never mixes two
    points of the log, and a live collection is never called damaged.
    """
    folder = path / INDEX_DIR
    for _ in range(READ_RETRIES):
        store.unpin()
        generation = _index_generation(folder)
        try:
            index = BinaryIndex.load(folder, mmap=mmap, verify=verify)
        except (IndexFormatError, OSError) as exc:
            if _index_generation(folder) == generation:
                if isinstance(exc, IndexFormatError):
                    raise  # not a race with a snapshot: the files are damaged
                raise IndexFormatError(f"{folder}: {exc}") from None
            continue
        store.pin()
        if store.journal_complete_after(int(index.meta.get("applied_seq", 0))):
            return index
    raise CollectionError(
        f"{path}: the writer saved {READ_RETRIES} snapshots while this read-only open read "
        "one; retry"
    )
