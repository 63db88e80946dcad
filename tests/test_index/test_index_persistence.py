"""Saving and loading: round trips, memory maps, damaged files, crashes mid-save, faiss."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from index_reference import assert_topk_matches

from index import INDEX_FORMAT_VERSION, BinaryIndex, IndexFormatError, pack_codes, read_manifest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = [
    (1, "fixed", "ip"),
    (1, "fixed", "cosine"),
    (2, "fixed", "cosine"),  # stores norms
    (3, "per_document", "cosine"),  # stores scales
]


def make_index(planes, weights, metric, n=40, m=100, seed=0):
    rng = np.random.default_rng(seed)
    codes = pack_codes(rng.choice([-1, 1], size=(n, planes, m)))
    scales = None
    if weights == "per_document":
        scales = rng.uniform(0.2, 1, size=(n, planes)).astype(np.float32)
        scales[:, 0] += 3
    index = BinaryIndex(m, planes, weights, metric, meta={"codec": "test", "seed": seed})
    index.add(codes, rng.permutation(n).astype(np.int64) + 100, scales)
    queries = pack_codes(rng.choice([-1, 1], size=(3, planes, m)))
    return index, queries


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize(("planes", "weights", "metric"), CONFIGS)
def test_round_trip(tmp_path, planes, weights, metric, mmap):
    index, queries = make_index(planes, weights, metric)
    index.remove(index.keys[:3])  # tombstones are compacted away by save
    index.save(tmp_path)
    loaded = BinaryIndex.load(tmp_path, mmap=mmap)
    assert (loaded.m, loaded.planes, loaded.scaling, loaded.metric) == (
        100,
        planes,
        weights,
        metric,
    )
    assert loaded.meta == {"codec": "test", "seed": 0}
    assert len(loaded) == len(index) == 37
    np.testing.assert_array_equal(loaded.keys, index.keys)
    np.testing.assert_array_equal(loaded.codes, index.codes)
    for a, b in zip(loaded.search(queries, 7), index.search(queries, 7), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.scores(queries), index.scores(queries))
    # a loaded (also memory-mapped) index grows, forgets and saves again
    extra, _ = make_index(planes, weights, metric, n=5, seed=1)
    codes, scales = extra.get(extra.keys)
    if scales is not None:
        scales = scales * 4  # stored scales were divided by the norm
    loaded.add(codes, extra.keys + 10_000, scales)
    index.add(codes, extra.keys + 10_000, scales)
    loaded.remove(index.keys[:2])
    index.remove(index.keys[:2])
    loaded.save(tmp_path)
    again = BinaryIndex.load(tmp_path)
    for a, b in zip(again.search(queries, 50), index.search(queries, 50), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # only the current generation's files remain
    manifest = read_manifest(tmp_path)
    assert manifest["format_version"] == INDEX_FORMAT_VERSION
    current = {entry["file"] for entry in manifest["files"].values()}
    assert {p.name for p in tmp_path.glob("*.npy")} == current


def test_custom_plane_weights_survive(tmp_path):
    rng = np.random.default_rng(5)
    index = BinaryIndex(64, 2, "fixed", "ip", plane_weights=np.array([1.0, 0.3]))
    index.add(pack_codes(rng.choice([-1, 1], size=(10, 2, 64))), np.arange(10))
    index.save(tmp_path)
    loaded = BinaryIndex.load(tmp_path)
    np.testing.assert_array_equal(loaded.plane_weights, np.array([1.0, 0.3], dtype=np.float32))
    q = index.codes[:2]
    np.testing.assert_array_equal(loaded.scores(q), index.scores(q))


def test_reads_format_version_1(tmp_path):
    # The spine's layout: fixed file names, no checksums.
    index, queries = make_index(2, "fixed", "cosine")
    for name in ("codes", "ids", "norms"):
        np.save(tmp_path / f"{name}.npy", getattr(index, "keys" if name == "ids" else name))
    manifest = {
        "format": "binsearch-index",
        "format_version": 1,
        "m": 100,
        "planes": 2,
        "weights": "fixed",
        "metric": "cosine",
        "count": len(index),
        "arrays": ["codes", "ids", "norms"],
        "meta": {},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    loaded = BinaryIndex.load(tmp_path)
    for a, b in zip(loaded.search(queries, 5), index.search(queries, 5), strict=True):
        np.testing.assert_array_equal(a, b)


def _saved(tmp_path):
    index, _ = make_index(2, "per_document", "cosine")
    index.save(tmp_path)
    manifest = read_manifest(tmp_path)
    return manifest, tmp_path / manifest["files"]["codes"]["file"]


def test_refuses_other_versions_and_formats(tmp_path):
    manifest, _ = _saved(tmp_path)
    for version in (0, INDEX_FORMAT_VERSION + 1, "2"):
        (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format_version": version}))
        with pytest.raises(IndexFormatError, match="version"):
            BinaryIndex.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format": "other"}))
    with pytest.raises(IndexFormatError, match="not a"):
        BinaryIndex.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="unreadable"):
        BinaryIndex.load(tmp_path)
    with pytest.raises(IndexFormatError, match="not an index"):
        BinaryIndex.load(tmp_path / "nowhere")


def test_refuses_missing_truncated_and_corrupted_files(tmp_path):
    _, codes = _saved(tmp_path)
    data = codes.read_bytes()
    codes.write_bytes(data[:-8])
    for verify in (True, False):  # sizes are checked even without checksums
        with pytest.raises(IndexFormatError, match="truncated"):
            BinaryIndex.load(tmp_path, verify=verify)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    codes.write_bytes(bytes(flipped))
    with pytest.raises(IndexFormatError, match="checksum"):
        BinaryIndex.load(tmp_path)
    with pytest.raises(IndexFormatError, match="checksum"):
        BinaryIndex.load(tmp_path, mmap=True)
    codes.write_bytes(data)
    BinaryIndex.load(tmp_path)  # intact again
    codes.unlink()
    with pytest.raises(IndexFormatError, match="missing"):
        BinaryIndex.load(tmp_path)


def test_refuses_a_manifest_that_disagrees_with_the_arrays(tmp_path):
    manifest, _ = _saved(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "count": 41}))
    with pytest.raises(IndexFormatError, match="manifest says"):
        BinaryIndex.load(tmp_path, verify=False)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "arrays": ["codes"]}))
    with pytest.raises(IndexFormatError, match="arrays"):
        BinaryIndex.load(tmp_path)


CRASHING_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import index.segment_files
    from index import BinaryIndex, pack_codes

    path, crash_after = sys.argv[1], int(sys.argv[2])
    index_ = BinaryIndex.load(path)
    rng = np.random.default_rng(9)
    index_.add(pack_codes(rng.choice([-1, 1], size=(30, 1, 100))), np.arange(30) + 5000)
    real_write, calls = index.segment_files.atomic_write, [0]

    def dying_write(target, write):
        if calls[0] == crash_after:  # killed mid-write: a half-written temporary file
            with open(target.with_name("." + target.name + ".tmp"), "wb") as f:
                f.write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return real_write(target, write)

    index.segment_files.atomic_write = dying_write
    index_.save(path)
    """
)


