"""``binsearch upgrade DIR``: convert an index directory of an older binsearch into a collection.

The old layout: ``manifest.json`` + array files + ``documents.jsonl`` (the
generation written by ``binsearch index``), possibly later generations under
``generations/<n>/`` named by ``CURRENT.json``, and write logs ``wal/<n>.log``
(one ``<crc32 hex> <json>`` record per line) holding the writes after
generation ``n``. The conversion reads the generation in force, replays its
logs (a torn *last* record is dropped, as the old server did; damage before
valid records is refused), and writes a new collection beside it, which then
takes the directory's name; the old directory is kept as ``DIR.pre-upgrade``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from binsearch.codes.codecs import codec_from_config
from binsearch.collection.collection import Collection, CollectionError
from index import BinaryIndex, fsync_dir


def _records(log: Path) -> Iterator[dict[str, Any]]:
    lines = log.read_bytes().split(b"\n")
    last = len(lines) - 1 if lines[-1] == b"" else len(lines)
    for number, line in enumerate(lines[:last]):
        payload = line[9:]
        ok = len(line) > 9 and line[8:9] == b" "
        try:
            ok = ok and int(line[:8], 16) == zlib.crc32(payload)
        except ValueError:
            ok = False
        if not ok:
            if number == last - 1 or (number == last and lines[-1] != b""):
                return  # a torn last record: never acknowledged
            raise CollectionError(
                f"{log}: record {number + 1} is damaged and valid records follow it; "
                "refusing to convert (they would be lost)"
            )
        yield json.loads(payload)


#: In ``DIR.upgrading/``: the file that says the folder is a work folder of ``binsearch upgrade``.
MARKER = ".binsearch-upgrade"
#: What a work folder of an earlier binsearch (the collection written directly in it) held.
_COLLECTION_FILES = {"collection.json", "collection.lock", "documents.db", "index"}


def _own_work(work: Path) -> bool:
    """Whether ``work`` (``DIR.upgrading``) was made by an ``upgrade`` run (this or an older one)."""
    if (work / MARKER).is_file():
        return True
    names = {p.name for p in work.iterdir()}
    return names <= _COLLECTION_FILES | {"documents.db-wal", "documents.db-shm"}


def _resume(root: Path, work: Path, kept: Path) -> Path | None:
    """Finish or clean up a killed run; the kept directory when it was finished, else None.

    A run is killed before its first rename (the old directory in place: the
    work folder is removed and the conversion runs again), between its two
    renames (the old directory already at ``DIR.pre-upgrade``: the finished
    collection takes the name), or after both (only the work folder is left).
    """
    if not work.exists():
        if not root.exists() and kept.is_dir():
            raise CollectionError(f"{root} is missing; its old directory is at {kept}")
        return None
    if not _own_work(work):
        raise CollectionError(
            f"{work} exists and was not made by `binsearch upgrade`; move it away first"
        )
    finished = work / "collection"
    if not root.exists() and kept.is_dir() and (finished / "collection.json").is_file():
        os.replace(finished, root)  # killed between the two renames: the second one now
        fsync_dir(root.parent)
    if (root / "collection.json").is_file() and kept.is_dir():
        shutil.rmtree(work)
        return kept
    shutil.rmtree(work)  # killed before the old directory moved: start over
    fsync_dir(work.parent)
    return None


def upgrade(path: str | os.PathLike[str]) -> Path:
    """Convert the old index directory ``path`` in place; returns where the old one was kept.

    The new collection is written in the work folder ``DIR.upgrading/collection``
    and takes the directory's name by two renames, each made durable. A run
    killed at any point is finished or cleaned up by the next run.
    """
    root = Path(path)
    work = root.with_name(root.name + ".upgrading")
    kept = root.with_name(root.name + ".pre-upgrade")
    done = _resume(root, work, kept)
    if done is not None:
        return done
    if (root / "collection.json").is_file():
        raise CollectionError(f"{root} is already a collection")
    generation = 0
    if (root / "CURRENT.json").is_file():
        generation = int(json.loads((root / "CURRENT.json").read_text())["generation"])
    elif (root / "generations").is_dir() and any((root / "generations").iterdir()):
        raise CollectionError(
            f"{root}: generations exist but CURRENT.json, which names the one in force, "
            "is missing; refusing to guess"
        )
    folder = root if generation == 0 else root / "generations" / f"{generation:08d}"
    base = BinaryIndex.load(folder)
    meta = base.meta
    if "codec" not in meta or "model" not in meta:
        raise CollectionError(f"{root}: not built by `binsearch index` (no model/codec)")
    codec = codec_from_config(meta["codec"])
    rows: dict[int, dict[str, Any]] = {}
    with open(folder / meta.get("documents", "documents.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rows[int(row["key"])] = row
    keys = np.array(sorted(rows), dtype=np.int64)
    codes, scales = base.get(keys)
    docs = {
        rows[int(k)]["id"]: (int(k), rows[int(k)], codes[i], None if scales is None else scales[i])
        for i, k in enumerate(keys)
    }
    logs = (
        sorted(int(p.stem) for p in (root / "wal").glob("*.log") if p.stem.isdigit())
        if (root / "wal").is_dir()
        else []
    )
    for number in logs:
        if number < generation:
            continue
        for record in _records(root / "wal" / f"{number:08d}.log"):
            if record["op"] == "delete":
                for doc_id in record["ids"]:
                    docs.pop(doc_id, None)
                continue
            n = len(record["docs"])
            words = np.frombuffer(base64.b64decode(record["codes"]), np.uint64)
            words = words.reshape(n, base.planes, base.n_words)
            sc = None
            if record.get("scales") is not None:
                sc = np.frombuffer(base64.b64decode(record["scales"]), np.float32).reshape(n, -1)
            for j, row in enumerate(record["docs"]):
                docs[row["id"]] = (int(row["key"]), row, words[j], None if sc is None else sc[j])
    model = meta["model"] if meta["model"] == "all-MiniLM-L6-v2" else meta.get("model_path")
    from binsearch.encoder.model import Encoder

    encoder = Encoder(model)
    work.mkdir()
    (work / MARKER).write_text(f"binsearch upgrade of {root.name}\n")
    fsync_dir(work.parent)
    target = work / "collection"
    collection = Collection.create(
        target, codec, codec.planes, model, encoder=encoder, loading=True
    )
    ordered = sorted(docs.values(), key=lambda d: d[0])
    with collection, collection.bulk():
        for start in range(0, len(ordered), 10_000):
            part = ordered[start : start + 10_000]
            collection.add_codes(
                [d[1]["id"] for d in part],
                [
                    {
                        "title": d[1].get("title", ""),
                        "text": d[1].get("text", ""),
                        "metadata": d[1].get("metadata"),
                    }
                    for d in part
                ],
                np.stack([d[2] for d in part]),
                None if part[0][3] is None else np.stack([d[3] for d in part]),
                np.array([d[0] for d in part], dtype=np.int64),
            )
    os.replace(root, kept)
    fsync_dir(root.parent)
    os.replace(target, root)
    fsync_dir(root.parent)
    shutil.rmtree(work)
    return kept
