"""Issue 23, fault 7 (the collection's share): close() on a full disk, a sharded create
whose Ray cannot be reached."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from test_collection_faults import DIM, unit

from binsearch import Collection
from binsearch.collection.docstore import DiskFull
from index import BinaryIndex


def test_close_on_a_full_disk_raises_disk_full_and_loses_nothing(tmp_path, monkeypatch):
    c = Collection.create(tmp_path / "c", "residual", 2, model=None, dim=DIM)
    vectors = unit(np.random.default_rng(3), 4)
    c.add(["a", "b", "c", "d"], embeddings=vectors)
    real_save = BinaryIndex.save

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BinaryIndex, "save", full)
    with pytest.raises(DiskFull) as caught:
        c.close()
    assert caught.value.errno == errno.ENOSPC and "disk is full" in str(caught.value)
    assert c.closed
    monkeypatch.setattr(BinaryIndex, "save", real_save)
    with Collection.open(c.path) as again:  # the lock is released; the journal holds it all
        assert again.replayed == 1 and len(again) == 4
        assert again.search(embeddings=vectors[2], k=1)[0].ids == ["c"]


def test_a_sharded_create_that_cannot_reach_ray_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from binsearch.distributed import ShardedCollection

    def unreachable(cls, *args, **kwargs):
        raise ConnectionError("Failed to connect to GCS at address 127.0.0.1:1")

    monkeypatch.setattr(ShardedCollection, "open", classmethod(unreachable))
    out = tmp_path / "sharded"
    with pytest.raises(ConnectionError):
        ShardedCollection.create(out, shards=3, model=None, dim=DIM, address="127.0.0.1:1")
    assert not out.exists()
    out.mkdir()  # an empty directory the user made stays, empty
    with pytest.raises(ConnectionError):
        ShardedCollection.create(out, shards=3, model=None, dim=DIM, address="127.0.0.1:1")
    assert out.is_dir() and not any(out.iterdir())
