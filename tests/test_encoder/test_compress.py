"""Encoder compression: the quantizer core on weights, the format, allocation, GPTQ,
distillation, the CLI.

References are independent: brute-force enumeration of every sign pattern or
plan, numpy least squares, hand-worked values, the index's own bit packing.
Models are tiny random BERTs built on the spot (no download, no real MiniLM).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from binsearch.cli.main import main
from binsearch.codes.quantize import (
    alternating_binarize,
    binarize_weight,
    dequantize_weight,
    nearest_planes,
    nearest_planes_torch,
    quantize_ste,
    residual_binarize,
    sign_patterns,
)
from binsearch.encoder.compress.compressor import (
    allocate_budget,
    check_bits,
    compress_encoder,
    gptq_binarize,
    quantizable_weights,
)
from binsearch.encoder.compress.format import (
    CompressionError,
    QuantizedTensor,
    directory_size,
    is_compressed,
    load_compressed,
    read_compressed,
    save_compressed,
)
from binsearch.encoder.model import Encoder

SENTENCES = [
    "boundary layer transition on a flat plate",
    "heat transfer to a blunt body in hypersonic flow",
    "the lift of a thin wing at small angles of attack",
    "buckling of thin cylindrical shells under axial load",
    "shock waves in a supersonic nozzle",
    "vibration of a cantilever beam",
]


def sq_error(x, signs, scales):
    return float(((x.astype(np.float64) - (signs * scales.astype(np.float64)).sum(0)) ** 2).sum())


# --- the quantizer core on weights ------------------------------------------------------------


def test_sign_patterns_enumerate_all_combinations():
    p = sign_patterns(3)
    assert p.shape == (8, 3)
    assert {tuple(r) for r in p.tolist()} == set(itertools.product((-1, 1), repeat=3))


def test_nearest_planes_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 17)).astype(np.float32)
    _, scales = residual_binarize(x, 3, refit=True)
    signs = nearest_planes(x, scales)
    recon = (signs * scales).sum(0)
    for r in range(5):
        # every representable value of row r, by enumeration
        values = [np.dot(scales[:, r, 0], s) for s in itertools.product((-1, 1), repeat=3)]
        best = np.min(np.abs(x[r][:, None] - np.array(values)[None, :]), axis=1)
        np.testing.assert_allclose(np.abs(x[r] - recon[r]), best, atol=1e-6)


def test_nearest_planes_along_axis_zero():
    x = np.random.default_rng(1).normal(size=(9, 4)).astype(np.float32)
    _, scales = residual_binarize(x, 2, axis=0, refit=True)
    direct = nearest_planes(x, scales, axis=0)
    via_transpose = nearest_planes(x.T, np.transpose(scales, (0, 2, 1)), axis=-1)
    np.testing.assert_array_equal(direct, np.transpose(via_transpose, (0, 2, 1)))


def test_nearest_planes_worked_example():
    # scales (2, 1): values -3, -1, 1, 3; 0.9 -> 1 = (+2)+(-1); -2.2 -> -3; 5 -> 3
    scales = np.array([2.0, 1.0], dtype=np.float32).reshape(2, 1, 1)
    signs = nearest_planes(np.array([[0.9, -2.2, 5.0]]), scales)
    assert signs[:, 0, :].T.tolist() == [[1, -1], [-1, -1], [1, 1]]


def test_torch_nearest_planes_matches_numpy():
    x = np.random.default_rng(2).normal(size=(6, 3, 8)).astype(np.float32)
    _, scales = residual_binarize(x, 4, refit=True)
    expected = nearest_planes(x, scales)
    got = nearest_planes_torch(torch.from_numpy(x), torch.from_numpy(scales))
    np.testing.assert_array_equal(got.numpy(), expected)


def test_quantize_ste_gradients():
    x = torch.tensor([[0.9, -2.2, 5.0]], requires_grad=True)
    scales = torch.tensor([2.0, 1.0]).reshape(2, 1, 1).requires_grad_(True)
    y = quantize_ste(x, scales)
    assert y.tolist() == [[1.0, -3.0, 3.0]]
    weights = torch.tensor([[1.0, 10.0, 100.0]])
    (y * weights).sum().backward()
    assert x.grad.tolist() == weights.tolist()  # straight through
    # d/d alpha_p = sum_j w_j s_pj with signs [[+,-,+], [-,-,+]]
    assert scales.grad[:, 0, 0].tolist() == [1 - 10 + 100, -1 - 10 + 100]


@pytest.mark.parametrize("iters", [0, 10])
def test_weight_error_falls_with_bits(iters):
    w = np.random.default_rng(3).normal(scale=0.05, size=(48, 96)).astype(np.float32)
    errors = [
        np.linalg.norm(w - dequantize_weight(*binarize_weight(w, k, iters=iters)))
        for k in range(1, 6)
    ]
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.3 * errors[0]


def test_alternating_improves_on_greedy_substantially():
    w = np.random.default_rng(4).normal(size=(64, 256)).astype(np.float32)
    greedy = sq_error(w, *residual_binarize(w, 3, refit=True))
    alternating = sq_error(w, *alternating_binarize(w, 3))
    assert alternating < 0.8 * greedy  # Gaussian rows: the 8-level grid fits far better


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(
        np.float32,
        st.tuples(st.integers(1, 5), st.integers(2, 40)),
        elements=st.floats(-10, 10, width=32),
    ),
    planes=st.integers(1, 4),
)
def test_alternating_never_worse_than_greedy(x, planes):
    for axis in (-1, 0):
        for refit in (False, True):
            s, a = residual_binarize(x, planes, axis=axis, refit=refit)
            greedy = sq_error(x, s, a)
            s2, a2 = alternating_binarize(x, planes, axis=axis)
            assert s2.shape == s.shape and a2.shape == a.shape
            assert set(np.unique(s2)) <= {-1, 1}
            assert sq_error(x, s2, a2) <= greedy * (1 + 1e-5) + 1e-6


def test_group_scales_shapes_and_decode():
    w = np.random.default_rng(5).normal(size=(4, 12)).astype(np.float32)
    signs, scales = binarize_weight(w, 2, group_size=4)
    assert signs.shape == (2, 4, 12) and scales.shape == (2, 4, 3)
    manual = np.zeros_like(w)
    for p in range(2):
        for g in range(3):
            manual[:, 4 * g : 4 * g + 4] += scales[p, :, g : g + 1] * signs[p, :, 4 * g : 4 * g + 4]
    np.testing.assert_allclose(dequantize_weight(signs, scales), manual, rtol=1e-6)
    # finer scales never fit worse than one scale per row
    per_row = np.linalg.norm(w - dequantize_weight(*binarize_weight(w, 2)))
    assert np.linalg.norm(w - manual) <= per_row + 1e-6
    with pytest.raises(ValueError, match="does not divide"):
        binarize_weight(w, 2, group_size=5)


def test_quantized_tensor_packs_bits_like_the_code_format():
    from index.codes import pack_codes

    signs = np.where(np.random.default_rng(6).random((3, 5, 70)) < 0.5, -1, 1).astype(np.int8)
    scales = np.random.default_rng(7).random((3, 5, 1)).astype(np.float32)
    q = QuantizedTensor.from_signs(signs, scales)
    assert q.planes.dtype == np.uint64 and q.planes.shape == (3, 5, 2)  # 70 bits -> 2 words
    # row r of plane p is stored exactly as the index stores plane p of a code
    np.testing.assert_array_equal(q.planes[:, 2], pack_codes(signs[None, :, 2])[0])
    word = int(q.planes[1, 4, 0])
    assert [(word >> j) & 1 for j in range(64)] == [int(s > 0) for s in signs[1, 4, :64]]
    assert q.scales.dtype == np.float16
    np.testing.assert_array_equal(q.signs(), signs)
    expected = (signs * scales.astype(np.float16).astype(np.float32)).sum(0)
    np.testing.assert_array_equal(q.dequantize(), expected)
    assert q.stored_bits() == 3 * 5 * 128 + 16 * 15  # whole words, float16 scales


def test_format_1_directories_still_read_and_unknown_ones_refused(tmp_path):
    signs = np.where(np.random.default_rng(8).random((2, 4, 12)) < 0.5, -1, 1).astype(np.int8)
    scales = np.random.default_rng(9).random((2, 4, 1)).astype(np.float16)
    # format 1 as it was written: np.packbits (MSB first) uint8 planes
    np.savez(
        tmp_path / "quantized.npz",
        **{"w.planes": np.packbits(signs > 0, axis=-1)},
        **{"w.scales": scales},
    )
    config = {"format": 1, "tensors": {"w": {"bits": 2, "shape": [4, 12], "groups": 1}}}
    (tmp_path / "binsearch_compressed.json").write_text(json.dumps(config))
    old = read_compressed(tmp_path)
    np.testing.assert_array_equal(old.tensors["w"].signs(), signs)
    config["format"] = 99
    (tmp_path / "binsearch_compressed.json").write_text(json.dumps(config))
    with pytest.raises(CompressionError, match="format 99 is not supported") as info:
        read_compressed(tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [0, 9, -1, True, "3"])
def test_bits_outside_one_to_eight(bad):
    with pytest.raises(CompressionError, match="from 1 to 8"):
        check_bits(bad)


def test_model_without_linear_layers():
    module = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4))
    with pytest.raises(CompressionError, match="no nn.Linear"):
        quantizable_weights(module)


def test_allocate_budget_worked_example():
    # {option: (stored bits, loss)}; 40 weights in all
    losses = {
        "a": {1: (10, 1.0), 2: (20, 0.5), 3: (30, 0.4)},
        "b": {1: (30, 0.3), 2: (60, 0.1), 3: (90, 0.05)},
    }
    # budget 2 -> 80 bits, start at 40. Loss drop per added bit: a 1->2 0.05 (best), a 1->3
    # 0.03, b 1->2 0.0067; then a 2->3 0.01 beats b -> a = 3 (60 bits); b 1->2 needs 90 > 80.
    assert allocate_budget(losses, 40, 2.0) == {"a": 3, "b": 1}
    assert allocate_budget(losses, 40, 3.0) == {"a": 3, "b": 3}
    with pytest.raises(CompressionError, match="below the fewest"):
        allocate_budget(losses, 40, 0.5)


def test_gptq_lowers_the_layer_output_error():
    rng = np.random.default_rng(11)
    # correlated inputs with a few large features, as transformer activations have
    x = rng.normal(size=(600, 24)) @ rng.normal(size=(24, 24))
    x[:, :3] *= 8
    w = rng.normal(size=(16, 24)).astype(np.float32)
    signs, scales = gptq_binarize(w, x.T @ x, planes=2)
    assert signs.shape == (2, 16, 24) and set(np.unique(signs)) <= {-1, 1}
    assert scales.shape == (2, 16, 1)

    def output_error(wq):
        return float(((x @ (w - wq).T) ** 2).sum())

    gptq = output_error(dequantize_weight(signs, scales))
    plain = output_error(dequantize_weight(*binarize_weight(w, 2)))
    assert gptq < 0.7 * plain, (gptq, plain)
    # with H = I the Hessian error is the weight error: never worse than the weight-only fit
    signs, scales = gptq_binarize(w, np.eye(24), planes=2)
    assert sq_error(w, signs, scales) <= sq_error(w, *binarize_weight(w, 2)) + 1e-6


def test_gptq_act_order_is_natural_order_on_the_sorted_columns():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(500, 20)) @ rng.normal(size=(20, 20))
    x *= rng.uniform(0.2, 6.0, size=20)  # distinct input energies: one act order
    h = x.T @ x
    w = rng.normal(size=(12, 20)).astype(np.float32)
    order = np.argsort(-np.diag(h), kind="stable")
    act = dequantize_weight(*gptq_binarize(w, h, planes=2, act_order=True))
    natural = dequantize_weight(
        *gptq_binarize(w[:, order], h[order][:, order], planes=2, act_order=False)
    )
    # the same problem, columns permuted: the answer comes back in the weight's own order
    np.testing.assert_allclose(act[:, order], natural, atol=1e-5)


def test_gptq_act_order_helps_when_late_inputs_carry_the_energy():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(800, 32)) @ rng.normal(size=(32, 32))
    x[:, -4:] *= 10  # the loudest inputs last: left to right they have no columns to absorb into
    h = x.T @ x
    w = rng.normal(size=(24, 32)).astype(np.float32)

    def output_error(wq):
        return float(((x @ (w - wq).T) ** 2).sum())

    act = output_error(dequantize_weight(*gptq_binarize(w, h, planes=2, act_order=True)))
    natural = output_error(dequantize_weight(*gptq_binarize(w, h, planes=2, act_order=False)))
    assert act < natural, (act, natural)


# --- tiny models ---------------------------------------------------------------------------

# Calibration text: enough tokens (~1,500) that the GPTQ Hessians of 128 inputs are full rank.
_WORDS = sorted({w for t in SENTENCES for w in t.split()})
TEXTS = SENTENCES + [" ".join(np.random.default_rng(i).choice(_WORDS, 10)) for i in range(120)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: one thread, since on a busy 2-core machine every torch op otherwise
    waits ~20 ms for its second thread; restored for the rest of the suite."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vocab() -> list[str]:
    """A WordPiece vocabulary covering the test texts (and spelling anything else)."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-()")
    words = sorted({w for t in SENTENCES for w in t.split()})
    return [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *chars,
        *[f"##{c}" for c in chars],
        *words,
    ]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide random BERT sentence encoder with a 200-token vocabulary."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny")
    hf = root / "hf"
    hf.mkdir()
    vocab = tiny_vocab()
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        initializer_range=0.3,  # (default 0.02) so texts differ: real encoders' spread
    )
    BertModel(config).save_pretrained(hf)
    BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True).save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    out = root / "tiny-encoder"
    SentenceTransformer(modules=[transformer, pooling, Normalize()]).save(str(out))
    return out


