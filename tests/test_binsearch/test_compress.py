"""Encoder compression: the quantizer core on weights, save/load, calibration, the CLI.

References are independent: brute-force enumeration of every sign pattern,
numpy least squares, hand-worked values. Models are tiny random BERTs built on
the spot (no download); one test compresses the real MiniLM, briefly.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from binsearch.cli import main
from binsearch.compress import (
    CompressionError,
    QuantizedTensor,
    allocate_bits,
    check_bits,
    compress_encoder,
    directory_size,
    is_compressed,
    load_compressed,
    measure_sensitivity,
    quantizable_weights,
    save_compressed,
)
from binsearch.encoder import Encoder, resolve_model
from binsearch.quantize import (
    alternating_binarize,
    binarize_weight,
    dequantize_weight,
    nearest_planes,
    nearest_planes_torch,
    quantize_ste,
    residual_binarize,
    sign_patterns,
)

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


def test_quantized_tensor_packs_bits():
    signs = np.where(np.random.default_rng(6).random((3, 5, 13)) < 0.5, -1, 1).astype(np.int8)
    scales = np.random.default_rng(7).random((3, 5, 1)).astype(np.float32)
    q = QuantizedTensor.from_signs(signs, scales)
    assert q.planes.dtype == np.uint8 and q.planes.shape == (3, 5, 2)  # 13 bits -> 2 bytes
    assert q.scales.dtype == np.float16
    np.testing.assert_array_equal(q.signs(), signs)
    expected = (signs * scales.astype(np.float16).astype(np.float32)).sum(0)
    np.testing.assert_array_equal(q.dequantize(), expected)
    assert q.stored_bits() == 3 * 5 * 13 + 16 * 15


@pytest.mark.parametrize("bad", [0, 9, -1, 2.5, True])
def test_bits_outside_one_to_eight(bad):
    with pytest.raises(CompressionError, match="1 to 8"):
        check_bits(bad)


def test_model_without_linear_layers():
    module = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4))
    with pytest.raises(CompressionError, match="no nn.Linear"):
        quantizable_weights(module)


def test_allocate_bits_worked_example():
    losses = {"a": {1: 1.0, 2: 0.5, 3: 0.4}, "b": {1: 0.3, 2: 0.1, 3: 0.05}}
    sizes = {"a": 10, "b": 30}
    # budget 2 x 40 = 80 bits, start at 40. Loss drop per added bit: a 1->2 0.05, b 1->2
    # 0.0067 -> a; then a 2->3 0.01 beats b -> a = 3 (60 bits); b 1->2 needs 30 more > 80.
    assert allocate_bits(losses, sizes, 2.0) == {"a": 3, "b": 1}
    assert allocate_bits(losses, sizes, 3.0) == {"a": 3, "b": 3}
    with pytest.raises(CompressionError, match="below the fewest"):
        allocate_bits(losses, sizes, 0.5)


# --- tiny models ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT sentence encoder with MiniLM's tokenizer."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    _, source = resolve_model(None)
    root = tmp_path_factory.mktemp("tiny")
    hf = root / "hf"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(hf)
    BertTokenizerFast.from_pretrained(str(source)).save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    out = root / "tiny-encoder"
    SentenceTransformer(modules=[transformer, pooling, Normalize()]).save(str(out))
    return out


def test_save_load_round_trip_is_bit_exact(tiny_model, tmp_path):
    model, compressed = compress_encoder(
        str(tiny_model), 3, embeddings=True, embedding_bits=2, progress=False
    )
    assert len(compressed.tensors) == 2 * 6 + 1 + 1  # 6 Linear per layer, pooler, embeddings
    in_memory = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    out = tmp_path / "tiny-3bit"
    config = save_compressed(model, compressed, out)
    assert is_compressed(out) and not is_compressed(tiny_model)
    assert config["bits_per_weight"]["sign_bits"] == pytest.approx(
        # 9 square Linears (q, k, v, o per layer + pooler), 4 of 32 x 64, the table 30522 x 32
        (3 * (9 * 32 * 32 + 4 * 32 * 64) + 2 * 30522 * 32)
        / (9 * 32 * 32 + 4 * 32 * 64 + 30522 * 32)
    )
    assert config["size_bytes"] == directory_size(out) < directory_size(tiny_model) / 4
    loaded = Encoder(str(out)).encode(SENTENCES)
    again = load_compressed(out).encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    np.testing.assert_array_equal(loaded, again)
    np.testing.assert_array_equal(loaded, in_memory)
    # the loaded weights are exactly the stored planes times the stored scales
    stored = json.loads((out / "binsearch_compressed.json").read_text())
    name = "encoder.layer.0.attention.self.query.weight"
    assert stored["tensors"][name] == {"bits": 3, "shape": [32, 32], "groups": 1}
    with np.load(out / "quantized.npz") as npz:
        bits = np.unpackbits(npz[f"{name}.planes"], axis=-1, count=32).astype(np.float32) * 2 - 1
        weight = (bits * npz[f"{name}.scales"].astype(np.float32)).sum(0)  # scales (3, 32, 1)
    auto = load_compressed(out)[0].auto_model
    np.testing.assert_array_equal(auto.state_dict()[name].numpy(), weight)
    # position embeddings and LayerNorms stay float, untouched
    float_model = Encoder(str(tiny_model)).model[0].auto_model.state_dict()
    for key in ("embeddings.position_embeddings.weight", "encoder.layer.1.output.LayerNorm.weight"):
        np.testing.assert_array_equal(auto.state_dict()[key].numpy(), float_model[key].numpy())


def test_more_bits_track_the_float_model_closer(tiny_model):
    reference = Encoder(str(tiny_model)).encode(SENTENCES)
    cosines = []
    for bits in (1, 2, 4, 8):
        model, _ = compress_encoder(str(tiny_model), bits, progress=False)
        emb = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
        cosines.append(float((emb * reference).sum(1).mean()))
    assert cosines == sorted(cosines) and cosines[-1] > 0.999, cosines


def test_sensitivity_and_mixed_cli(tiny_model, tmp_path, capsys):
    model = Encoder(str(tiny_model)).model
    before = {k: v.clone() for k, v in model[0].auto_model.state_dict().items()}
    # not query/key: in a random BERT attention is near uniform whatever they are
    names = [n for n in quantizable_weights(model[0].auto_model) if "dense" in n][:3]
    losses, tensors = measure_sensitivity(model, SENTENCES, names, (1, 4), progress=False)
    for name in names:
        assert losses[name][4] < losses[name][1]
        assert tensors[name][4].bits == 4
    for key, value in model[0].auto_model.state_dict().items():  # the float model is restored
        assert torch.equal(value, before[key])
    out = tmp_path / "mixed"
    args = ["compress-encoder", "--model", str(tiny_model), "--bits", "2", "--mixed"]
    args += ["--calibrate-size", "8"]
    assert main([*args, "--out", str(out)]) == 0
    config = json.loads((out / "binsearch_compressed.json").read_text())
    assert {t["bits"] for t in config["tensors"].values()} <= {1, 2, 3}
    assert config["bits_per_weight"]["sign_bits"] <= 2.0 + 1e-9


def test_save_refuses_to_overwrite_other_directories(tiny_model, tmp_path):
    model, compressed = compress_encoder(str(tiny_model), 2, progress=False)
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(CompressionError, match="not a compressed model"):
        save_compressed(model, compressed, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_calibration_brings_the_student_closer(tiny_model):
    from binsearch.compress_calibrate import calibrate

    teacher = Encoder(str(tiny_model)).model
    texts = SENTENCES * 4
    reference = teacher.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    model, compressed = compress_encoder(str(tiny_model), 1, progress=False)

    def cosine():
        emb = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        return float((emb * reference).sum(1).mean())

    before = cosine()
    calibrated = calibrate(
        model, teacher, compressed, texts, epochs=8, batch_size=8, lr=3e-3, progress=False
    )
    assert cosine() > before
    assert calibrated.config["calibration"]["texts"] == len(texts)
    # the model carries exactly the weights that will be stored
    state = model[0].auto_model.state_dict()
    for name, q in calibrated.tensors.items():
        np.testing.assert_array_equal(state[name].numpy(), q.dequantize())
    with pytest.raises(ValueError, match="no calibration text"):
        calibrate(model, teacher, compressed, ["", "  "], progress=False)


# --- the command line ---------------------------------------------------------------------


def test_cli_compress_index_search(tiny_model, tmp_path, capsys):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "tiny-2bit"
    assert (
        main(["compress-encoder", "--model", str(tiny_model), "--bits", "2", "--out", str(out)])
        == 0
    )
    assert "2.00 sign bits per weight" in capsys.readouterr().err
    index = tmp_path / "index"
    assert main(["index", str(corpus), "--out", str(index), "--model", str(out)]) == 0
    capsys.readouterr()
    assert main(["search", str(index), SENTENCES[3], "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3
    # the CLI ranks exactly as the loaded compressed encoder + codec do, computed here directly
    from binsearch.pipeline import Searcher

    searcher = Searcher.open(index)
    expected = searcher.search([SENTENCES[3]], 3)[0]
    assert [h["id"] for h in hits] == [h.id for h in expected]
    assert all(h["text"] in SENTENCES for h in hits)


def test_cli_errors(tiny_model, tmp_path, capsys):
    assert main(["compress-encoder", "--model", str(tiny_model), "--bits", "0"]) == 2
    assert "1 to 8" in capsys.readouterr().err
    assert (
        main(
            [
                "compress-encoder",
                "--model",
                str(tiny_model),
                "--bits",
                "3",
                "--embedding-bits",
                "12",
            ]
        )
        == 2
    )
    assert "1 to 8" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    args = [
        "compress-encoder",
        "--model",
        str(tiny_model),
        "--bits",
        "2",
        "--calibrate",
        str(empty),
    ]
    assert main([*args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: calibration corpus") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_cli_calibrates_on_a_corpus(tiny_model, tmp_path, capsys):
    corpus = tmp_path / "calib.txt"
    corpus.write_text("\n".join(SENTENCES * 3) + "\n")
    out = tmp_path / "calibrated"
    args = ["compress-encoder", "--model", str(tiny_model), "--bits", "2", "--out", str(out)]
    assert main([*args, "--calibrate", str(corpus), "--epochs", "0.5"]) == 0
    config = json.loads((out / "binsearch_compressed.json").read_text())
    assert config["calibration"]["texts"] == 18 and config["calibration"]["steps"] == 1
    assert Encoder(str(out)).encode(SENTENCES[:2]).shape == (2, 32)


def test_real_minilm_four_bits(tmp_path):
    """The one real-model test: MiniLM at 4 bits stays close to float (and loads by path)."""
    float_emb = Encoder(None).encode(SENTENCES[:4])
    model, compressed = compress_encoder(None, 4, iters=2, progress=False)
    out = tmp_path / "minilm-4bit"
    save_compressed(model, compressed, out)
    emb = Encoder(str(out)).encode(SENTENCES[:4])
    cosine = (emb * float_emb).sum(1)
    assert cosine.min() > 0.85, cosine
    assert directory_size(out) < 0.6 * 90.9e6  # the float table (47 MB) dominates
    shutil.rmtree(out)
