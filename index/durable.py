"""Durable files: one fsync-then-rename writer, directory fsync, checksummed reads.

Everyone who replaces a file that must survive a crash (index segments and
manifests, the vector store, the service's documents and ``CURRENT`` pointer,
the pipeline's outputs) writes it with :func:`atomic_write` and then calls
:func:`fsync_dir` on its directory once all renames are done::

    size, crc = atomic_write(folder / "manifest.json", lambda f: f.write(text.encode()))
    fsync_dir(folder)

A crash leaves either the old file or the new one, never a torn one: the bytes
go to a hidden temporary name, are fsynced, and only then renamed over the
target (``os.replace`` is atomic on POSIX); the rename itself is durable once
the directory is fsynced.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


class IndexFormatError(ValueError):
    """An index directory that cannot be read: missing, damaged, or another format."""


class ChecksumWriter:
    """A write-only file wrapper that counts bytes and a CRC-32 on the way through."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.size, self.crc = f, 0, 0

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self.size += view.nbytes
        return self.f.write(view)


def atomic_write(target: str | os.PathLike[str], write: Callable[[Any], Any]) -> tuple[int, int]:
    """Replace ``target`` by what ``write(f)`` writes; return ``(bytes, crc32)`` of it.

    ``f`` is a binary file-like object (``f.write(bytes)``; ``np.save(f, a)``
    works). The data goes to ``.<name>.tmp`` beside the target, is flushed and
    fsynced, and is renamed over ``target``. Call :func:`fsync_dir` on the
    directory afterwards (once for several files) to make the rename durable.
    If ``write`` raises, the target is untouched and the temporary file removed.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            writer = ChecksumWriter(f)
            write(writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return writer.size, writer.crc


def update_json_file(
    target: str | os.PathLike[str], update: Callable[[dict[str, Any]], None]
) -> None:
    """Read the JSON object in ``target`` (an empty one if it is missing, unreadable or
    not an object), let ``update`` change it in place, and write it back atomically.

    For the per-machine caches (kernel and precision choices), which several processes
    may write: each keeps the others' entries. Raises OSError when it cannot write.
    """
    target = Path(target)
    try:
        data = json.loads(target.read_text())
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    update(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, sort_keys=True)
    atomic_write(target, lambda f: f.write(text.encode()))


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync directory ``path``: renames and new entries in it are durable once this returns."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_crc32(file: str | os.PathLike[str]) -> int:
    """CRC-32 of a whole file, read in 16 MiB chunks."""
    crc = 0
    with open(file, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def check_file(file: Path, entry: dict[str, Any], verify: bool) -> None:
    """Size (always) and CRC-32 (if ``verify``) of ``file`` against its manifest entry.

    ``entry`` is ``{"bytes": int, "crc32": int, ...}`` as :func:`atomic_write`
    returned them; raises :class:`IndexFormatError` on any mismatch.
    """
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise IndexFormatError(f"{file}: missing ({exc})") from exc
    if size != entry.get("bytes"):
        raise IndexFormatError(
            f"{file}: {size} bytes, manifest says {entry.get('bytes')} (truncated or replaced)"
        )
    if verify and file_crc32(file) != entry.get("crc32"):
        raise IndexFormatError(f"{file}: checksum mismatch, the file is corrupted")
