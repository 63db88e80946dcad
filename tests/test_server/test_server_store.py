"""The served store without HTTP: journal replay on restart, snapshots, consistent reads, refusals."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from server_fakes import FAKE_DIM, WordHashEncoder

from server.settings import Settings
from server.store import Store


def open_store(path, **overrides) -> Store:
    store = Store(Settings(collection_dir=path, **overrides), encoder=WordHashEncoder())
    store.load()
    return store


def add(store: Store, ids: list[str], seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((len(ids), FAKE_DIM)).astype(np.float32)
    store.upsert([{"id": i, "title": f"title {i}", "text": ""} for i in ids], vectors)
    return vectors


def scores(store: Store) -> dict[str, float]:
    return {h.id: h.score for h in store.search(np.ones((1, FAKE_DIM), np.float32), 1000)[0]}


def test_restart_replays_the_journal_without_a_snapshot(tmp_path):
    store = open_store(tmp_path, snapshot_on_shutdown=False)
    add(store, ["a", "b", "c"])
    assert store.delete("b")
    add(store, ["a"], seed=1)  # replace
    before = scores(store)
    store.close()  # no snapshot: the index on disk is still the empty one
    again = open_store(tmp_path)
    assert scores(again) == before and set(before) == {"a", "c"}
    assert again.state.replayed == 3
    assert again.get("a")["title"] == "title a" and again.get("b") is None
    assert again.state.check() == {"documents": 2, "ok": True}


def test_snapshot_then_restart_replays_only_later_writes(tmp_path):
    store = open_store(tmp_path)
    add(store, [f"d{i}" for i in range(10)])
    info = store.snapshot()
    assert info == {**info, "documents": 10}
    assert store.state.store.pending_changes() == 0  # the journal was dropped
    add(store, ["late"], seed=3)
    before = scores(store)
    store.close(snapshot=False)  # a crash: no shutdown snapshot
    again = open_store(tmp_path)
    assert scores(again) == before and len(before) == 11
    assert again.state.replayed == 1
    assert again.state.check() == {"documents": 11, "ok": True}


def test_a_reader_never_sees_half_a_batch(tmp_path):
    # Each batch writes 4 documents with the same vector; a reader filtering on
    # one batch's ids must find all 4 or none, whatever moment it reads, also
    # while snapshots and compactions (deletes of whole batches) run.
    store = open_store(tmp_path, snapshot_every=8, fsync=False)
    add(store, ["seed"])
    batches = 60
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        rng = np.random.default_rng(0)
        try:
            for b in range(batches):
                v = rng.standard_normal(FAKE_DIM).astype(np.float32)
                ids = [f"b{b}-{j}" for j in range(4)]
                store.upsert([{"id": i, "title": "", "text": ""} for i in ids], np.tile(v, (4, 1)))
                if b % 5 == 4:  # and replace an earlier batch whole
                    old = [f"b{b - 4}-{j}" for j in range(4)]
                    store.upsert(
                        [{"id": i, "title": "", "text": ""} for i in old], np.tile(-v, (4, 1))
                    )
                if b % 3 == 2:  # and delete a batch whole: >25% dead rows start compactions
                    store.state.delete([f"b{b - 2}-{j}" for j in range(4)])
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    def reader() -> None:
        rng = np.random.default_rng(1)
        try:
            while not stop.is_set():
                b = int(rng.integers(0, batches))
                allow = [f"b{b}-{j}" for j in range(4)]
                hits = store.search(
                    rng.standard_normal((1, FAKE_DIM)).astype(np.float32), 10, allow
                )
                seen.append(len(hits[0]))
                assert len({round(h.score, 5) for h in hits[0]}) <= 1, "one vector, one score"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert set(seen) <= {0, 4} and 4 in seen
    assert store.state.check()["ok"]


def test_a_model_of_another_name_is_refused(tmp_path):
    open_store(tmp_path).close()

    class Other(WordHashEncoder):
        name = "another-model"

    store = Store(Settings(collection_dir=tmp_path), encoder=Other())
    with pytest.raises(ValueError, match="built with model"):
        store.load()
    assert "built with model" in store.load_error and str(tmp_path) not in store.load_error


def test_one_server_per_directory(tmp_path):
    first = open_store(tmp_path)
    with pytest.raises(ValueError, match="open in another process"):
        open_store(tmp_path)
    first.close()
    open_store(tmp_path).close()  # free again once the first one is gone