@pytest.fixture(scope="module")
def tiny_3bit(tiny_model):
    """The tiny model compressed to 3 bits (model, compressed, report), once."""
    return compress_encoder(str(tiny_model), 3.0, TEXTS, sensitivity_texts=4, progress=False)


@pytest.fixture(scope="module")
def tiny_2bit(tiny_model):
    """The tiny model compressed to 2 bits, once (tests copy it before changing it)."""
    return compress_encoder(str(tiny_model), 2.0, TEXTS, sensitivity_texts=4, progress=False)


def cosine_to(model, reference, texts=SENTENCES) -> float:
    """Mean cosine to ``reference`` after removing the reference's mean: a random BERT's
    embeddings share one large common direction that would hide the differences."""
    emb = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    centre = reference.mean(0)
    a, b = emb - centre, reference - centre
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())


def test_whole_model_within_the_budget_and_bit_exact_round_trip(tiny_model, tiny_3bit, tmp_path):
    model, compressed, report = tiny_3bit
    auto = model[0].auto_model
    names = quantizable_weights(auto)
    assert set(report) == set(names) and names[-1] == "embeddings.word_embeddings.weight"
    bits = compressed.bits_per_weight()
    # every weight matrix counted: 2 x (4 64x64 + 2 64x128) Linear, pooler, 3 tables
    vocab = len(tiny_vocab())
    assert bits["weights"] == 2 * (4 * 64 * 64 + 2 * 64 * 128) + 64 * 64 + (vocab + 128 + 2) * 64
    assert bits["stored_bits"] <= 3.0 + 1e-9
    # the word table is uniform (no frequency tiers): one tensor, 2 or 3 planes at 3 bits
    table = compressed.tensors["embeddings.word_embeddings.weight"]
    assert table.rows is None and table.bits in (2, 3)
    assert not [k for k in compressed.tensors if "@" in k]
    timing = compressed.config["quantization"]
    assert timing["probed_weights"] == timing["weights"] == len(names)
    assert timing["gptq_weights"] == 2 * 6 + 1  # every Linear: 2 layers x 6, pooler
    per_name = compressed.per_name_bits()
    assert per_name["embeddings.word_embeddings.weight"] == pytest.approx(
        report["embeddings.word_embeddings.weight"]["stored_bits"]
    )
    in_memory = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    out = tmp_path / "tiny-3bit"
    config = save_compressed(model, compressed, out)
    assert is_compressed(out) and not is_compressed(tiny_model)
    assert config["size_bytes"] == directory_size(out) < directory_size(tiny_model) / 5
    loaded = Encoder(str(out), precision="fp32").encode(SENTENCES)  # not a measured bf16
    np.testing.assert_array_equal(loaded, in_memory)
    # the loaded weights are exactly the stored planes times the stored scales
    state = load_compressed(out)[0].auto_model.state_dict()
    for name, weight in read_compressed(out).state_dict().items():
        np.testing.assert_array_equal(state[name].numpy(), weight)
    # what stays float (LayerNorms, biases) is stored as float16
    ln = "encoder.layer.1.output.LayerNorm.weight"
    np.testing.assert_array_equal(state[ln].numpy(), auto.state_dict()[ln].half().float().numpy())


