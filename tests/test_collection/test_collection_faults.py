"""A collection's files damaged or abandoned mid-work: refused in one line, or recovered exactly.

A "crash image" is a copy of a collection directory taken while its process
still has it open (SQLite's committed WAL frames and every saved index file
are on disk; the lock and SQLite's shared-memory index are not copied, as the
kernel drops the one and SQLite rebuilds the other after a real crash). Opening
the image is what a restart after SIGKILL at that instant would do.

The state machine at the end checks add / replace / delete / snapshot /
reopen / crash (also at every fsync inside a snapshot) against a plain dict and
a numpy brute-force search over the surviving documents' code values.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from binsearch import Collection
from binsearch.collection.collection import CollectionError
from binsearch.collection.docstore import StoreCorruption
from index import IndexFormatError, code_values

DIM = 16
NOT_COPIED = {"collection.lock", "documents.db-shm"}


def crash_image(src: Path, dst: Path) -> Path:
    """Copy of ``src`` as a SIGKILL at this instant would leave it on disk."""
    for file in src.rglob("*"):
        if file.is_file() and file.name not in NOT_COPIED:
            target = dst / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    return dst


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def listing(path: Path) -> dict[str, int]:
    """Every file's size, but the lock (an open makes it before it reads anything)."""
    files = (p for p in path.rglob("*") if p.is_file() and p.name != "collection.lock")
    return {str(p.relative_to(path)): p.stat().st_size for p in files}


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message, repr(message)
    return message


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, list[str]]:
    """A crash image holding 8 documents written by 8 commits (8+ WAL frames, no checkpoint)."""
    c = Collection.create(tmp_path / "live", "residual", 2, model=None, dim=DIM)
    vectors = unit(np.random.default_rng(0), 8)
    ids = [f"d{i}" for i in range(8)]
    for i, doc_id in enumerate(ids):
        c.add([doc_id], embeddings=vectors[i : i + 1], texts=[f"text of {doc_id}"])
    image = crash_image(c.path, tmp_path / "image")
    c.close(snapshot=False)
    return image, ids


# ---------------------------------------------------------------- item 4: the SQLite WAL


def wal_frames(wal: Path) -> tuple[int, int]:
    """(page size, number of whole frames) of a SQLite WAL file."""
    page = struct.unpack(">I", wal.read_bytes()[8:12])[0]
    return page, (wal.stat().st_size - 32) // (24 + page)


