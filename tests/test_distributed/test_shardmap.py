"""Routing and merging without Ray: jump hash, stable ids, the shard map file, the top-k merge."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binsearch.distributed.merge import merge_packed
from binsearch.distributed.shardmap import (
    SHARD_MAP,
    ShardMap,
    ShardMapError,
    is_sharded,
    jump_hash,
    route,
    shard_names,
    stable_hash,
)


def test_stable_hash_is_blake2b_and_routes_are_frozen() -> None:
    import hashlib

    for s in ["a", "doc-17", "ünïcode"]:
        expected = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
        assert stable_hash(s) == expected
    # Frozen: a change here would send stored documents to other shards.
    ids = ["a", "doc-17", "ünïcode", "0", "1"]
    assert route(ids, 4).tolist() == [3, 3, 1, 0, 2]
    assert route(ids, 16).tolist() == [10, 7, 6, 0, 14]


def test_jump_hash_matches_reference_values() -> None:
    # Reference implementation (Lamping & Veach 2014, C) gives these buckets.
    assert [jump_hash(k, 4) for k in (0, 1, 2**63)] == [0, 0, 3]
    assert [jump_hash(k, 1) for k in (0, 5, 2**64 - 1)] == [0, 0, 0]
    with pytest.raises(ValueError):
        jump_hash(1, 0)


def test_route_is_balanced_and_moves_few_ids_when_growing() -> None:
    ids = [f"doc-{i}" for i in range(20_000)]
    four = route(ids, 4)
    assert four.dtype == np.int64 and four.min() >= 0 and four.max() <= 3
    counts = np.bincount(four, minlength=4)
    assert np.all(np.abs(counts - 5000) < 300)  # binomial sd ~61
    five = route(ids, 5)
    moved = four != five
    assert np.all(five[moved] == 4)  # ids only ever move to the new shard
    assert abs(moved.mean() - 0.2) < 0.02


def test_shard_map_round_trip_and_errors(tmp_path) -> None:
    assert not is_sharded(tmp_path)
    with pytest.raises(ShardMapError, match="not a sharded collection"):
        ShardMap.load(tmp_path)
    m = ShardMap(shard_names(3), {"codec": "residual", "dim": 8}, reserved_keys=70_000)
    m.save(tmp_path)
    assert is_sharded(tmp_path)
    back = ShardMap.load(tmp_path)
    assert back.shards == ["shard-000", "shard-001", "shard-002"]
    assert back.reserved_keys == 70_000 and back.config["dim"] == 8
    assert back.shard_paths(tmp_path)[1] == (tmp_path / "shard-001").resolve()
    raw = json.loads((tmp_path / SHARD_MAP).read_text())
    raw["version"] = 99
    (tmp_path / SHARD_MAP).write_text(json.dumps(raw))
    with pytest.raises(ShardMapError, match="version 99"):
        ShardMap.load(tmp_path)
    (tmp_path / SHARD_MAP).write_text("{not json")
    with pytest.raises(ShardMapError, match="unreadable"):
        ShardMap.load(tmp_path)


def _pack(scores: list[np.ndarray], keys: list[np.ndarray], k: int) -> dict:
    """A shard's answer: its own top-k per query by (score desc, key asc)."""
    counts, s_out, k_out = [], [], []
    for s, kk in zip(scores, keys, strict=True):
        order = np.lexsort((kk, -s))[:k]
        counts.append(len(order))
        s_out.append(s[order])
        k_out.append(kk[order])
    ids = [f"id{int(x)}" for x in np.concatenate(k_out)]
    return {
        "counts": np.array(counts, np.int64),
        "scores": np.concatenate(s_out).astype(np.float32),
        "keys": np.concatenate(k_out).astype(np.int64),
        "ids": ids,
        "rows": [{"id": i} for i in ids],
    }


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 60),
    shards=st.integers(1, 5),
    k=st.integers(1, 12),
    levels=st.integers(1, 4),  # few distinct scores: many ties
    seed=st.integers(0, 2**32 - 1),
)
def test_merge_equals_brute_force_top_k(
    n: int, shards: int, k: int, levels: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    nq = 3
    scores = rng.integers(0, levels, size=(nq, n)).astype(np.float32) / levels
    keys = rng.permutation(10 * n + 1)[:n].astype(np.int64)  # unique, unordered
    owner = rng.integers(0, shards, size=n)
    packed = [
        _pack([scores[q][owner == s] for q in range(nq)], [keys[owner == s]] * nq, k)
        for s in range(shards)
    ]
    merged = merge_packed(packed, nq, k)
    for q in range(nq):
        order = np.lexsort((keys, -scores[q]))[:k]  # the one-collection order
        got_scores, got_keys, got_ids, got_rows = merged[q]
        np.testing.assert_array_equal(got_keys, keys[order])
        np.testing.assert_array_equal(got_scores, scores[q][order])
        assert got_ids == [f"id{int(x)}" for x in keys[order]]
        assert [r["id"] for r in got_rows] == got_ids


def test_merge_refuses_a_shard_answering_other_queries() -> None:
    p = _pack([np.array([1.0])], [np.array([3])], 2)
    with pytest.raises(ValueError, match="1 queries, expected 2"):
        merge_packed([p], 2, 2)
