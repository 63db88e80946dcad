"""Segments: growing, deleting, compacting, saving and loading, in any order.

Small segment sizes (patched) make a few dozen rows span several sealed
segments and a tail, so every path -- seal, growth, merge, compaction, reuse
of saved files -- runs in a quick test.
"""

from __future__ import annotations

import copy
import mmap
import pickle
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from index_reference import assert_topk_matches, reference_scores

import index.segment_files
import index.segments
from index import BinaryIndex, code_values, fixed_plane_weights, pack_codes, read_manifest

M, PLANES = 100, 2


@pytest.fixture(autouse=True)
def small_segments(monkeypatch):
    monkeypatch.setattr(index.segments, "SEGMENT_ROWS", 16)
    monkeypatch.setattr(index.segments, "MIN_CAPACITY", 4)
    monkeypatch.setattr(index.segments, "MAX_SEGMENTS", 3)


def random_rows(rng, n, weights, planes=PLANES, m=M):
    codes = pack_codes(rng.choice([-1, 1], size=(n, planes, m)))
    scales = None
    if weights == "per_document":
        scales = (rng.random((n, planes)) + np.array([2.0] + [0.0] * (planes - 1))).astype(
            np.float32
        )
    return codes, scales


def rebuild(live, weights, metric="cosine"):
    fresh = BinaryIndex(M, PLANES, weights, metric)
    if live:
        ids = np.array(sorted(live), dtype=np.int64)
        codes = np.stack([live[i][0] for i in ids.tolist()])
        scales = None if weights == "fixed" else np.stack([live[i][1] for i in ids.tolist()])
        fresh.add(codes, ids, scales)
    return fresh


def assert_same_index(got: BinaryIndex, want: BinaryIndex, rng) -> None:
    assert len(got) == len(want)
    assert sorted(got.keys.tolist()) == sorted(want.keys.tolist())
    assert len(set(got.keys.tolist())) == len(got)
    queries = pack_codes(rng.choice([-1, 1], size=(3, PLANES, M)))
    for k in (1, 7, 80):
        a, b = got.search(queries, k), want.search(queries, k)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    if len(want):
        # scores() columns follow ids order, whatever that order is
        by_id = dict(zip(want.keys.tolist(), want.scores(queries).T.tolist(), strict=True))
        for i, column in zip(got.keys.tolist(), got.scores(queries).T, strict=True):
            np.testing.assert_allclose(column, by_id[i], rtol=1e-6)
        codes, scales = got.get(want.keys)
        want_codes, want_scales = want.get(want.keys)
        np.testing.assert_array_equal(codes, want_codes)
        if scales is not None:
            np.testing.assert_allclose(scales, want_scales, rtol=1e-6)
    assert got.contains(np.array([-1, 10**9])).tolist() == [False, False]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 40), st.integers(0, 79)),  # count, first id
        st.tuples(st.just("remove"), st.integers(1, 20), st.integers(0, 79)),
        st.tuples(st.just("compact"), st.booleans(), st.just(0)),  # in the background or not
        st.tuples(st.just("save"), st.just(0), st.just(0)),
        st.tuples(st.just("load"), st.booleans(), st.just(0)),  # mmap or not
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=60, deadline=None)
@given(operations, st.sampled_from(["fixed", "per_document"]), st.integers(0, 2**32 - 1))
def test_random_update_sequences_match_a_rebuild(ops, weights, seed):
    rng = np.random.default_rng(seed)
    idx = BinaryIndex(M, PLANES, weights, "cosine")
    live: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        saved: dict | None = None
        for op, a, b in ops:
            if op == "add":
                ids = np.arange(b, b + a, dtype=np.int64)
                codes, scales = random_rows(rng, a, weights)
                idx.add(codes, ids, scales)
                for t, i in enumerate(ids.tolist()):
                    live[i] = (codes[t], None if scales is None else scales[t])
            elif op == "remove":
                ids = rng.choice(120, size=a, replace=False).astype(np.int64)
                assert idx.remove(ids) == sum(i in live for i in ids.tolist())
                for i in ids.tolist():
                    live.pop(i, None)
            elif op == "compact":
                idx.compact(background=a)
                if not a:
                    assert idx._state.n_dead == 0
            elif op == "save":
                idx.save(tmp)
                saved = dict(live)
            elif saved is not None:  # load what was saved last; go on from there
                idx.wait_for_compaction()
                idx = BinaryIndex.load(tmp, mmap=a)
                live = dict(saved)
            assert len(idx) == len(live)
        idx.wait_for_compaction()
        assert_same_index(idx, rebuild(live, weights), rng)
        if saved is not None:  # the directory still holds exactly the last save
            assert_same_index(BinaryIndex.load(tmp), rebuild(saved, weights), rng)


