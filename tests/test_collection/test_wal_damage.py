"""Issue 23, fault 1: a changed byte in the SQLite WAL never silently loses acknowledged writes.

The image is what a SIGKILL leaves: 50 documents snapshotted, then 10 single
adds that live only in the WAL. SQLite alone opens each damaged log below and
drops acknowledged writes without a word (checked first, so the fault is
real); :meth:`Collection.open` must refuse in one line that says how to
accept the loss, and accepting it (the truncation the message names) opens.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_collection_faults import DIM, crash_image, one_line, unit

from binsearch import Collection
from binsearch.collection.docstore import StoreCorruption


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wal")
    rng = np.random.default_rng(0)
    c = Collection.create(root / "live", "residual", 2, model=None, dim=DIM)
    c.add([f"a{i}" for i in range(50)], embeddings=unit(rng, 50))
    c.snapshot()
    for i in range(10):
        c.add([f"b{i}"], embeddings=unit(rng, 1))
    img = crash_image(c.path, root / "image")
    c.close(snapshot=False)
    return img


def frames(wal: Path) -> tuple[int, int]:
    page = struct.unpack(">I", wal.read_bytes()[8:12])[0]
    return page, (wal.stat().st_size - 32) // (24 + page)


def damaged(image: Path, tmp_path: Path, where: str) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(image, copy)
    wal = copy / "documents.db-wal"
    page, n = frames(wal)
    offset = {
        "header checkpoint number": 12,
        "header salt-1": 16,
        "header salt-2": 20,
        "header checksum": 24,
        "second frame's salt": 32 + (24 + page) + 8,
        "last frame's page": 32 + (n - 1) * (24 + page) + 24 + 100,
        "last frame's commit size": 32 + (n - 1) * (24 + page) + 7,
    }[where]
    data = bytearray(wal.read_bytes())
    data[offset] ^= 0xFF
    wal.write_bytes(bytes(data))
    return copy


def sqlite_count(path: Path) -> int:
    with sqlite3.connect(path / "documents.db") as db:
        return db.execute("SELECT count(*) FROM documents").fetchone()[0]


WHERE = [
    "header checkpoint number",
    "header salt-1",
    "header salt-2",
    "header checksum",
    "second frame's salt",
    "last frame's page",
    "last frame's commit size",
]


@pytest.mark.parametrize("where", WHERE)
def test_a_changed_wal_byte_is_refused_never_silently_dropped(image, tmp_path, where):
    copy = damaged(image, tmp_path, where)
    plain = crash_image(copy, tmp_path / "plain")
    assert sqlite_count(plain) < 60  # the fault is real: SQLite alone drops acknowledged writes
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file() and p.suffix != ".lock"}
    with pytest.raises(StoreCorruption) as caught:
        Collection.open(copy)
    message = one_line(caught.value)
    assert "documents.db-wal" in message and "truncate -s" in message
    assert {
        p.name: p.read_bytes() for p in copy.iterdir() if p.is_file() and p.suffix != ".lock"
    } == before
    # The way out the message names: accept the loss, and the collection opens whole.
    size = int(re.search(r"truncate -s (\d+)", message).group(1))
    subprocess.run(["truncate", "-s", str(size), str(copy / "documents.db-wal")], check=True)
    with Collection.open(copy) as c:
        assert 50 <= len(c) < 60 and c.check()["ok"]


def test_the_undamaged_image_opens_with_every_write(image, tmp_path):
    shutil.copytree(image, tmp_path / "copy")
    with Collection.open(tmp_path / "copy") as c:
        assert len(c) == 60 and c.get("b9") is not None


@pytest.mark.parametrize("cut", [1, 24, 2000, 4119])
def test_a_torn_tail_is_dropped(image, tmp_path, cut):
    copy = tmp_path / "copy"
    shutil.copytree(image, copy)
    wal = copy / "documents.db-wal"
    with open(wal, "r+b") as f:  # the file ends inside the last frame: never acknowledged
        f.truncate(wal.stat().st_size - cut)
    with Collection.open(copy) as c:
        assert len(c) in (59, 60) and c.check()["ok"]
        assert all(c.get(f"b{i}") is not None for i in range(9))
