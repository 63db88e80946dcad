"""The store without HTTP: durability on restart, torn logs, crash mid-snapshot, consistent reads."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from server_fakes import FAKE_DIM, WordHashEncoder

from server.settings import Settings
from server.store import CURRENT, Store


def open_store(path, **overrides) -> Store:
    store = Store(Settings(index_dir=path, **overrides), encoder=WordHashEncoder())
    store.load()
    return store


def add(store: Store, ids: list[str], seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((len(ids), FAKE_DIM)).astype(np.float32)
    store.upsert([{"id": i, "title": f"title {i}", "text": ""} for i in ids], vectors)
    return vectors


def live_ids(store: Store) -> set[str]:
    hits = store.search(np.ones((1, FAKE_DIM), np.float32), k=1000)[0]
    return {h.id for h in hits}


def test_restart_replays_the_log_without_a_snapshot(tmp_path):
    store = open_store(tmp_path, snapshot_on_shutdown=False)
    add(store, ["a", "b", "c"])
    store.delete("b")
    add(store, ["a"], seed=1)  # replace
    before = {h.id: h.score for h in store.search(np.ones((1, FAKE_DIM), np.float32), 10)[0]}
    store.close()
    again = open_store(tmp_path)
    after = {h.id: h.score for h in again.search(np.ones((1, FAKE_DIM), np.float32), 10)[0]}
    assert after == before and set(after) == {"a", "c"}
    assert again.replayed_records == 3


def test_snapshot_truncates_the_log_and_restart_reads_it(tmp_path):
    store = open_store(tmp_path)
    add(store, [f"d{i}" for i in range(10)])
    info = store.snapshot()
    assert info == {**info, "generation": 1, "documents": 10}
    assert store.wal.size() == 0
    add(store, ["late"], seed=3)
    store.close(snapshot=False)  # a crash: no shutdown snapshot
    again = open_store(tmp_path)
    assert live_ids(again) == {f"d{i}" for i in range(10)} | {"late"}
    assert again.generation == 1 and again.replayed_records == 1


def test_a_torn_last_record_is_cut_off(tmp_path):
    store = open_store(tmp_path)
    add(store, ["kept"])
    store.close(snapshot=False)
    log = store.wal.path(store.wal.number)
    good = log.stat().st_size
    with open(log, "ab") as f:
        f.write(b'0badc0de {"op": "upsert", "docs": [')  # the crash hit mid-write
    again = open_store(tmp_path)
    assert live_ids(again) == {"kept"}
    assert log.stat().st_size == good
    add(again, ["after"], seed=2)  # appends land after the cut, readable next time
    again.close(snapshot=False)
    assert live_ids(open_store(tmp_path)) == {"kept", "after"}


def test_a_record_with_a_bad_checksum_is_not_applied(tmp_path):
    store = open_store(tmp_path)
    add(store, ["a"])
    add(store, ["b"], seed=1)
    store.close(snapshot=False)
    log = store.wal.path(store.wal.number)
    lines = log.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"b"', b'"B"')  # damaged payload, checksum no longer matches
    log.write_bytes(b"".join(lines))
    assert live_ids(open_store(tmp_path)) == {"a"}


def test_crash_in_the_middle_of_a_snapshot_keeps_the_previous_generation(tmp_path):
    store = open_store(tmp_path)
    add(store, ["a", "b"])
    store.snapshot()
    add(store, ["c"], seed=1)
    # Simulate a crash after the log rotated and the new generation was half
    # written, before CURRENT pointed at it.
    with store._write_lock:
        store.wal.open(store.wal.number + 1)
    add(store, ["d"], seed=2)
    half = tmp_path / "generations" / f"{store.wal.number:08d}"
    half.mkdir(parents=True)
    (half / "manifest.json").write_text("{ half written")
    store.close(snapshot=False)
    again = open_store(tmp_path)
    assert json.loads((tmp_path / CURRENT).read_text())["generation"] == 1
    assert live_ids(again) == {"a", "b", "c", "d"}
    again.snapshot()  # and the next snapshot writes over the broken one
    again.close(snapshot=False)
    assert live_ids(open_store(tmp_path)) == {"a", "b", "c", "d"}


def test_a_reader_never_sees_half_a_batch(tmp_path):
    # Each batch writes 4 documents with the same vector; a reader filtering on
    # one batch's ids must find all 4 or none, whatever moment it reads.
    store = open_store(tmp_path, compact_every=12, fsync=False)
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
                scores = {round(h.score, 5) for h in hits[0]}
                assert len(scores) <= 1, "a batch's documents share one vector, so one score"
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


def test_a_model_of_another_name_is_refused(tmp_path):
    open_store(tmp_path).close()

    class Other(WordHashEncoder):
        name = "another-model"

    store = Store(Settings(index_dir=tmp_path), encoder=Other())
    with pytest.raises(ValueError, match="built with model"):
        store.load()


def test_one_server_per_directory(tmp_path):
    first = open_store(tmp_path)
    with pytest.raises(ValueError, match="already being served"):
        open_store(tmp_path)
    first.close()
    open_store(tmp_path).close()  # free again once the first one is gone
