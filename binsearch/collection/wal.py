"""The check of SQLite's write-ahead log made before a collection's database is opened.

SQLite's own write-ahead log checksums every frame but, on opening, silently
ignores every frame after the first damaged one (and the whole log when its
header is damaged): acknowledged writes vanish without a word.
:func:`check_sqlite_wal` refuses such a log instead; only a torn tail is cut.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from binsearch.collection.docstore import StoreCorruption

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
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return
    if len(data) < 32:  # empty (a checkpoint truncated it), or a header never written
        return
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
