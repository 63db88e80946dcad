"""Issue 23, fault 3: a damaged journal entry is refused, never replayed into the index.

The journal (``changes`` in ``documents.db``) holds every add since the last
snapshot: keys, packed codes and scales. Each entry now carries a CRC-32 of
all its fields (schema 2), checked on replay and by ``check()``. A schema-1
database (no ``crc`` column) is migrated on a writable open.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from test_collection_faults import DIM, one_line, unit

from binsearch import Collection
from binsearch.collection.docstore import SCHEMA_VERSION, StoreCorruption, change_crc

KEY = 0x0123456789ABCDEF  # a key whose 8 bytes occur once in the file: in the journal


def journaled(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A closed collection: 5 documents snapshotted, then 1 add only in the journal."""
    rng = np.random.default_rng(7)
    c = Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM)
    c.add([f"d{i}" for i in range(5)], embeddings=unit(rng, 5))
    c.snapshot()
    vector = unit(rng, 1)
    c.add(["x"], embeddings=vector, keys=np.array([KEY]))
    c.close(snapshot=False)  # checkpointed: the journal entry is in documents.db itself
    return c.path, vector


def flip_in_file(db: Path, blob: bytes, at: int) -> None:
    data = bytearray(db.read_bytes())
    assert data.count(blob) == 1, data.count(blob)
    data[data.index(blob) + at] ^= 0x10
    db.write_bytes(bytes(data))


def journal_blobs(db: Path) -> dict[str, bytes]:
    with sqlite3.connect(db) as conn:
        keys, codes, scales = conn.execute(
            "SELECT keys, codes, scales FROM changes ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    return {"keys": keys, "codes": codes, "scales": scales}


@pytest.mark.parametrize("field", ["keys", "codes", "scales"])
def test_a_changed_journal_byte_is_refused_in_one_line(tmp_path, field):
    path, vector = journaled(tmp_path)
    blob = journal_blobs(path / "documents.db")[field]
    assert blob is not None
    flip_in_file(path / "documents.db", blob, len(blob) // 2)
    with pytest.raises(StoreCorruption) as caught:
        Collection.open(path)
    assert "journal entry" in one_line(caught.value)
    with pytest.raises(StoreCorruption):
        Collection.open(path, readonly=True)


def test_the_undamaged_journal_replays_the_document_found_by_its_own_vector(tmp_path):
    path, vector = journaled(tmp_path)
    with Collection.open(path) as c:
        assert c.replayed == 1 and c.check()["ok"]
        (hit,) = c.search(embeddings=vector, k=1)
        assert hit.ids == ["x"] and hit.scores[0] > 0.99


def test_a_journal_entry_without_a_checksum_is_refused(tmp_path):
    path, _ = journaled(tmp_path)
    with sqlite3.connect(path / "documents.db") as conn:
        conn.execute("UPDATE changes SET crc = NULL")
    with pytest.raises(StoreCorruption) as caught:
        Collection.open(path)
    assert "journal entry" in one_line(caught.value)


def test_a_schema_1_database_is_migrated_on_open(tmp_path):
    path, vector = journaled(tmp_path)
    with sqlite3.connect(path / "documents.db") as conn:  # as binsearch before schema 2 wrote it
        conn.execute("ALTER TABLE changes DROP COLUMN crc")
        conn.execute("DELETE FROM meta WHERE name = 'schema_version'")
    with Collection.open(path, readonly=True) as c:  # read as it is, not migrated
        assert c.store.schema_version == 1 and c.replayed == 1 and c.get("x") is not None
    with Collection.open(path) as c:
        assert c.store.schema_version == SCHEMA_VERSION == 2 and c.replayed == 1
        c.add(["y"], embeddings=unit(np.random.default_rng(8), 1))
    with sqlite3.connect(path / "documents.db") as conn:
        assert conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone() == (
            "2",
        )
        rows = conn.execute("SELECT seq, op, keys, codes, scales, crc FROM changes").fetchall()
    assert rows == []  # closing snapshotted: nothing left to replay
    with Collection.open(path) as c:
        (hit,) = c.search(embeddings=vector, k=1)
        assert hit.ids == ["x"] and c.check()["ok"]


def test_change_crc_covers_every_field():
    base = (3, "add", b"k" * 8, b"c" * 16, b"s" * 8)
    crc = change_crc(*base)
    for i, other in enumerate([4, "delete", b"j" * 8, b"c" * 15 + b"d", None]):
        changed = list(base)
        changed[i] = other
        assert change_crc(*changed) != crc
    # Moving bytes from one blob to the next changes the checksum (lengths are in it).
    assert change_crc(3, "add", b"ab", b"c", None) != change_crc(3, "add", b"a", b"bc", None)


def test_an_id_index_entry_pointing_at_another_row_is_refused(tmp_path):
    # Found by the adversarial pass: one flipped byte in SQLite's index on `id`
    # made get("a20") return b12's row (which passes its own CRC) and a write to
    # "a20" would have replaced b12.
    rng = np.random.default_rng(9)
    c = Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM)
    c.add([f"a{i}" for i in range(30)], embeddings=unit(rng, 30))
    c.close()
    db = tmp_path / "c" / "documents.db"
    data = bytearray(db.read_bytes())
    entry = b"\x03\x13\x01a20\x14"  # the index record (id "a20", key 20)
    assert data.count(entry) == 1
    data[data.index(entry) + len(entry) - 1] = 12  # now it says key 12: a12's row
    db.write_bytes(bytes(data))
    with Collection.open(tmp_path / "c") as opened:
        assert opened.get("a12")["id"] == "a12"
        with pytest.raises(StoreCorruption) as caught:
            opened.get("a20")
        assert "id index" in one_line(caught.value)
        with pytest.raises(StoreCorruption):
            opened.add(["a20"], embeddings=unit(rng, 1))  # would have replaced a12
        with pytest.raises(StoreCorruption):
            opened.check()
        assert opened.get("a12")["id"] == "a12"
