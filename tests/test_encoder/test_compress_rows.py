"""The word table by rows: per-row plane counts from token counts (issue 25).

References: brute-force enumeration of every plan, each row's own weight-only
fit, the bytes of the arrays written to disk. Models are tiny random BERTs
(the fixture of ``test_compress``), never the real MiniLM.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from test_compress import SENTENCES, TEXTS, one_torch_thread, tiny_model  # noqa: F401

from binsearch.cli.common import UsageError
from binsearch.cli.compress import calibration_sources, calibration_texts
from binsearch.codes.quantize import binarize_weight, dequantize_weight
from binsearch.encoder.compress.compressor import compress_encoder
from binsearch.encoder.compress.format import (
    CompressedEncoder,
    CompressionError,
    load_compressed,
    read_compressed,
    save_compressed,
)
from binsearch.encoder.compress.rows import (
    convex_errors,
    plan_rows,
    quantize_rows,
    row_cost,
    row_errors,
    row_importance,
    table_row_budgets,
    widths_of,
)

TABLE = "embeddings.word_embeddings.weight"


def brute_force(errors, importance, cols, budget):
    """The least ``sum importance * error`` over every plan within the budget."""
    rows, kmax = errors.shape
    best = np.inf
    for plan in itertools.product(range(1, kmax + 1), repeat=rows):
        plan = np.array(plan)
        if row_cost(plan, cols).sum() <= budget * rows * cols + 1e-9:
            best = min(best, float((importance * errors[np.arange(rows), plan - 1]).sum()))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_plan_matches_brute_force_on_convex_errors(seed):
    rng = np.random.default_rng(seed)
    rows, kmax, cols = 5, 4, 64
    # convex, falling errors: positive steps that shrink with each plane
    steps = np.sort(rng.random((rows, kmax - 1)), axis=1)[:, ::-1] * rng.random((rows, 1))
    errors = 1.0 - np.concatenate([np.zeros((rows, 1)), np.cumsum(steps, axis=1)], axis=1) + 2
    importance = rng.random(rows) ** 3
    for budget in (row_cost(1, cols) / cols, 1.9, 2.6, 3.3, 4.6):
        plan = plan_rows(errors, importance, cols, budget)
        assert row_cost(plan, cols).sum() <= budget * rows * cols
        loss = float((importance * errors[np.arange(rows), plan - 1]).sum())
        assert loss == pytest.approx(brute_force(errors, importance, cols, budget), rel=1e-12)


def test_plan_never_beaten_by_brute_force_on_the_hull_it_optimises():
    rng = np.random.default_rng(7)
    rows, kmax, cols = 4, 5, 64
    errors = np.sort(rng.random((rows, kmax)), axis=1)[:, ::-1].copy()  # falling, not convex
    hull = convex_errors(errors)
    assert np.all(hull <= errors + 1e-15) and np.all(np.diff(hull, 2, axis=1) >= -1e-12)
    importance = rng.random(rows)
    for budget in (1.8, 2.9, 4.1):
        plan = plan_rows(errors, importance, cols, budget)
        assert row_cost(plan, cols).sum() <= budget * rows * cols
        loss = float((importance * hull[np.arange(rows), plan - 1]).sum())
        assert loss == pytest.approx(brute_force(hull, importance, cols, budget), rel=1e-12)


def test_convex_hull_worked_example():
    errors = np.array([[10.0, 9.0, 2.0, 1.0]])  # 9 lies above the line from 10 to 2
    np.testing.assert_allclose(convex_errors(errors), [[10.0, 6.0, 2.0, 1.0]])


def test_plan_refuses_a_budget_below_one_plane_and_keeps_unseen_rows_at_one():
    errors = np.tile([4.0, 2.0, 1.0, 0.5], (6, 1))
    with pytest.raises(CompressionError, match="below one plane per row"):
        plan_rows(errors, np.ones(6), 64, 1.0)
    importance = np.array([5.0, 1.0, 0, 0, 0, 0])  # four rows never seen
    plan = plan_rows(errors, importance, 64, 8.0)
    assert plan.tolist() == [4, 4, 1, 1, 1, 1]  # bits only where they lower the loss


def test_row_errors_skip_wide_fits_outside_the_candidates():
    w = np.random.default_rng(1).normal(size=(6, 64)).astype(np.float32)
    errors = row_errors(w, candidates=np.array([0, 3]), max_planes=6)
    assert np.isfinite(errors[:, :4]).all() and np.isinf(errors[[1, 2, 4, 5], 4:]).all()
    assert np.all(np.diff(errors[[0, 3]], axis=1) < 0)  # more planes, less error
    plan = plan_rows(errors, np.ones(6), 64, 7.0)
    assert plan[[1, 2, 4, 5]].max() <= 4 and plan[[0, 3]].max() > 4


def test_importance_weighs_each_source_alike():
    big = np.array([1000.0, 0, 0, 0])
    small = np.array([0, 1.0, 0, 0])
    imp = row_importance([big, small], special_ids=[3], power=1.0)
    assert imp[0] == imp[1] == imp[3] == 0.5 and imp[2] == 0
    with pytest.raises(CompressionError):
        row_importance([np.zeros(4)])


def test_budgets_offered_for_the_table():
    assert table_row_budgets(3.0, 384) == (1.6, 2.1, 2.6)
    floor = row_cost(1, 384) / 384 + 0.1
    assert table_row_budgets(2.0, 384) == (round(floor, 3), 1.6)


def tiered(rng, rows=40, cols=96):
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    widths = rng.integers(1, 9, size=rows)
    widths[:3] = [1, 8, 1]
    return w, widths, quantize_rows(w, widths, TABLE, iters=2)


def test_rows_decode_to_their_own_fit_and_bits_are_counted_exactly(tmp_path):
    rng = np.random.default_rng(3)
    w, widths, tiers = tiered(rng)
    rows, cols = w.shape
    table = CompressedEncoder(tiers).state_dict({TABLE: w.shape})[TABLE]
    for r in (0, 1, 2, 17):  # each row, rare (1 plane) or not, is its own weight-only fit
        own = dequantize_weight(*binarize_weight(w[r : r + 1], int(widths[r]), iters=2))
        np.testing.assert_allclose(table[r], own[0], rtol=1e-3, atol=1e-3)  # float16 scales
        assert np.abs(table[r]).min() > 0
    np.testing.assert_array_equal(widths_of(tiers, TABLE, rows), widths)
    # stored bits: signs (whole uint64 words), float16 scales, one uint8 width per row
    expected = sum(int(k) * (128 + 16) + 8 for k in widths)
    stored = sum(q.stored_bits() for q in tiers.values())
    assert stored == expected
    # ... which is exactly what the arrays written to disk hold
    arrays = {k: q for k, q in tiers.items()}
    on_disk = sum(8 * q.planes.nbytes + 8 * q.scales.nbytes for q in arrays.values())
    assert on_disk + 8 * widths.astype(np.uint8).nbytes == stored
    bits = CompressedEncoder(tiers).bits_per_weight()
    assert bits["stored_bits"] == pytest.approx(expected / (rows * cols), abs=0)
    assert bits["sign_bits"] == pytest.approx(widths.sum() / rows)


@pytest.fixture(scope="module")
def tiny_rows(tiny_model):  # noqa: F811
    """The tiny model at 3 bits, its table by rows from counts on the test texts."""
    table_texts = {"a": TEXTS[:20], "b": SENTENCES}
    return compress_encoder(
        str(tiny_model), 3.0, TEXTS, sensitivity_texts=4, progress=False, table_texts=table_texts
    )


def test_whole_model_with_row_table_round_trips(tiny_model, tiny_rows, tmp_path):  # noqa: F811
    model, compressed, report = tiny_rows
    keys = [k for k in compressed.tensors if k.startswith(TABLE + "@")]
    assert keys and TABLE not in compressed.tensors
    assert compressed.bits_per_weight()["stored_bits"] <= 3.0 + 1e-9
    widths = widths_of(compressed.tensors, TABLE, model[0].auto_model.config.vocab_size)
    assert widths.min() >= 1 and widths.max() > widths.min()
    info = compressed.config["table_rows"]
    assert set(info["sources"]) == {"a", "b"}
    assert sum(v["rows"] for v in info["coverage"]["a"].values()) == widths.size
    assert report[TABLE]["choice"][0] == "rows"
    out = tmp_path / "rows"
    config = save_compressed(model, compressed, out)
    assert config["format"] == 3
    assert config["bits_per_weight"] == compressed.bits_per_weight()
    with np.load(out / "quantized.npz") as npz:
        np.testing.assert_array_equal(npz[TABLE + ".widths"], widths)
        assert not [f for f in npz.files if f.endswith(".rows")]  # implied by the widths
    back = read_compressed(out)
    assert back.bits_per_weight() == compressed.bits_per_weight()
    state = load_compressed(out)[0].auto_model.state_dict()
    np.testing.assert_array_equal(
        state[TABLE].numpy(), compressed.state_dict({TABLE: tuple(widths.shape) + (64,)})[TABLE]
    )
    # a query of rare tokens (rows never counted, at one plane) still runs through the model
    rare = [int(i) for i in np.flatnonzero(widths == 1) if i >= 5][:6]  # not [PAD] (zeros)
    assert len(rare) == 6 and np.abs(state[TABLE].numpy()[rare]).min() > 0
    tok = model.tokenizer
    ids = torch.tensor([[tok.cls_token_id, *rare, tok.sep_token_id]])
    with torch.no_grad():
        hidden = load_compressed(out)[0].auto_model(input_ids=ids).last_hidden_state
    assert torch.isfinite(hidden).all() and hidden.abs().sum() > 0


def test_older_formats_load_and_broken_widths_are_refused(tiny_rows, tmp_path):
    model, compressed, _ = tiny_rows
    out = tmp_path / "rows"
    save_compressed(model, compressed, out)
    expected = read_compressed(out).state_dict()
    # format 2: the same tiers with explicit row indices
    explicit = {
        k: type(q)(q.planes, q.scales, q.cols, q.rows) for k, q in compressed.tensors.items()
    }
    old = tmp_path / "format2"
    save_compressed(model, CompressedEncoder(explicit, dict(compressed.config)), old)
    config = json.loads((old / "binsearch_compressed.json").read_text())
    config["format"] = 2
    (old / "binsearch_compressed.json").write_text(json.dumps(config))
    for name, w in read_compressed(old).state_dict().items():
        np.testing.assert_array_equal(w, expected[name])
    load_compressed(old)
    # format 3 without its widths array: one clear line
    with np.load(out / "quantized.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if not k.endswith(".widths")}
    np.savez(out / "quantized.npz", **arrays)
    with pytest.raises(CompressionError, match="not a readable compressed model"):
        read_compressed(out)


def test_calibration_sources_and_equal_shares(tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    sources = calibration_sources("cranfield", [str(corpus)])
    assert list(sources) == ["cranfield", str(corpus)] and len(sources[str(corpus)]) == 6
    texts = calibration_texts({"a": ["a"] * 3, "b": ["b"] * 500, "c": ["c"] * 500}, 103)
    assert len(texts) == 103 and texts.count("a") == 3 and texts.count("b") in (50, 51)
    with pytest.raises(UsageError, match="unknown"):
        calibration_sources("cranfield,nope", [])
    with pytest.raises(UsageError, match="no calibration text"):
        calibration_sources("none", [])


def test_cli_keeps_the_table_uniform_with_cranfield_counts_alone(tiny_model, tmp_path, capsys):  # noqa: F811
    from binsearch.cli.main import main

    out = tmp_path / "uniform"
    args = ["compress-encoder", "--model", str(tiny_model), "--sources", "cranfield"]
    assert main([*args, "--distill", "none", "--minutes", "0.3", "--out", str(out)]) == 0
    assert "the word table stays uniform" in capsys.readouterr().err
    config = json.loads((out / "binsearch_compressed.json").read_text())
    assert "table_rows" not in config and TABLE in config["tensors"]
