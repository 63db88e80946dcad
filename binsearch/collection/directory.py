"""The collection directory on disk: its names, its manifest and the writer's lock."""

from __future__ import annotations

import fcntl
import json
import os
import time
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


class WriterLock:
    """The one writer's hold on a collection directory.

    An exclusive ``flock`` on the directory itself, which cannot be unlinked
    from under the holder (deleting ``collection.lock`` used to let a second
    writer in), and, for binsearch versions that look only there, on
    ``collection.lock``. The kernel drops both when the process dies, even by
    SIGKILL.
    """

    def __init__(self, directory_fd: int, lock_file: Any) -> None:
        self.directory_fd, self.lock_file = directory_fd, lock_file

    def close(self) -> None:
        if self.lock_file is not None:
            self.lock_file.close()
            self.lock_file = None
        if self.directory_fd >= 0:
            os.close(self.directory_fd)  # closing the descriptor releases its flock
            self.directory_fd = -1


def _flock(fd: int, exclusive: bool, tries: int = 1) -> bool:
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    for attempt in range(tries):
        try:
            fcntl.flock(fd, mode)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.005)
    return False


def take_lock(path: Path) -> WriterLock:
    """Take the writer's lock on collection directory ``path``, or a one-line refusal."""
    # Two processes writing one directory would each miss the other's changes.
    # A reader probing the lock holds it shared for microseconds: a few tries.
    directory_fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    lock_file = None
    try:
        held = _flock(directory_fd, exclusive=True, tries=20)
        if held:
            lock_file = open(path / LOCK, "a")  # noqa: SIM115 -- held for the collection's life
            held = _flock(lock_file.fileno(), exclusive=True, tries=20)
    except BaseException:
        os.close(directory_fd)
        if lock_file is not None:
            lock_file.close()
        raise
    if not held:
        os.close(directory_fd)
        if lock_file is not None:
            lock_file.close()
        raise CollectionError(
            f"{path} is open in another process (it holds the directory's lock); "
            "close that one first"
        )
    return WriterLock(directory_fd, lock_file)


def writer_alive(path: Path) -> bool:
    """Whether a process holds the writer's lock on ``path`` now (a probe; takes nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        if _flock(fd, exclusive=False):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)