def test_quantization_past_its_deadline_still_fits_the_budget(tiny_model):
    """A deadline already passed: no probe, no GPTQ, every weight a weight-only fit,
    the budget spent by relative weight error (not left unused) and not exceeded."""
    import time

    model, compressed, report = compress_encoder(
        str(tiny_model), 2.0, TEXTS, progress=False, deadline=time.monotonic()
    )
    timing = compressed.config["quantization"]
    assert timing["probed_weights"] == 0 and timing["gptq_weights"] == 0
    assert 1.8 < compressed.bits_per_weight()["stored_bits"] <= 2.0 + 1e-9
    # weight-only fits: each weight exactly its residual binarization at the chosen planes
    name = "encoder.layer.0.attention.self.query.weight"
    original = Encoder(str(tiny_model)).model[0].auto_model.state_dict()[name].numpy()
    signs, scales = binarize_weight(original, report[name]["choice"], iters=10)
    np.testing.assert_allclose(
        compressed.tensors[name].dequantize(), dequantize_weight(signs, scales), atol=1e-3
    )


def test_attention_maps_match_the_models_own(tiny_model):
    """Attention probabilities rebuilt from the query/key projections equal those the
    model itself returns (eager attention), on the real tokens."""
    from binsearch.encoder.compress.calibrate import attention_log_probs

    model = Encoder(str(tiny_model)).model
    auto = model[0].auto_model
    auto.set_attn_implementation("eager")
    caught = []
    handles = [
        m.register_forward_hook(lambda _m, _i, o: caught.append(o))
        for n, m in auto.named_modules()
        if n.endswith(("attention.self.query", "attention.self.key"))
    ]
    features = model.tokenize(SENTENCES[:3])
    with torch.no_grad():
        out = auto(
            input_ids=features["input_ids"],
            attention_mask=features["attention_mask"],
            output_attentions=True,
        )
    for h in handles:
        h.remove()
    mask = features["attention_mask"].bool()
    for layer, reference in enumerate(out.attentions):
        mine = attention_log_probs(caught[2 * layer], caught[2 * layer + 1], mask, 2).exp()
        keep = mask[:, None, :, None] & mask[:, None, None, :]
        np.testing.assert_allclose(
            mine.expand_as(reference)[keep.expand_as(reference)].numpy(),
            reference[keep.expand_as(reference)].numpy(),
            atol=1e-5,
        )


