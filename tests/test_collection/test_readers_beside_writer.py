"""Issue 23, fault 2: a read-only open beside a live writer sees one consistent point.

A read-only open used to load the index, then replay the journal, then count
the rows, each a separate read: a snapshot in between dropped journal entries
the loaded index lacked (a replaced document's old vector served under its new
text), deleted segment files mid-load (``index/alive.*.npy: missing``), or
moved the count (``... the collection is damaged``). The pauses below are the
exact gaps, made deterministic: the writer acts while the reader waits there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_collection_faults import DIM

from binsearch import Collection
from index import BinaryIndex


def vector(doc_id: str, version: int) -> np.ndarray:
    """The embedding of version ``version`` of ``doc_id`` (a pure function of both)."""
    seed = int.from_bytes(doc_id.encode(), "little") * 1000 + version
    x = np.random.default_rng(seed).standard_normal((1, DIM))
    return (x / np.linalg.norm(x)).astype(np.float32)


def write(c: Collection, ids: list[str], version: int) -> None:
    c.add(
        ids,
        embeddings=np.concatenate([vector(i, version) for i in ids]),
        texts=[f"{i} v{version}" for i in ids],
    )


def assert_consistent(reader: Collection, n: int) -> set[int]:
    """Every document's code is its own text's vector's code; returns the versions seen."""
    assert len(reader) == n
    versions = set()
    for i in range(n):
        doc_id = f"d{i}"
        row = reader.get(doc_id)
        version = int(row["text"].split(" v")[1])
        versions.add(version)
        key = reader.store.keys_of([doc_id])[doc_id]
        codes, _ = reader.index.get(np.array([key]))
        expected = reader.codec.encode(vector(doc_id, version)).words
        np.testing.assert_array_equal(codes, expected, err_msg=f"{doc_id}: stale code")
        (hit,) = reader.search(embeddings=vector(doc_id, version), k=1)
        assert hit.ids[0] == doc_id
    return versions


@pytest.fixture
def writer(tmp_path: Path):
    c = Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM)
    ids = [f"d{i}" for i in range(20)]
    write(c, ids, 0)
    c.snapshot()
    write(c, ids[:10], 1)  # in the journal only
    yield c
    c.close()


@pytest.mark.parametrize("deletes", [False, True])
def test_a_snapshot_between_index_load_and_journal_replay(writer, monkeypatch, deletes):
    real_load = BinaryIndex.load.__func__
    acted = []

    def load(cls, path, *args, **kwargs):
        index = real_load(cls, path, *args, **kwargs)
        if not acted:  # the reader holds generation G; the writer moves on meanwhile
            acted.append(1)
            write(writer, [f"d{i}" for i in range(20)], 2)  # every document replaced
            if deletes:
                writer.delete(["d19"])
                write(writer, ["d19"], 2)
            writer.snapshot()  # drops the journal G lacks, removes G's files
        return index

    monkeypatch.setattr(BinaryIndex, "load", classmethod(load))
    with Collection.open(writer.path, readonly=True) as reader:
        assert acted
        assert assert_consistent(reader, 20) == {2}


def test_rows_stay_at_the_point_the_index_was_read(writer):
    with Collection.open(writer.path, readonly=True) as reader:
        write(writer, [f"d{i}" for i in range(20)], 3)  # committed after the reader opened
        writer.snapshot()
        assert assert_consistent(reader, 20) == {0, 1}  # not v3 text over a v0/v1 code
    with Collection.open(writer.path, readonly=True) as again:
        assert assert_consistent(again, 20) == {3}


def test_segment_files_removed_while_they_are_read(writer, monkeypatch):
    from index import segment_files

    real = segment_files._load_array
    raced = []

    def load_array(path, manifest, key, *args, **kwargs):
        if not raced:  # the first file is open; a snapshot rewrites the generation
            raced.append(1)
            writer.delete(["d3"])
            write(writer, ["d3"], 4)
            writer.index.compact()
            writer.snapshot()
        return real(path, manifest, key, *args, **kwargs)

    monkeypatch.setattr(segment_files, "_load_array", load_array)
    with Collection.open(writer.path, readonly=True) as reader:
        assert raced
        assert 4 in assert_consistent(reader, 20)


def test_stress_read_only_opens_beside_a_writer_that_snapshots_constantly(tmp_path):
    # A real writer process (batches of 5 replacements or deletes, a snapshot
    # every 3 batches) against a stream of read-only opens, each checked against
    # the acknowledged writes and against itself (benchmarks/readers_beside_writer.py).
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "counts.json"
    subprocess.run(
        [sys.executable, str(root / "benchmarks" / "readers_beside_writer.py")]
        + ["--seconds", "8", "--json", str(out)],
        check=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])},
        stdout=subprocess.DEVNULL,
    )
    counts = json.loads(out.read_text())
    assert counts["writer_exit"] == 0
    assert counts["opens"] >= 3 and counts["writes_acknowledged"] > 50, counts
    assert counts["false_alarms"] == 0 and counts["stale_answers"] == 0, counts["examples"]


def test_a_segment_file_removed_between_its_read_and_its_stat(writer, monkeypatch):
    # Found by the 60 s stress run: a raw FileNotFoundError from the stat the
    # loader takes of each file after reading it.
    from index import segment_files

    real = segment_files.file_stat
    raced = []

    def file_stat(path):
        if not raced:
            raced.append(1)
            writer.delete(["d5"])
            write(writer, ["d5"], 5)
            writer.index.compact()
            writer.snapshot()  # removes the file just read
        return real(path)

    monkeypatch.setattr(segment_files, "file_stat", file_stat)
    with Collection.open(writer.path, readonly=True) as reader:
        assert raced
        assert 5 in assert_consistent(reader, 20)


def test_a_wal_emptied_while_the_reader_checks_it(writer, monkeypatch):
    # Found by the 60 s stress run: the writer's checkpoint truncated the log
    # between the reader's size check and its read ("unpack requires a buffer").
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "documents.db-wal":
            return b""  # truncated meanwhile
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with Collection.open(writer.path, readonly=True) as reader:
        assert_consistent(reader, 20)
