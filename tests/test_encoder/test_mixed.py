"""Mixed precision: per-layer int8 sensitivity, the plan, and the mixed model.

References: hand-worked plans; the sentence embedding of MiniLM never reads the
BERT pooler (mean pooling), so its sensitivity is exactly 0; the float32 model
itself for fidelity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from binsearch.encoder import Encoder
from binsearch.encoder import mixed as M
from binsearch.encoder import precision as P

TEXTS = [
    "What is the effect of vitamin D on bone density?",
    "lift of a wing in a propeller slipstream",
    " ".join(["Long documents are truncated at the model's maximum sequence length."] * 30),
]


@pytest.fixture(scope="module")
def model():
    return Encoder(precision="fp32", backend="torch").model


def test_plan_takes_the_least_sensitive_layers_within_the_budget():
    scores = {"a": 1e-4, "b": 3e-4, "c": 2e-4, "d": 0.0}
    assert M.plan(scores, budget=3.5e-4) == ["d", "a", "c"]
    assert M.plan(scores, budget=0.0) == ["d"]
    assert M.plan(scores, budget=1.0) == ["d", "a", "c", "b"]
    assert M.plan({}, budget=1.0) == []


def test_sensitivities_cover_every_linear_and_the_unused_pooler_costs_nothing(model):
    def encode(m, texts):
        return P.encode_normalized(m, texts, 8)

    scores = M.sensitivities(model, TEXTS, encode, base="fp32")
    assert set(scores) == set(M.linear_names(model)) and len(scores) > 30
    assert all(v >= 0 for v in scores.values())
    pooler = [n for n in scores if "pooler" in n]
    assert pooler and all(scores[n] == 0.0 for n in pooler)
    assert max(scores.values()) > 1e-5  # quantising a real layer costs something


def test_a_mixed_model_runs_its_plan_in_int8_and_the_rest_in_bf16(model):
    names = M.linear_names(model)
    chosen = [n for n in names if n.endswith("attention.self.query")]
    mixed = M.build_mixed(model, chosen, base="bf16")
    modules = dict(mixed.named_modules())
    assert all(isinstance(modules[n], M.Int8Island) for n in chosen)
    rest = [n for n in names if n not in chosen]
    assert all(modules[n].weight.dtype == torch.bfloat16 for n in rest)
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched
    ref = P.encode_normalized(model, TEXTS)
    cos = np.sum(P.encode_normalized(mixed, TEXTS) * ref, axis=1)
    assert cos.min() > 0.999, cos
    with pytest.raises(ValueError, match="no Linear layer"):
        M.build_mixed(model, ["nope"])
    with pytest.raises(ValueError, match="bf16 or fp32"):
        M.build_mixed(model, [], base="int8")


def test_forced_mixed_precision_encodes_faithfully_with_a_measured_plan():
    enc = Encoder(precision="mixed", backend="torch")
    got = enc.encode(TEXTS, 8)
    assert enc.precision_used == "mixed"
    ref = Encoder(precision="fp32", backend="torch").encode(TEXTS, 8)
    cos = np.sum(got * ref, axis=1)
    assert cos.mean() >= P.MEAN_COSINE, cos
    islands = [m for m in enc.torch_model().modules() if isinstance(m, M.Int8Island)]
    assert islands  # the plan put some layers in int8


def test_the_chooser_reports_mixed_with_its_plan_or_why_it_was_skipped(model):
    out = {m.precision: m for m in P.measure_precisions(model, TEXTS, rounds=1)}
    assert set(out) == set(P.CANDIDATES)
    m = out["mixed"]
    if m.note.startswith("not measured"):
        assert m.layers is None and not m.eligible
    else:
        assert m.layers and set(m.layers) <= set(M.linear_names(model))