def test_more_bits_give_every_weight_less_error(tiny_model, tiny_2bit, tiny_3bit):
    five = compress_encoder(str(tiny_model), 5.0, TEXTS, sensitivity_texts=4, progress=False)
    original = Encoder(str(tiny_model)).model[0].auto_model.state_dict()
    errors = []
    for model, _compressed, _ in (tiny_2bit, tiny_3bit, five):
        state = model[0].auto_model.state_dict()
        errors.append({n: float((state[n] - original[n]).norm()) for n in tiny_2bit[2]})
    assert tiny_2bit[1].bits_per_weight()["stored_bits"] <= 2.0 + 1e-9
    assert five[1].bits_per_weight()["stored_bits"] <= 5.0 + 1e-9
    for name in tiny_2bit[2]:  # the allocation may leave a weight where it was, never worse
        assert errors[2][name] <= errors[0][name], name
    assert sum(errors[2].values()) < 0.7 * sum(errors[0].values())
    assert sum(errors[1].values()) < sum(errors[0].values())


def test_distillation_brings_the_student_closer_within_its_deadline(tiny_model, tiny_2bit):
    import copy
    import time

    from binsearch.encoder.compress.calibrate import calibrate

    teacher = Encoder(str(tiny_model)).model
    reference = teacher.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    model, compressed = copy.deepcopy(tiny_2bit[0]), tiny_2bit[1]
    before = cosine_to(model, reference, TEXTS)
    calibrated = calibrate(
        model, teacher, compressed, TEXTS, epochs=2, batch_size=6, lr=3e-3, progress=False
    )
    assert cosine_to(model, reference, TEXTS) > before
    assert calibrated.config["calibration"]["steps"] == 2 * len(TEXTS) // 6
    # the model carries exactly the weights that will be stored
    state = model[0].auto_model.state_dict()
    for name, weight in calibrated.state_dict().items():
        np.testing.assert_array_equal(state[name].numpy(), weight)
    late = calibrate(model, teacher, calibrated, TEXTS, deadline=time.monotonic(), progress=False)
    assert late.config["calibration"]["steps"] == 0
    with pytest.raises(ValueError, match="no calibration text"):
        calibrate(model, teacher, compressed, ["", "  "], progress=False)


