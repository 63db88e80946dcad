"""The shard map: which directories make a sharded collection, and which shard owns an id.

A sharded collection directory holds ``shards.json`` and one ordinary
collection directory per shard (``shard-000``, ``shard-001``, ...). The map
records the shards' relative paths, the routing function, the collection's
configuration (codec, bits, model, dim) and the high-water mark of the global
int64 key space, so that keys are never handed out twice, even after a crash.

Routing is a stable hash of the id's UTF-8 bytes (BLAKE2b, 8 bytes, little
endian) fed to Lamping and Veach's jump consistent hash. Python's ``hash`` is
salted per process, so it would send one id to different shards from two
processes. Jump hash (rather than ``h % N``) moves only ``1/(N+1)`` of the ids
when a map grows from N to N+1 shards, which keeps a future re-shard cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SHARD_MAP = "shards.json"
MAP_FORMAT = "binsearch-sharded-collection"
MAP_VERSION = 1
ROUTING = "blake2b64-jump"
#: Keys reserved per write of the map: one small fsync'd write per 2^16 new documents.
KEY_BLOCK = 1 << 16


def stable_hash(id_: str) -> int:
    """64-bit hash of an id, the same in every process and on every machine."""
    digest = hashlib.blake2b(id_.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def jump_hash(key: int, buckets: int) -> int:
    """Lamping & Veach's jump consistent hash: bucket in ``[0, buckets)`` of a 64-bit key.

    Growing ``buckets`` by one moves each key with probability ``1/(buckets+1)``,
    always to the new bucket.

    Example:
        >>> [jump_hash(k, 4) for k in (0, 1, 2**63)]
        [0, 0, 3]
    """
    if buckets <= 0:
        raise ValueError(f"buckets must be positive, got {buckets}")
    b, j = -1, 0
    key &= 0xFFFFFFFFFFFFFFFF
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def route(ids: Sequence[str], shards: int) -> np.ndarray:
    """Owning shard of each id, int64 ``(len(ids),)`` in ``[0, shards)``."""
    return np.fromiter((jump_hash(stable_hash(i), shards) for i in ids), np.int64, len(ids))


def is_sharded(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a sharded collection directory (holds a shard map)."""
    return (Path(path) / SHARD_MAP).is_file()


class ShardMapError(ValueError):
    """A shard map that is missing, damaged, or of another format."""


@dataclass
class ShardMap:
    """The contents of ``shards.json``.

    ``shards``: shard directories relative to the map's folder, in routing order.
    ``config``: what every shard was created with (``codec``, ``bits``, ``model``, ``dim``).
    ``reserved_keys``: every global key below it may have been handed out; a
    coordinator that opens the map starts handing out keys from here.
    """

    shards: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    reserved_keys: int = 0
    routing: str = ROUTING

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ShardMap:
        file = Path(path) / SHARD_MAP
        try:
            raw = json.loads(file.read_text())
        except FileNotFoundError:
            raise ShardMapError(f"{path} is not a sharded collection (no {SHARD_MAP})") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ShardMapError(f"{file}: unreadable shard map ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != MAP_FORMAT:
            raise ShardMapError(f"{file}: not a binsearch shard map")
        if raw.get("version") != MAP_VERSION:
            raise ShardMapError(
                f"{file}: shard map version {raw.get('version')}, this binsearch reads {MAP_VERSION}"
            )
        if raw.get("routing") != ROUTING:
            raise ShardMapError(f"{file}: unknown routing {raw.get('routing')!r}")
        shards = raw.get("shards")
        if (
            not isinstance(shards, list)
            or not shards
            or not all(isinstance(s, str) for s in shards)
        ):
            raise ShardMapError(f"{file}: 'shards' must be a non-empty list of directories")
        return cls(list(shards), dict(raw.get("config", {})), int(raw.get("reserved_keys", 0)))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the map atomically (temp file, fsync, rename, fsync of the folder)."""
        folder = Path(path)
        body = {
            "format": MAP_FORMAT,
            "version": MAP_VERSION,
            "routing": self.routing,
            "shards": self.shards,
            "config": self.config,
            "reserved_keys": self.reserved_keys,
        }
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".shards-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(body, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / SHARD_MAP)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def shard_paths(self, path: str | os.PathLike[str]) -> list[Path]:
        """Absolute shard directories (resolved against the map's folder)."""
        root = Path(path).resolve()
        return [root / s for s in self.shards]


def shard_names(shards: int) -> list[str]:
    """Directory names of ``shards`` shards: ``shard-000``, ``shard-001``, ..."""
    return [f"shard-{i:03d}" for i in range(shards)]