def build_segmented(weights, metric, planes, rng, n_batches=5, batch=9):
    """An index of several segments and a tail, with tombstones in more than one of them."""
    idx = BinaryIndex(M, planes, weights, metric, compaction="off")
    codes_all, scales_all, ids_all = [], [], []
    for b in range(n_batches):
        codes, scales = random_rows(rng, batch, weights, planes)
        ids = rng.choice(10_000, size=batch, replace=False) + 10_000 * b
        idx.add(codes, ids, scales)
        codes_all.append(codes)
        scales_all.append(scales)
        ids_all.append(ids)
    codes = np.concatenate(codes_all)
    ids = np.concatenate(ids_all).astype(np.int64)
    scales = None if weights == "fixed" else np.concatenate(scales_all)
    gone = rng.random(len(ids)) < 0.3
    gone[[0, len(ids) - 1]] = True  # a tombstone in the first segment and in the tail
    idx.remove(ids[gone])
    assert idx.segment_count >= 2 and idx._state.n_dead == gone.sum()
    return idx, codes[~gone], ids[~gone], None if scales is None else scales[~gone]


CONFIGS = [("fixed", "ip", 1), ("fixed", "cosine", 2), ("per_document", "cosine", 3)]


@pytest.mark.parametrize(("weights", "metric", "planes"), CONFIGS)
def test_every_search_path_across_segments_and_tombstones(weights, metric, planes):
    rng = np.random.default_rng(planes)
    idx, codes, ids, scales = build_segmented(weights, metric, planes, rng)
    doc_weights = scales if scales is not None else fixed_plane_weights(planes)
    divide = metric == "cosine" and not (weights == "fixed" and planes == 1)
    queries = pack_codes(rng.choice([-1, 1], size=(3, planes, M)))
    qw = np.tile(fixed_plane_weights(planes), (3, 1))
    ref = reference_scores(codes, doc_weights, queries, qw, M, divide)
    # where the stored order puts each live document
    pos = {i: t for t, i in enumerate(idx.keys.tolist())}
    order = np.array([pos[i] for i in ids.tolist()])
    np.testing.assert_allclose(idx.scores(queries)[:, order], ref, rtol=1e-5, atol=1e-4)
    for k in (1, 5, 100):
        got = idx.search(queries, k, threads=1, batch_size=2)
        for j in range(3):
            assert_topk_matches(got[0][j], got[1][j], ref[j], ids, k, False)
    # mask (over ids order) and allow_keys
    allowed = rng.random(len(ids)) < 0.5
    mask = np.zeros(len(idx), dtype=bool)
    mask[order[allowed]] = True
    by_mask = idx.search(queries, 6, mask=mask)
    by_ids = idx.search(queries, 6, allow_keys=np.concatenate([ids[allowed], [-3]]))
    np.testing.assert_array_equal(by_mask[1], by_ids[1])
    for j in range(3):
        assert_topk_matches(by_mask[0][j], by_mask[1][j], ref[j][allowed], ids[allowed], 6, False)
    # SDC byte tables
    sdc = idx.search(queries, 8, method="sdc")
    for j in range(3):
        assert_topk_matches(sdc[0][j], sdc[1][j], ref[j], ids, 8, False)
    # float queries: exact tables, and bit slices (exact for the quantized query)
    x = rng.standard_normal((2, M)).astype(np.float32)
    docs = code_values(codes, M, doc_weights).astype(np.float64)
    norms = np.linalg.norm(docs, axis=1) if divide else np.ones(len(ids))
    got = idx.search_float(x, 7, method="tables")
    for j in range(2):
        assert_topk_matches(got[0][j], got[1][j], docs @ x[j] / norms, ids, 7, False)
    got = idx.search_float(x, 7, method="slices", bits=3)
    q, w = index.quantize_query(x, 3)
    for j in range(2):
        xq = code_values(q[j : j + 1], M, w[j]).reshape(-1).astype(np.float64)
        assert_topk_matches(got[0][j], got[1][j], docs @ xq / norms, ids, 7, False)
    # cascade: plane-0 candidates from every segment, re-ranked with all planes
    if planes > 1 and weights == "fixed":
        w0 = np.ones((3, 1))
        plane0 = reference_scores(codes[:, :1], doc_weights[:1], queries[:, :1], w0, M, False)
        got = idx.search(queries, 4, cascade=2)
        for j in range(3):
            cand = np.lexsort((ids, -plane0[j]))[:8]
            assert_topk_matches(got[0][j], got[1][j], ref[j][cand], ids[cand], 4, False)
        np.testing.assert_array_equal(
            idx.search(queries, 4, cascade=len(ids))[1], idx.search(queries, 4)[1]
        )


