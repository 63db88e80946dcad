"""Searches in several threads while another thread adds, removes, compacts and saves.

Every document id always carries the same code, so whichever state a search
saw, each returned score must be the exact score of that id's code; ids that
are never removed (the "stable" ones, in a memory-mapped base) must appear
whenever they beat the last returned score. At the end the index must equal a
rebuild from the surviving documents.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from index_reference import reference_scores

import index.segments
from index import BinaryIndex, fixed_plane_weights, pack_codes

M, PLANES, K = 128, 2, 10
STABLE = np.arange(300, dtype=np.int64)
VOLATILE = np.arange(1000, 1400, dtype=np.int64)


@pytest.fixture(autouse=True)
def small_segments(monkeypatch):
    monkeypatch.setattr(index.segments, "SEGMENT_ROWS", 64)
    monkeypatch.setattr(index.segments, "MIN_CAPACITY", 8)
    monkeypatch.setattr(index.segments, "MAX_SEGMENTS", 4)
    real = index.segments.merge_segments

    def slow_merge(segments):
        time.sleep(0.005)  # widen the window in which writes race a compaction's build
        return real(segments)

    monkeypatch.setattr(index.segments, "merge_segments", slow_merge)


def test_searches_during_updates_see_whole_states(tmp_path):
    rng = np.random.default_rng(0)
    all_ids = np.concatenate([STABLE, VOLATILE])
    codes = pack_codes(rng.choice([-1, 1], size=(len(all_ids), PLANES, M)))
    code_of = {int(i): codes[t] for t, i in enumerate(all_ids)}
    queries = pack_codes(rng.choice([-1, 1], size=(4, PLANES, M)))
    w = fixed_plane_weights(PLANES)
    # ip with power-of-two weights: every score is exact in float32
    ref = reference_scores(codes, w, queries, np.tile(w, (4, 1)), M, False)
    score_of = [dict(zip(all_ids.tolist(), ref[j].tolist(), strict=True)) for j in range(4)]
    stable_set = set(STABLE.tolist())
    known = set(all_ids.tolist())

    base = BinaryIndex(M, PLANES, "fixed", "ip")
    base.add(codes[: len(STABLE)], STABLE)
    base.save(tmp_path / "base")
    idx = BinaryIndex.load(tmp_path / "base", mmap=True)
    live = set(STABLE.tolist())
    errors: list[BaseException] = []
    done = threading.Event()
    searches = [0]

    def check(scores: np.ndarray, ids: np.ndarray, exhaustive: bool) -> None:
        assert scores.shape == ids.shape == (4, K)
        for j in range(4):
            got = ids[j].tolist()
            assert len(set(got)) == K and set(got) <= known, got
            want = [score_of[j][i] for i in got]
            assert scores[j].tolist() == want
            order = np.lexsort((ids[j], -scores[j]))
            assert order.tolist() == list(range(K)), "not sorted by score, then id"
            if exhaustive:  # stable documents better than the k-th are in every state's top-k
                must = {i for i in stable_set if score_of[j][i] > scores[j, -1]}
                assert must <= set(got)

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            while not done.is_set():
                kind = r.integers(0, 5)
                threads = int(r.integers(1, 3))
                if kind == 0:
                    check(*idx.search(queries, K, threads=threads), exhaustive=True)
                elif kind == 1:
                    allow = np.concatenate([STABLE[::2], VOLATILE[::3]])
                    s, i = idx.search(queries, K, allow_keys=allow, threads=threads)
                    assert set(i.ravel().tolist()) <= set(allow.tolist())
                    check(s, i, exhaustive=False)
                elif kind == 2:
                    check(*idx.search(queries, K, cascade=3), exhaustive=False)
                elif kind == 3:
                    s, i = idx.search(queries, K, method="sdc", threads=threads)
                    check(s, i, exhaustive=True)
                else:
                    some = r.choice(STABLE, size=5, replace=False)
                    got, _ = idx.get(some)
                    np.testing.assert_array_equal(got, np.stack([code_of[int(i)] for i in some]))
                    assert idx.contains(some).all()
                    ids = idx.keys
                    assert len(set(ids.tolist())) == len(ids) and stable_set <= set(ids.tolist())
                searches[0] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def writer() -> None:
        r = np.random.default_rng(1)
        try:
            deadline, give_up = time.monotonic() + 2.0, time.monotonic() + 60.0
            step = 0
            while (
                time.monotonic() < deadline or step < 60 or searches[0] < 20
            ) and time.monotonic() < give_up:
                step += 1
                op = r.integers(0, 10)
                if op < 5:
                    batch = r.choice(VOLATILE, size=int(r.integers(1, 30)), replace=False)
                    idx.add(np.stack([code_of[int(i)] for i in batch]), batch)
                    live.update(batch.tolist())
                elif op < 8:
                    batch = r.choice(VOLATILE, size=int(r.integers(1, 40)), replace=False)
                    assert idx.remove(batch) == len(live & set(batch.tolist()))
                    live.difference_update(batch.tolist())
                elif op == 8:
                    idx.compact(background=bool(r.integers(0, 2)))
                else:
                    idx.save(tmp_path / "saved")
                assert len(idx) == len(live)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    # compile (or load from numba's cache) every kernel before the race starts
    idx.search(queries, K)
    idx.search(queries, K, allow_keys=STABLE)
    idx.search(queries, K, cascade=3)
    idx.search(queries, K, method="sdc")
    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    assert searches[0] >= 20
    idx.wait_for_compaction()

    rebuilt = BinaryIndex(M, PLANES, "fixed", "ip")
    ids = np.array(sorted(live), dtype=np.int64)
    rebuilt.add(np.stack([code_of[int(i)] for i in ids]), ids)
    for k in (1, K, 500):
        a, b = idx.search(queries, k), rebuilt.search(queries, k)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    assert sorted(idx.keys.tolist()) == ids.tolist()
    idx.compact()
    assert idx._state.n_dead == 0
    np.testing.assert_array_equal(idx.search(queries, 50)[1], rebuilt.search(queries, 50)[1])
    # the last save holds a consistent index too
    saved = BinaryIndex.load(tmp_path / "saved")
    assert stable_set <= set(saved.keys.tolist()) <= known
