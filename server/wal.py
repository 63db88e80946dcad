"""Append-only write-ahead log: one checksummed JSON record per line, fsynced.

A record is ``<crc32 as 8 hex digits> <json>\\n``. A write is acknowledged only
after its record is on disk, so after a crash every acknowledged write is in the
log; a record torn by the crash fails its checksum and, being last, was never
acknowledged: replay stops there and cuts it off.

Logs are numbered by the snapshot generation they apply on top of
(``wal/00000003.log`` holds the writes after generation 3).
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("binsearch.server")


def _encode(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def _decode(line: bytes) -> dict[str, Any] | None:
    """The record on ``line``, or None if it is torn or damaged."""
    if len(line) < 10 or not line.endswith(b"\n") or line[8:9] != b" ":
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """The log files under ``folder``; appends go to the newest one.

    Not thread-safe: the store calls it under its write lock.
    """

    def __init__(self, folder: Path, fsync: bool = True) -> None:
        self.folder = Path(folder)
        self.fsync = fsync
        self._file: Any = None
        self.number = -1
        self.records = 0  # appended since the last rotation, for the snapshot trigger

    def path(self, number: int) -> Path:
        return self.folder / f"{number:08d}.log"

    def numbers(self) -> list[int]:
        """Numbers of the log files present, ascending."""
        out = []
        if not self.folder.is_dir():
            return out
        for p in self.folder.glob("*.log"):
            if p.stem.isdigit():
                out.append(int(p.stem))
        return sorted(out)

    def replay(self, since: int) -> Iterator[dict[str, Any]]:
        """Records of every log numbered ``>= since``, in order; cuts off a torn tail."""
        for number in self.numbers():
            if number < since:
                continue
            path = self.path(number)
            good = 0
            with open(path, "rb") as f:
                for line in f:
                    record = _decode(line)
                    if record is None:
                        log.warning(
                            json.dumps(
                                {
                                    "event": "wal_torn_record",
                                    "file": path.name,
                                    "offset": good,
                                    "dropped_bytes": path.stat().st_size - good,
                                }
                            )
                        )
                        break
                    good += len(line)
                    yield record
            if good != path.stat().st_size:
                with open(path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())

    def open(self, number: int) -> None:
        """Append to log ``number`` from now on (created if missing)."""
        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.number = number
        self._file = open(self.path(number), "ab")
        fsync_dir(self.folder)
        self.records = 0

    def append(self, record: dict[str, Any]) -> int:
        """Write one record and make it durable; returns its size in bytes."""
        data = _encode(record)
        start = self._file.tell()
        try:
            self._file.write(data)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        except BaseException:
            # A partial record must not stay in front of later, acknowledged ones.
            self._file.truncate(start)
            raise
        self.records += 1
        return len(data)

    def drop_before(self, number: int) -> None:
        """Delete the logs that a snapshot of generation ``number`` made redundant."""
        for n in self.numbers():
            if n < number:
                self.path(n).unlink(missing_ok=True)
        fsync_dir(self.folder)

    def size(self) -> int:
        """Bytes in all log files present."""
        return sum(self.path(n).stat().st_size for n in self.numbers())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