def _is_mapped(array: np.ndarray) -> bool:
    base = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False


def _crc(file: Path) -> int:
    return zlib.crc32(file.read_bytes())


def test_add_after_mmap_load_keeps_the_base_mapped_and_its_files(tmp_path, monkeypatch):
    monkeypatch.setattr(index.segments, "SEGMENT_ROWS", 1 << 10)
    rng = np.random.default_rng(1)
    codes, scales = random_rows(rng, 300, "per_document")
    base = BinaryIndex(M, PLANES, "per_document", "cosine")
    base.add(codes, np.arange(300), scales)
    base.save(tmp_path)
    before = read_manifest(tmp_path)
    old_files = {e["file"]: _crc(tmp_path / e["file"]) for e in before["files"].values()}
    loaded = BinaryIndex.load(tmp_path, mmap=True)
    first = loaded._state.segments[0]
    mapped_codes = first.codes
    assert _is_mapped(mapped_codes) and _is_mapped(first.ids) and _is_mapped(first.scales)
    more, more_scales = random_rows(rng, 10, "per_document")
    loaded.add(more, np.arange(1000, 1010), more_scales)
    loaded.add(more[:2], np.array([5, 6]), more_scales[:2])  # replaces two base rows
    assert loaded._state.segments[0].codes is not None
    assert np.shares_memory(loaded._state.segments[0].codes, mapped_codes)
    assert _is_mapped(loaded._state.segments[0].codes)
    assert len(loaded) == 310 and loaded.segment_count == 2
    # a save writes the new segment (and a tombstone mask), not the base again
    written = []
    real = index.segment_files.atomic_write
    monkeypatch.setattr(
        index.segment_files, "atomic_write", lambda t, w: written.append(t.name) or real(t, w)
    )
    loaded.save(tmp_path)
    after = read_manifest(tmp_path)
    assert after["format_version"] == index.INDEX_FORMAT_VERSION == 3
    assert {n.split(".")[0] for n in written} == {"codes", "ids", "scales", "alive", "manifest"}
    assert all("-1" in n or n.startswith(("alive", "manifest")) for n in written)
    for file, crc in old_files.items():  # the base files are untouched and still referenced
        assert _crc(tmp_path / file) == crc
    assert set(old_files) <= {e["file"] for e in after["files"].values()}
    assert _is_mapped(loaded._state.segments[0].codes)
    again = BinaryIndex.load(tmp_path, mmap=True)
    assert _is_mapped(again._state.segments[0].codes)
    want = BinaryIndex(M, PLANES, "per_document", "cosine")
    want.add(codes, np.arange(300), scales)
    want.add(more, np.arange(1000, 1010), more_scales)
    want.add(more[:2], np.array([5, 6]), more_scales[:2])
    assert_same_index(again, want, rng)
    assert_same_index(loaded, want, rng)
    # a second save with nothing new writes only the manifest and the tombstone mask
    written.clear()
    loaded.save(tmp_path)
    assert sorted(n.split(".")[0] for n in written) == ["alive", "manifest"]


def test_compaction_keeps_a_clean_mapped_base(tmp_path):
    rng = np.random.default_rng(2)
    codes, _ = random_rows(rng, 50, "fixed")
    idx = BinaryIndex(M, PLANES, "fixed", "cosine")
    idx.add(codes, np.arange(50))
    idx.save(tmp_path)
    loaded = BinaryIndex.load(tmp_path, mmap=True)
    for start in (100, 120, 140):
        loaded.add(codes[:15], np.arange(start, start + 15))
    loaded.remove(np.arange(100, 110))
    assert loaded.segment_count >= 3
    assert loaded.compact() == 10
    assert loaded.segment_count == 2
    assert _is_mapped(loaded._state.segments[0].codes)
    loaded.remove(np.arange(5))
    assert loaded.compact() == 5  # tombstones in the base: it is rewritten (into memory)
    assert loaded.segment_count == 1 and len(loaded) == 45 + 35


