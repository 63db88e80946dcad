"""Held-out evaluation: the split, the streamed float truth and the codes' recall, against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from binsearch.collection.corpus import CorpusError
from binsearch.eval.holdout import (
    float_truth,
    holdout_count,
    holdout_rows,
    holdout_workload,
    overlap_per_query,
)
from binsearch.eval.runner import evaluate, plan
from binsearch.eval.sources import ArraySource, NpyFile, blocks, open_embeddings, unit_rows


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit rows around 20 centres: neighbours that mean something, no exact ties."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d))
    x = centres[rng.integers(0, 20, n)] + 0.6 * rng.standard_normal((n, d))
    return unit_rows(x.astype(np.float32))


def test_holdout_count_defaults_and_refusals():
    assert holdout_count(1_000_000) == 1000
    assert holdout_count(5183) == 518  # 10 % of a small corpus
    assert holdout_count(5183, 1000) == 1000
    with pytest.raises(CorpusError, match="cannot hold out"):
        holdout_count(10, 10)
    with pytest.raises(CorpusError, match="cannot hold out"):
        holdout_count(5)  # 10 % of 5 is no query at all


def test_the_split_is_seeded_and_removes_the_held_out_rows():
    x = clustered(3000, 16)
    a, b = holdout_workload(ArraySource(x), 200, seed=7), holdout_workload(ArraySource(x), 200, 7)
    assert np.array_equal(a.excluded, b.excluded) and a.query_ids == b.query_ids
    other = holdout_rows(3000, 200, seed=8)
    assert not np.array_equal(a.excluded, other)
    assert len(np.unique(a.excluded)) == 200 and a.searched == 2800
    np.testing.assert_allclose(a.queries, x[a.excluded], rtol=1e-6)
    searched = np.concatenate([rows for rows, _ in blocks(a.source, a.excluded, block=256)])
    assert len(searched) == 2800 and not np.isin(searched, a.excluded).any()
    _, truth = float_truth(a, 50, block=256)
    assert not np.isin(truth, a.excluded).any()  # a held-out document never finds itself


def test_streamed_float_truth_is_numpy_brute_force():
    x = clustered(2500, 24, seed=1)
    work = holdout_workload(ArraySource(x), 100, seed=2)
    scores, rows = float_truth(work, 30, block=333)  # blocks that do not divide the corpus
    keep = np.setdiff1d(np.arange(2500), work.excluded)
    sims = work.queries @ x[keep].T
    ref = keep[np.argsort(-sims, axis=1, kind="stable")[:, :30]]
    assert np.array_equal(rows, ref)
    np.testing.assert_allclose(
        scores, np.take_along_axis(sims, np.argsort(-sims, 1)[:, :30], 1), rtol=1e-5
    )


def test_npy_file_reads_rows_like_np_load(tmp_path):
    x = clustered(1000, 12).astype(np.float16)
    np.save(tmp_path / "corpus.npy", x)
    src = NpyFile(tmp_path / "corpus.npy")
    ref = unit_rows(np.load(tmp_path / "corpus.npy"))
    assert (src.n, src.dim) == (1000, 12)
    np.testing.assert_allclose(src.read(990, 2000), ref[990:], rtol=1e-6)
    picks = np.array([999, 0, 512])
    np.testing.assert_allclose(src.take(picks), ref[picks], rtol=1e-6)
    (tmp_path / "ids.json").write_text('{"corpus_ids": ["a", "b"]}')
    with pytest.raises(CorpusError, match="lists 2 ids for 1,000 rows"):
        open_embeddings(tmp_path)
    np.save(tmp_path / "ints.npy", np.ones((4, 3), np.int32))
    with pytest.raises(CorpusError, match="float"):
        NpyFile(tmp_path / "ints.npy")
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(CorpusError, match="not a .npy"):
        NpyFile(tmp_path / "text.npy")


def residual_scores(q: np.ndarray, x: np.ndarray, planes: int) -> np.ndarray:
    """Plain numpy residual binarization of both sides, cosine of the code values."""

    def code(v):
        r, out = v.astype(np.float64), np.zeros(v.shape)
        for _ in range(planes):
            s = np.where(r >= 0, 1.0, -1.0)
            out += np.abs(r).mean(1, keepdims=True) * s
            r = v - out
        return out

    cq, cx = code(q), code(x)
    return (cq @ cx.T) / np.linalg.norm(cx, axis=1)


def test_recall_of_a_code_matches_a_numpy_reference():
    x = clustered(4000, 64, seed=3)
    work = holdout_workload(ArraySource(x), 150, seed=0)
    rows, recalls = evaluate(work, ["residual"], [2], k=10, progress=False, rescore=True)
    assert rows[0]["codec"] == "float" and rows[0]["float_recall@10"] == 1.0
    got = rows[1]
    keep = np.setdiff1d(np.arange(4000), work.excluded)
    truth = keep[np.argsort(-(work.queries @ x[keep].T), axis=1, kind="stable")[:, :100]]
    ranked = keep[np.argsort(-residual_scores(work.queries, x[keep], 2), 1, kind="stable")[:, :100]]
    ref10 = overlap_per_query(ranked, truth, 10)
    assert got["float_recall@10"] == pytest.approx(ref10.mean(), abs=0.01)
    assert got["float_recall@100"] == pytest.approx(
        overlap_per_query(ranked, truth, 100).mean(), abs=0.01
    )
    assert 0.3 < got["float_recall@10"] < 0.99  # neither trivial nor broken
    lo, hi = got["float_recall@10_ci95"]
    assert lo < got["float_recall@10"] < hi
    assert got["bits_per_vector"] == (64 + 32) * 2
    assert recalls[("residual", 2, False)].shape == (150,)
    rescored = rows[2]  # the same index, 4x candidates re-ranked by the float query
    assert rescored["rescore"] and rescored["bits_per_vector"] == got["bits_per_vector"]
    assert rescored["float_recall@10"] > got["float_recall@10"]


def test_overlap_per_query_by_hand():
    ranked = np.array([[1, 2, 3], [4, 5, 6]])
    ref = np.array([[3, 2, 9], [7, 8, 9]])
    np.testing.assert_allclose(overlap_per_query(ranked, ref, 3), [2 / 3, 0.0])
    # a reference shorter than k (a tiny corpus): scored against what exists
    np.testing.assert_allclose(overlap_per_query(np.array([[5, 6]]), np.array([[6, -1]]), 2), [1.0])


def test_plan_runs_sign_once_at_one_bit():
    assert plan(["grid", "sign", "rabitq"], [1, 2]) == [
        ("grid", 1),
        ("grid", 2),
        ("sign", 1),
        ("rabitq", 1),
        ("rabitq", 2),
    ]
