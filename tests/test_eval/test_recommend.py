"""The recommendation on constructed results: fewest bits reaching the target, and its interval."""

from __future__ import annotations

import numpy as np
import pytest

from binsearch.eval.recommend import describe, index_bytes, index_command, recommend


def constructed(spec):
    """Rows and per-query recalls from ``(codec, bits, bits/vector, per-query values)``."""
    rows = [{"codec": "float", "bits": 32, "bits_per_vector": 12288, "float_recall@10": 1.0}]
    recalls = {}
    for codec, bits, bpv, values in spec:
        values = np.asarray(values, dtype=np.float64)
        rows.append(
            {"codec": codec, "bits": bits, "bits_per_vector": bpv, "float_recall@10": values.mean()}
        )
        recalls[(codec, bits, False)] = values
    return rows, recalls


def steady(mean, n=400):
    """Per-query recalls of a given mean with a small spread (tight interval)."""
    rng = np.random.default_rng(int(mean * 1000))
    v = np.clip(mean + 0.02 * rng.standard_normal(n), 0, 1)
    return v - v.mean() + mean


def test_the_fewest_bits_reaching_the_target_win():
    rows, recalls = constructed(
        [
            ("grid", 4, 1568, steady(0.99)),
            ("grid", 1, 448, steady(0.85)),
            ("grid", 2, 800, steady(0.97)),
            ("residual", 2, 832, steady(0.96)),
            ("rabitq", 2, 928, steady(0.98)),  # the peer: measured, never recommended
            ("rabitq", 1, 448, steady(0.995)),
        ]
    )
    rec = recommend(rows, recalls, 0.95, 10, 1_000_000, corpus="docs.jsonl")
    assert (rec.codec, rec.bits, rec.bits_per_vector) == ("grid", 2, 800)
    assert rec.recall == pytest.approx(0.97)
    lo, hi = rec.ci95
    assert lo < 0.97 < hi and lo > 0.95 and rec.confident and rec.safe is None
    assert rec.command == "binsearch index docs.jsonl --out INDEX --codec grid --bits 2"
    assert rec.memory_bytes == 1_000_000 * (800 // 8 + 8) == index_bytes(1_000_000, 800)
    text = describe(rec)
    assert "grid at 2 bits" in text and "108.0 MB" in text and rec.command in text


def test_an_interval_below_the_target_names_the_safe_choice():
    noisy = np.r_[np.ones(30), np.full(10, 0.65)]  # mean 0.9125, wide interval
    rows, recalls = constructed(
        [("grid", 1, 448, noisy), ("grid", 2, 800, steady(0.97)), ("grid", 4, 1568, steady(0.99))]
    )
    rec = recommend(rows, recalls, 0.9, 10, 5000, embeddings="emb", model="my-model")
    assert (rec.codec, rec.bits) == ("grid", 1) and not rec.confident
    assert rec.ci95[0] < 0.9
    assert rec.safe["codec"] == "grid" and rec.safe["bits"] == 2
    assert rec.command == (
        "binsearch index CORPUS --out INDEX --model my-model --embeddings emb --codec grid --bits 1"
    )
    assert "lower end" in describe(rec)


def test_no_code_reaching_the_target_says_which_came_closest():
    rows, recalls = constructed([("sign", 1, 384, steady(0.6)), ("grid", 1, 448, steady(0.8))])
    rec = recommend(rows, recalls, 0.95, 10, 100)
    assert rec.codec is None and rec.command is None
    assert rec.best["codec"] == "grid"
    assert "No code measured reaches" in describe(rec)


def test_the_command_quotes_paths_with_spaces():
    line = index_command("sign", 1, "my docs.csv")
    assert line == "binsearch index 'my docs.csv' --out INDEX --codec sign --bits 1"


def test_rescoring_counts_when_it_is_what_reaches_the_target():
    rows, recalls = constructed([("grid", 1, 448, steady(0.90)), ("grid", 2, 800, steady(0.97))])
    rows.append(
        {
            "codec": "grid",
            "bits": 1,
            "bits_per_vector": 448,
            "float_recall@10": 0.96,
            "rescore": True,
        }
    )
    recalls[("grid", 1, True)] = steady(0.96)
    rec = recommend(rows, recalls, 0.95, 10, 1000, corpus="c.txt")
    assert (rec.codec, rec.bits, rec.rescore) == ("grid", 1, True)
    assert rec.command == "binsearch index c.txt --out INDEX --codec grid --bits 1"
    assert "with rescoring" in describe(rec) and "rescore=True" in describe(rec)