def test_segments_grow_seal_and_merge():
    rng = np.random.default_rng(3)
    idx = BinaryIndex(M, PLANES, "fixed", "ip", compaction="off")
    live = {}
    for start in range(0, 200, 5):
        codes, _ = random_rows(rng, 5, "fixed")
        idx.add(codes, np.arange(start, start + 5))
        live.update({start + t: (codes[t], None) for t in range(5)})
        assert idx.segment_count <= index.segments.MAX_SEGMENTS + 1
    assert idx.segment_count > 1
    codes, _ = random_rows(rng, 40, "fixed")  # a batch larger than a segment
    idx.add(codes, np.arange(500, 540))
    live.update({500 + t: (codes[t], None) for t in range(40)})
    assert_same_index(idx, rebuild(live, "fixed", "ip"), rng)
    assert idx.nbytes >= len(idx) * (PLANES * 2 * 8 + 8)


def test_readding_an_id_replaces_it_in_any_segment():
    rng = np.random.default_rng(4)
    idx = BinaryIndex(M, PLANES, "fixed", "ip", compaction="off")
    codes, _ = random_rows(rng, 40, "fixed")
    idx.add(codes[:20], np.arange(20))
    idx.add(codes[20:], np.arange(20))  # all replaced: old rows become tombstones
    idx.add(codes[:3], np.array([0, 1, 2]))  # replaced again, inside the tail
    assert len(idx) == 20 and idx._state.n_dead == 23
    got, _ = idx.get(np.array([0, 5, 19]))
    np.testing.assert_array_equal(got, np.stack([codes[0], codes[25], codes[39]]))
    assert idx.contains(np.array([0, 19, 20])).tolist() == [True, True, False]
    with pytest.raises(KeyError, match="20"):
        idx.get(np.array([3, 20]))


def test_deepcopy_and_pickle_are_independent():
    rng = np.random.default_rng(5)
    idx, _, ids, _ = build_segmented("per_document", "cosine", 2, rng)
    clone = copy.deepcopy(idx)
    pickled = pickle.loads(pickle.dumps(idx))
    clone.remove(ids[:3])
    clone.compact()
    codes, scales = random_rows(rng, 2, "per_document")
    clone.add(codes, np.array([-1, -2]), scales)
    assert len(idx) == len(ids) == len(pickled)
    np.testing.assert_array_equal(idx.keys, pickled.keys)
    assert len(clone) == len(ids) - 1


def test_bad_compaction_argument():
    with pytest.raises(ValueError, match="compaction"):
        BinaryIndex(64, compaction="sometimes")


def test_writes_during_a_compaction_build_are_kept(monkeypatch):
    rng = np.random.default_rng(6)
    idx = BinaryIndex(M, PLANES, "fixed", "ip", compaction="off")
    codes, _ = random_rows(rng, 60, "fixed")
    for start in (0, 20, 40):
        idx.add(codes[start : start + 20], np.arange(start, start + 20))
    idx.remove(np.arange(0, 10))
    real = index.segments.merge_segments

    def merge_while_writing(segments):
        # runs without the writer lock: another writer gets in during the build
        idx.remove(np.array([15, 25, 45]))
        idx.add(codes[:2], np.array([500, 21]))  # a new id, and a replaced one
        return real(segments)

    monkeypatch.setattr(index.segments, "merge_segments", merge_while_writing)
    assert idx.compact() == 10
    monkeypatch.setattr(index.segments, "merge_segments", real)
    live = {i: (codes[i], None) for i in range(10, 60) if i not in (15, 25, 45)}
    live[500], live[21] = (codes[0], None), (codes[1], None)
    assert idx._state.n_dead == 4  # 15, 25, 45 and the old row of 21: re-applied tombstones
    assert_same_index(idx, rebuild(live, "fixed", "ip"), rng)
    idx.compact()
    assert idx._state.n_dead == 0 and idx.segment_count == 1
    assert_same_index(idx, rebuild(live, "fixed", "ip"), rng)
