"""The collection directory on disk: its names, its manifest and the writer's lock."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

from binsearch.collection.docstore import StoreCorruption
from index import atomic_write, fsync_dir

FORMAT_NAME = "binsearch-collection"
COLLECTION_FORMAT_VERSION = 1
MANIFEST = "collection.json"
INDEX_DIR = "index"
LOCK = "collection.lock"
SHARD_MAP = "shards.json"
DEFAULT_MODEL = "all-MiniLM-L6-v2"


class CollectionError(ValueError):
    """A collection directory that cannot be used as asked (one-line message)."""


def atomic_json(path: Path, value: dict[str, Any]) -> None:
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    fsync_dir(path.parent)


def read_collection_manifest(path: Path) -> dict[str, Any]:
    """``collection.json`` of ``path``, or a one-line error saying what ``path`` is instead."""
    file = path / MANIFEST
    if not file.is_file():
        if (path / SHARD_MAP).is_file():
            raise CollectionError(
                f"{path} is a sharded collection; open it with "
                "binsearch.distributed.ShardedCollection.open (or `binsearch serve --ray`)"
            )
        if (path / "manifest.json").is_file() or (path / "CURRENT.json").is_file():
            raise CollectionError(
                f"{path} is an index directory of an older binsearch (documents.jsonl); "
                f"convert it with `binsearch upgrade {path}`"
            )
        if not path.exists():
            raise CollectionError(f"{path} does not exist")
        raise CollectionError(f"{path} is not a binsearch collection (no {MANIFEST})")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreCorruption(f"{file}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreCorruption(f"{file}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != COLLECTION_FORMAT_VERSION:
        raise CollectionError(
            f"{path}: collection format {manifest.get('format_version')}, this binsearch "
            f"reads {COLLECTION_FORMAT_VERSION}"
        )
    for key in ("dim", "codec"):
        if key not in manifest:
            raise StoreCorruption(f"{file}: no {key!r}")
    return manifest


class ReadOnlyLock:
    """The lock a read-only collection does not hold."""

    def close(self) -> None:
        pass


def take_lock(path: Path) -> Any:
    # Two processes writing one directory would each miss the other's changes.
    # The kernel drops the lock when the process dies, even by SIGKILL.
    lock_file = open(path / LOCK, "a")  # noqa: SIM115 -- held for the collection's life
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise CollectionError(
            f"{path} is open in another process (it holds {LOCK}); close that one first"
        ) from None
    return lock_file