def test_trained_tables_move_at_the_same_bits(tiny_model, tiny_2bit):
    import copy

    from binsearch.encoder.compress.calibrate import calibrate

    teacher = Encoder(str(tiny_model)).model
    model, compressed = copy.deepcopy(tiny_2bit[0]), tiny_2bit[1]
    calibrated = calibrate(
        model, teacher, compressed, TEXTS, epochs=1, batch_size=6, progress=False
    )
    # train_tables: the word table's signs or scales move too, at the same bits
    tabled = calibrate(
        model, teacher, calibrated, TEXTS, lr=3e-2, train_tables=True, progress=False
    )
    word = next(n for n in compressed.tensors if "word_embeddings" in n)
    assert not np.array_equal(
        tabled.tensors[word].dequantize(), calibrated.tensors[word].dequantize()
    )
    assert tabled.bits_per_weight() == compressed.bits_per_weight()


# --- the command line ---------------------------------------------------------------------


def test_cli_compress_index_search(tiny_model, tmp_path, capsys):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "tiny-2bit"
    args = ["compress-encoder", "--model", str(tiny_model), "--bits", "2", "--minutes", "0.3"]
    args += ["--sources", "cranfield"]
    assert (
        main([*args, "--calibrate", str(corpus), "--calibrate-size", "200", "--out", str(out)]) == 0
    )
    err = capsys.readouterr().err
    assert "embeddings.word_embeddings.weight" in err and "distilled" in err
    config = json.loads((out / "binsearch_compressed.json").read_text())
    assert config["format"] == 3 and config["calibration_sources"] == {
        "cranfield": 1623,
        str(corpus): 6,
    }
    assert config["table_rows"]["coverage"]["cranfield"]  # the table went row by row
    assert config["bits_per_weight"]["stored_bits"] <= 2.0 + 1e-9
    assert config["calibration"]["seconds"] < 18
    index = tmp_path / "index"
    assert main(["index", str(corpus), "--out", str(index), "--model", str(out)]) == 0
    capsys.readouterr()
    assert main(["search", str(index), SENTENCES[3], "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3
    # the CLI ranks exactly as the collection (with the compressed encoder) does directly
    from binsearch.collection.collection import Collection

    expected = Collection.open(index, readonly=True).search([SENTENCES[3]], 3)[0]
    assert [h["id"] for h in hits] == expected.ids


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bits", "0.5"], "error: bits per weight must be from 1.2 to 8"),
        (["--bits", "9"], "error: bits per weight must be from 1.2 to 8"),
        (["--minutes", "0"], "error: --minutes must be positive"),
        (["--calibrate", "EMPTY"], "error: calibration corpus"),
    ],
)
def test_cli_errors_in_one_line(tiny_model, tmp_path, capsys, extra, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    extra = [str(empty) if e == "EMPTY" else e for e in extra]
    out = tmp_path / "x"
    args = ["compress-encoder", "--model", str(tiny_model), "--sources", "cranfield", *extra]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not out.exists()


def test_cli_help_renders(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compress-encoder", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--minutes" in out and "40% of it" in out and "--threads" in out
