"""Metrics by hand, and `binsearch eval` against an independent numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from binsearch.eval.metrics import bootstrap_ci, ndcg_at_k, overlap_at_k, recall_at_k
from binsearch.eval.quality import evaluate_codecs, load_embeddings

MINILM = "embeddings/all-MiniLM-L6-v2"


def test_ndcg_worked_by_hand():
    gains = {"a": 2, "b": 1}
    # DCG = (2^1-1)/log2(2) + (2^2-1)/log2(4) = 1 + 1.5; ideal = 3/1 + 1/log2(3).
    expected = 2.5 / (3 + 1 / np.log2(3))
    assert ndcg_at_k(["b", "x", "a"], gains, k=10) == pytest.approx(expected)
    assert ndcg_at_k(["a", "b"], gains) == pytest.approx(1.0)
    assert ndcg_at_k(["x"], gains) == 0.0


def test_recall_and_overlap():
    assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 3, "c": 1}, k=2) == pytest.approx(1 / 3)
    run = np.array([[1, 2, 3], [4, 5, 6]])
    ref = np.array([[3, 2, 9], [7, 8, 9]])
    assert overlap_at_k(run, ref, k=3) == pytest.approx((2 / 3 + 0) / 2)


def test_bootstrap_interval_brackets_the_mean():
    values = np.random.default_rng(0).random(300)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi and hi - lo < 0.1


def residual_reference(x: np.ndarray, planes: int) -> np.ndarray:
    """Plain numpy residual binarization, independent of the package: code values (n, d)."""
    r, v = x.astype(np.float64), np.zeros(x.shape)
    for _ in range(planes):
        s = np.where(r >= 0, 1.0, -1.0)
        v += np.abs(r).mean(1, keepdims=True) * s
        r = x - v
    return v


def reference_metrics(data, planes):
    from binsearch.eval.quality import float_topk, score_run

    _, float_rows = float_topk(data.corpus, data.queries, 100)
    vq, vd = residual_reference(data.queries, planes), residual_reference(data.corpus, planes)
    scores = (vq @ vd.T) / np.linalg.norm(vd, axis=1)
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    return score_run(data, ranked, float_rows, 10)


def test_bundled_cranfield_reproduces_float_and_rises_with_bits(bundled):
    data = load_embeddings(bundled, bundled / MINILM)
    assert len(data.query_ids) == 225
    rows = evaluate_codecs(data, ["sign", "residual"], [1, 2, 3, 4], progress=False)
    float_row = rows[0]
    assert float_row["codec"] == "float"
    assert float_row["ndcg@10"] == pytest.approx(0.3679, abs=5e-5)  # data README's figure
    residual = [r for r in rows if r["codec"] == "residual"]
    recalls = [r["float_recall@10"] for r in residual]
    assert recalls == sorted(recalls) and recalls[-1] - recalls[0] > 0.2
    assert [r["bits_per_vector"] for r in residual] == [(384 + 32) * p for p in (1, 2, 3, 4)]
    # The index path agrees with a plain numpy reference up to tie order.
    ref = reference_metrics(data, 2)
    row = next(r for r in residual if r["bits"] == 2)
    assert row["float_recall@10"] == pytest.approx(ref["float_recall@10"], abs=0.01)
    assert row["ndcg@10"] == pytest.approx(ref["ndcg@10"], abs=0.005)


def test_scifact_matches_the_numpy_reference(shared_data):
    root = shared_data / "scifact"
    data = load_embeddings(root, root / MINILM)
    rows = evaluate_codecs(data, ["sign", "residual"], [1, 2], progress=False)
    by = {(r["codec"], r["bits"]): r for r in rows}
    assert by[("float", 32)]["ndcg@10"] == pytest.approx(0.6451, abs=5e-5)
    ref = reference_metrics(data, 2)
    got = by[("residual", 2)]
    assert got["float_recall@10"] == pytest.approx(ref["float_recall@10"], abs=0.01)
    assert got["ndcg@10"] == pytest.approx(ref["ndcg@10"], abs=0.005)
    # Sign codes with Hamming ranking, by numpy: m - 2 * hamming == <sign q, sign d>.
    sq, sd = np.where(data.queries >= 0, 1, -1), np.where(data.corpus >= 0, 1, -1)
    hamming_rank = np.argsort(-(sq @ sd.T), axis=1, kind="stable")[:, :10]
    from binsearch.eval.quality import float_topk

    _, float_rows = float_topk(data.corpus, data.queries, 10)
    assert by[("sign", 1)]["float_recall@10"] == pytest.approx(
        overlap_at_k(hamming_rank, float_rows), abs=0.01
    )