def test_a_flipped_byte_mid_wal_is_refused_in_one_line(written, tmp_path):
    image, ids = written
    wal = image / "documents.db-wal"
    page, frames = wal_frames(wal)
    assert frames >= 6, frames
    data = bytearray(wal.read_bytes())
    data[32 + (frames // 2) * (24 + page) + 24 + page // 2] ^= 0x40  # a page, mid-log
    wal.write_bytes(bytes(data))
    # The fault is real: SQLite on its own opens this log and silently drops
    # every acknowledged transaction after the damaged frame.
    plain = crash_image(image, tmp_path / "plain")
    with sqlite3.connect(plain / "documents.db") as db:
        assert db.execute("SELECT count(*) FROM documents").fetchone()[0] < len(ids)
    before = listing(image)
    with pytest.raises(StoreCorruption) as caught:
        Collection.open(image)
    assert "documents.db-wal" in one_line(caught.value)
    assert listing(image) == before  # refused without touching (or "repairing") anything


def test_a_torn_last_wal_frame_is_accepted(written):
    image, ids = written
    wal = image / "documents.db-wal"
    with open(wal, "r+b") as f:  # the crash cut the last (unacknowledged) write short
        f.truncate(wal.stat().st_size - 1000)
    with Collection.open(image) as c:
        present = [i for i in ids if c.get(i) is not None]
        assert present == ids[: len(present)] and len(present) >= len(ids) - 1
        assert c.check() == {"documents": len(present), "ok": True}


# ---------------------------------------------------------------- item 5: manifests


@pytest.mark.parametrize("missing", ["collection.json", "index/manifest.json"])
def test_a_missing_manifest_is_refused_never_an_empty_collection(written, missing):
    image, ids = written
    (image / missing).unlink()
    before = {k: v for k, v in listing(image).items() if not k.startswith("documents.db")}
    with pytest.raises((CollectionError, StoreCorruption, IndexFormatError)) as caught:
        Collection.open(image)
    assert Path(missing).name in one_line(caught.value)
    # Nothing made or removed; SQLite may have folded its log into the file on
    # closing, but every document is still there.
    assert {k: v for k, v in listing(image).items() if not k.startswith("documents.db")} == before
    with sqlite3.connect(image / "documents.db") as db:
        assert db.execute("SELECT count(*) FROM documents").fetchone()[0] == len(ids)


# ---------------------------------------------------------------- item 6: rows and segments


def snapshotted(tmp_path: Path) -> tuple[Path, np.ndarray]:
    c = Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM)
    vectors = unit(np.random.default_rng(1), 6)
    texts = [f"plain text {i}" for i in range(5)] + ["the quick zebra jumps"]
    c.add([f"d{i}" for i in range(6)], embeddings=vectors, texts=texts)
    c.close()  # snapshot + checkpoint: rows in documents.db, codes in index/codes.*.npy
    return c.path, vectors


def test_a_changed_byte_in_a_document_is_never_served(tmp_path):
    path, vectors = snapshotted(tmp_path)
    db = path / "documents.db"
    data = db.read_bytes()
    assert data.count(b"quick zebra") == 1
    db.write_bytes(data.replace(b"quick zebra", b"quick zebrb"))
    with Collection.open(path) as c:  # the file's structure is intact: it opens
        assert c.get("d0")["text"] == "plain text 0"
        with pytest.raises(StoreCorruption) as caught:
            c.get("d5")
        assert "checksum" in one_line(caught.value)
        with pytest.raises(StoreCorruption):
            c.search(embeddings=vectors[5], k=1)
        with pytest.raises(StoreCorruption):
            c.check()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_segment_file_is_refused_on_open(tmp_path, damage):
    path, _ = snapshotted(tmp_path)
    (segment,) = (path / "index").glob("codes.*.npy")
    data = bytearray(segment.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 8]
    else:
        data[len(data) - 40] ^= 0x01  # inside the codes, past the .npy header
    segment.write_bytes(bytes(data))
    with pytest.raises((IndexFormatError, StoreCorruption)) as caught:
        Collection.open(path)
    assert segment.name in one_line(caught.value)


# ---------------------------------------------------------------- a COMMIT that fails


class FailingCommit:
    """The store's SQLite connection, but the next COMMIT fails (as a concurrent checkpoint made it)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.armed = db, True

    def execute(self, sql: str, *args):
        if sql == "COMMIT" and self.armed:
            self.armed = False
            raise sqlite3.OperationalError("cannot commit transaction - SQL statements in progress")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.db, name)


@pytest.mark.parametrize("op", ["add", "delete"])
def test_a_write_whose_commit_fails_is_neither_acknowledged_nor_applied(tmp_path, op):
    c = Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM)
    vectors = unit(np.random.default_rng(2), 3)
    c.add(["a", "b"], embeddings=vectors[:2], texts=["A", "B"])
    real = c.store._db
    c.store._db = FailingCommit(real)
    with pytest.raises(sqlite3.OperationalError):
        if op == "add":
            c.add(["c"], embeddings=vectors[2:], texts=["C"])
        else:
            c.delete(["a"])
    c.store._db = real
    assert sorted(i for i in "abc" if c.get(i) is not None) == ["a", "b"]
    assert c.check() == {"documents": 2, "ok": True}  # the index was not changed either
    image = crash_image(c.path, tmp_path / "image")
    c.close(snapshot=False)
    with Collection.open(image) as again:
        assert sorted(i for i in "abc" if again.get(i) is not None) == ["a", "b"]


def test_stats_skip_a_file_a_snapshot_renames_away_meanwhile(tmp_path, monkeypatch):
    # GET /stats beside POST /snapshot listed a .tmp file that was renamed
    # before its stat: a 500 (found by the start-up hammer test).
    c = Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM)
    c.add(["a"], embeddings=unit(np.random.default_rng(4), 1))
    c.snapshot()
    size = sum(p.stat().st_size for p in (c.path / "index").iterdir())
    real = Path.iterdir

    def iterdir(self: Path):
        yield from real(self)
        if self.name == "index":
            yield self / ".codes.9-0.npy.tmp"  # listed, then gone

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert c.stats()["index_bytes"] == size
    monkeypatch.undo()
    c.close()


def test_close_waits_for_a_background_snapshot(tmp_path, monkeypatch, caplog):
    # close() used to close the database under a running background snapshot
    # ("Cannot operate on a closed database") and release the lock while it
    # still wrote index files.
    c = Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM)
    real_save = type(c.index).save

    def slow_save(self, path):
        time.sleep(0.3)  # the snapshot is still writing when close() comes
        real_save(self, path)

    monkeypatch.setattr(type(c.index), "save", slow_save)
    c.snapshot_every = 1
    c.add(["a"], embeddings=unit(np.random.default_rng(5), 1))  # starts the snapshot thread
    assert c._snapshotting
    c.close(snapshot=False)
    assert not c._snapshotting and "snapshot_failed" not in caplog.text
    with Collection.open(c.path) as again:
        assert again.replayed == 0 and again.get("a") is not None


# ---------------------------------------------------------------- the state machine


def reference_top(query: np.ndarray, model: dict[str, np.ndarray], c: Collection, k: int):
    """Brute force over the surviving documents' code values: [(id, cosine)] best first."""
    ids = sorted(model)
    codes = c.codec.encode(np.stack([model[i] for i in ids]))
    weights = codes.scales if codes.scales is not None else c.index.plane_weights
    docs = code_values(codes.words, c.codec.m, weights)
    words, qweights = c.coded.query_codes(query[None, :])
    q = code_values(words, c.codec.m, qweights)[0]
    scores = docs @ q / (np.linalg.norm(docs, axis=1) * np.linalg.norm(q))
    order = np.argsort(-scores, kind="stable")[:k]
    return [(ids[i], float(scores[i])) for i in order]


class CollectionMachine(RuleBasedStateMachine):
    """Writes, snapshots, reopens and crashes against a dict ``id -> (vector, text)``."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="binsearch-faults-"))
        self.dirs = 0
        self.c = Collection.create(self.fresh(), "residual", 2, model=None, dim=DIM)
        self.c.index.compaction = "inline"  # deterministic: compaction inside the delete
        self.model: dict[str, tuple[np.ndarray, str]] = {}
        self.rng = np.random.default_rng(0)
        self.writes = 0

    def fresh(self) -> Path:
        self.dirs += 1
        return self.root / f"c{self.dirs}"

    def reopen_at(self, path: Path) -> None:
        self.c = Collection.open(path)
        self.c.index.compaction = "inline"

    def crash_to(self, image: Path) -> None:
        # The crashed process is gone: its files (and the lock) are abandoned.
        self.c.close(snapshot=False)
        self.reopen_at(image)

    @rule(
        ids=st.lists(st.integers(0, 11), min_size=1, max_size=3, unique=True),
        salt=st.integers(0, 9),
    )
    def add(self, ids: list[int], salt: int) -> None:
        names = [f"doc-{i}" for i in ids]
        vectors = unit(self.rng, len(names))
        texts = [f"{n} v{salt}" for n in names]
        self.c.add(names, embeddings=vectors, texts=texts)
        for n, v, t in zip(names, vectors, texts, strict=True):
            self.model[n] = (v, t)
        self.writes += 1

    @rule(ids=st.lists(st.integers(0, 11), min_size=1, max_size=4, unique=True))
    def delete(self, ids: list[int]) -> None:
        names = [f"doc-{i}" for i in ids]
        assert self.c.delete(names) == sum(n in self.model for n in names)
        for n in names:
            self.model.pop(n, None)

    @rule()
    def snapshot(self) -> None:
        self.c.snapshot()

    @rule()
    def reopen(self) -> None:
        path = self.c.path
        self.c.close()
        self.reopen_at(path)

    @rule()
    def crash(self) -> None:
        self.crash_to(crash_image(self.c.path, self.fresh()))

    @precondition(lambda self: self.c._since_snapshot > 0)
    @rule(at=st.integers(1, 12))
    def crash_inside_a_snapshot(self, at: int) -> None:
        # SIGKILL at the at-th fsync of a snapshot (segment files, manifest,
        # directory), or after the snapshot if it makes fewer.
        real_fsync, calls, image = os.fsync, [0], self.fresh()

        def fsync(fd: int) -> None:
            real_fsync(fd)
            calls[0] += 1
            if calls[0] == at:
                crash_image(self.c.path, image)

        os.fsync = fsync
        try:
            self.c.snapshot()
        finally:
            os.fsync = real_fsync
        if calls[0] < at:
            crash_image(self.c.path, image)
        self.crash_to(image)

    @invariant()
    def matches_the_model(self) -> None:
        c = self.c
        assert len(c) == len(self.model)
        for name, (_, text) in self.model.items():
            assert c.get(name)["text"] == text
        for gone in {f"doc-{i}" for i in range(12)} - set(self.model):
            assert c.get(gone) is None
        if not self.model:
            return
        query = unit(self.rng, 1)[0]
        k = min(5, len(self.model))
        (got,) = c.search(embeddings=query, k=k)
        ref = reference_top(query, {n: v for n, (v, _) in self.model.items()}, c, len(self.model))
        ref_score = dict(ref)
        assert len(got.ids) == k
        # Same scores rank by rank; ids equal up to ties at equal score.
        np.testing.assert_allclose(got.scores, [s for _, s in ref[:k]], atol=1e-4)
        for doc_id, score in zip(got.ids, got.scores, strict=True):
            assert abs(ref_score[doc_id] - score) < 1e-4
        kth = ref[k - 1][1]
        assert {i for i, s in ref if s > kth + 1e-4} <= set(got.ids)

    def teardown(self) -> None:
        try:
            if not self.c.closed:  # else a reopen failed, and that failure is the report
                self.c.check()
                self.c.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


CollectionMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCollectionMachine = CollectionMachine.TestCase