@pytest.mark.parametrize("crash_after", [0, 1, 2])  # codes, ids, manifest
def test_a_save_killed_midway_leaves_the_old_index(tmp_path, crash_after):
    index, queries = make_index(1, "fixed", "ip")
    index.save(tmp_path)
    before = index.search(queries, 10)
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_SAVE, str(tmp_path), str(crash_after)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -9, result.stderr
    loaded = BinaryIndex.load(tmp_path)
    assert len(loaded) == 40
    for a, b in zip(loaded.search(queries, 10), before, strict=True):
        np.testing.assert_array_equal(a, b)
    loaded.save(tmp_path)  # and the next save cleans up
    assert len(BinaryIndex.load(tmp_path)) == 40


def test_faiss_export_and_import():
    faiss = pytest.importorskip("faiss")
    index, queries = make_index(1, "fixed", "ip", n=60, m=128)
    exported = index.to_faiss()
    assert exported.ntotal == 60
    distances, labels = exported.search(queries.reshape(3, -1).view(np.uint8), 10)
    # faiss ranks by Hamming distance h; our score is m - 2h (faiss breaks ties its own way)
    ref = index.scores(queries).astype(np.float64)
    for j in range(3):
        assert_topk_matches(128.0 - 2 * distances[j], labels[j], ref[j], index.keys, 10, False)
    back = BinaryIndex.from_faiss(exported)
    np.testing.assert_array_equal(back.codes, index.codes)
    np.testing.assert_array_equal(back.keys, index.keys)
    bare = faiss.IndexBinaryFlat(128)
    bare.add(index.codes.reshape(60, -1).view(np.uint8))
    np.testing.assert_array_equal(BinaryIndex.from_faiss(bare).keys, np.arange(60))
    with pytest.raises(ValueError, match="1-plane"):
        make_index(2, "fixed", "ip")[0].to_faiss()
