"""The recurrent binarizer: shapes, straight-through gradient, training-free start, training,
persistence, the rbe codec through the index, compatible training, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from binsearch.codes.binarizer import BinarizerError, RecurrentBinarizer, load_embedding_file
from binsearch.codes.codecs import RbeCodec, ResidualCodec, SignCodec, codec_from_config, make_codec
from binsearch.codes.train_binarizer import TrainConfig, distillation_loss, train_binarizer
from binsearch.collection.coded_index import CodedIndex
from binsearch.eval.quality import float_topk, load_embeddings
from index import unpack_codes

MINILM = "embeddings/all-MiniLM-L6-v2"
MPNET = "embeddings/all-mpnet-base-v2"


@pytest.fixture(autouse=True)
def _few_threads():
    # The CI machine has 2 cores shared by the whole suite; oversubscribed BLAS
    # threads (the ITQ SVDs) were measured 5x slower than one thread.
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cranfield(bundled):
    return load_embeddings(bundled, bundled / MINILM)


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def float_recall(model: RecurrentBinarizer, corpus: np.ndarray, queries: np.ndarray) -> float:
    """Recall of the float top-10, scored by numpy from the model's unpacked codes."""
    s, a = model.encode_documents(corpus)
    v = ((s * 2.0 - 1.0) * a[..., None]).sum(1)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    with torch.no_grad():
        zq = model.query(torch.from_numpy(queries)).numpy()
    got = np.argsort(-(zq @ v.T), axis=1, kind="stable")[:, :10]
    ref = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]
    return float(np.mean([len(set(g) & set(r)) / 10 for g, r in zip(got, ref, strict=True)]))


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize(("dim", "m", "planes"), [(16, 16, 1), (16, 40, 3), (24, 8, 2)])
def test_shapes_and_values(dim, m, planes):
    model = RecurrentBinarizer(dim, m, planes, hidden=8, query_planes=3)
    x = unit_rows(10, dim)
    s, a = model.encode_documents(x)
    assert s.shape == (10, planes, m) and s.dtype == bool
    assert a.shape == (10, planes) and a.dtype == np.float32
    qs, qw = model.encode_queries(x)
    assert qs.shape == (10, 3, m) and qw.shape == (10, 3)
    codec = RbeCodec(model)
    codes = codec.encode(x)
    assert codes.words.shape == (10, planes, -(-m // 64))
    # The packed words hold exactly the model's signs (the DESIGN.md layout).
    np.testing.assert_array_equal(unpack_codes(codes.words, m) > 0, s)
    assert (codes.scales is None) == (planes == 1)


def test_straight_through_gradient_by_hand():
    # W = identity, one plane: d sum(c * sign(x)) / dx = c where |x| <= 1, else 0.
    model = RecurrentBinarizer(4, planes=1)
    x = torch.tensor([[0.3, -0.5, 2.0, -1.5]], requires_grad=True)
    c = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    s, _ = model(x)
    (s[:, 0] * c).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[1.0, 2.0, 0.0, 0.0]])
    assert torch.equal(s[0, 0], torch.tensor([1.0, -1.0, 1.0, -1.0]))


def test_untrained_model_is_the_training_free_codec():
    x = unit_rows(50, 32, seed=1) * 3.0  # not unit length: scales matter
    sign = SignCodec(32).encode(x)
    rbe1 = RbeCodec(RecurrentBinarizer(32, planes=1, hidden=16)).encode(x)
    np.testing.assert_array_equal(rbe1.words, sign.words)
    residual = ResidualCodec(32, 3).encode(x)
    rbe3 = RbeCodec(RecurrentBinarizer(32, planes=3, hidden=16)).encode(x)
    np.testing.assert_array_equal(rbe3.words, residual.words)
    np.testing.assert_allclose(rbe3.scales, residual.scales, rtol=1e-5, atol=1e-7)


def test_itq_init_is_a_rotation_that_balances_bits():
    x = unit_rows(300, 16, seed=2) + 0.3  # off-centre: raw signs are unbalanced
    model = RecurrentBinarizer(16, planes=1).init_itq(x)
    w = model.W.linear.weight.detach().numpy()
    np.testing.assert_allclose(w @ w.T, np.eye(16), atol=1e-5)
    s, _ = model.encode_documents(x)
    assert abs(s.mean() - 0.5) < 0.1 < abs((x >= 0).mean() - 0.5)


# ------------------------------------------------------------------ training


def test_training_lowers_loss_and_raises_recall_on_cranfield(cranfield):
    docs = cranfield.corpus
    cfg = TrainConfig(steps=40)
    start, _ = train_binarizer(docs, planes=1, config=TrainConfig(steps=0), progress=False)
    model, losses = train_binarizer(docs, planes=1, config=cfg, progress=False)
    held_out = docs[:400]  # scored on all pairs, not the sampled candidate lists
    assert distillation_loss(model, held_out) < distillation_loss(start, held_out)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    # The measured quantity: recall of the float top-10 for the real test queries.
    before = float_recall(start, docs, cranfield.queries)
    after = float_recall(model, docs, cranfield.queries)
    assert after > before + 0.01, (before, after)


def test_training_is_deterministic_for_a_seed():
    x = unit_rows(200, 16, seed=3)
    cfg = TrainConfig(steps=15, batch=32, randoms=32, seed=7)
    a, la = train_binarizer(x, planes=2, config=cfg, progress=False)
    b, lb = train_binarizer(x, planes=2, config=cfg, progress=False)
    assert la == lb and a.version == b.version
    for k, v in a.weights().items():
        np.testing.assert_array_equal(v, b.weights()[k])
    c, _ = train_binarizer(
        x, planes=2, config=TrainConfig(steps=15, batch=32, randoms=32, seed=8), progress=False
    )
    assert c.version != a.version


def test_query_anchors_take_part_in_training():
    x, q = unit_rows(200, 16, seed=5), unit_rows(40, 16, seed=6)
    cfg = TrainConfig(steps=5, batch=32, randoms=32)
    _, plain = train_binarizer(x, config=cfg, progress=False)
    _, with_q = train_binarizer(x, config=cfg, progress=False, query_x=q)
    assert plain != with_q and np.isfinite(with_q).all()
    with pytest.raises(BinarizerError, match=r"shape \(n, 16\)"):
        train_binarizer(x, config=cfg, progress=False, query_x=unit_rows(40, 8))


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.full((100, 8), np.nan, np.float32), "NaN"),
        (unit_rows(10, 8), "at least 64"),
        (unit_rows(100, 8)[:, :, None], "shape"),
    ],
)
def test_training_refuses_bad_input(x, message):
    with pytest.raises(BinarizerError, match=message):
        train_binarizer(x, config=TrainConfig(steps=1), progress=False)


def test_encode_refuses_wrong_width():
    with pytest.raises(BinarizerError, match=r"shape \(n, 8\)"):
        RecurrentBinarizer(8).encode_documents(unit_rows(5, 9))
    with pytest.raises(ValueError, match="4-d embeddings to 1 planes"):
        make_codec("rbe", 8, 1, model=RecurrentBinarizer(4))


# --------------------------------------------------------------- persistence


def test_save_load_and_inline_round_trip(tmp_path):
    x = unit_rows(120, 16, seed=4)
    model, _ = train_binarizer(x, planes=2, hidden=8, config=TrainConfig(steps=5), progress=False)
    model.save(tmp_path / "model")
    loaded = RecurrentBinarizer.load(tmp_path / "model")
    inline = codec_from_config(json.loads(json.dumps(RbeCodec(model).config())))
    for other in (loaded, inline.model):
        assert other.config() == model.config()
        for got, want in zip(
            (*other.encode_documents(x), *other.encode_queries(x)),
            (*model.encode_documents(x), *model.encode_queries(x)),
            strict=True,
        ):
            np.testing.assert_array_equal(got, want)


def test_load_refuses_damaged_models(tmp_path):
    with pytest.raises(BinarizerError, match="not a binarizer model"):
        RecurrentBinarizer.load(tmp_path)
    RecurrentBinarizer(8, planes=2).save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["planes"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BinarizerError, match="do not match"):
        RecurrentBinarizer.load(tmp_path / "m")
    with pytest.raises(BinarizerError, match="no embeddings"):
        load_embedding_file(tmp_path / "missing.npy")


# ----------------------------------------------------------- codec and index


def test_rbe_codec_scores_in_the_index_match_numpy(cranfield):
    model, _ = train_binarizer(
        cranfield.corpus, planes=2, config=TrainConfig(steps=10), progress=False
    )
    codec = make_codec("rbe", 384, 2, model=model)
    index = CodedIndex.from_embeddings(cranfield.corpus, codec)
    assert index.bits_per_vector == 2 * 384 + 2 * 32
    scores, ids = index.topk(cranfield.queries[:20], 10)
    # Reference: query plane values against unit document code values, in numpy.
    s, a = model.encode_documents(cranfield.corpus)
    v = ((s * 2.0 - 1.0) * a[..., None]).sum(1)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    qs, qw = model.encode_queries(cranfield.queries[:20])
    qv = ((qs * 2.0 - 1.0) * qw[..., None]).sum(1)
    ref = qv @ v.T / np.linalg.norm(qv, axis=1, keepdims=True)  # the cosine of the codes
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ids, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores[:, 0], ref.max(1), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------- compatible training


@pytest.fixture(scope="module")
def compat(shared_data):
    """Cranfield: an old binarizer on MiniLM, and a new one on MPNet trained compatible with it."""
    base = shared_data / "cranfield"
    old_data = load_embeddings(base, base / MINILM)
    new_data = load_embeddings(base, base / MPNET)
    torch.set_num_threads(1)
    cfg = TrainConfig(steps=40)
    old, _ = train_binarizer(old_data.corpus, planes=1, config=cfg, progress=False)
    new, _ = train_binarizer(
        new_data.corpus, planes=1, config=cfg, progress=False, old=old, old_x=old_data.corpus
    )
    return old_data, new_data, old, new


def test_compatible_queries_on_old_codes_beat_training_free(compat):
    """MPNet queries scored against MiniLM-binarizer codes (Cranfield).

    The compatible model must beat the training-free codec of the same bits
    (sign codes of the old model) on the recall of the new model's float
    top-10, the ranking the new queries should reproduce.
    """
    old_data, new_data, old, new = compat
    assert new.compatible_with == [old.version] and new.m == old.m and new.query_dim == 768
    _, float_new = float_topk(new_data.corpus, new_data.queries, 10)

    def recall(coded, codec, queries):
        _, rows = CodedIndex(codec, coded.index).topk(queries, 10)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, float_new, strict=True)])

    old_index = CodedIndex.from_embeddings(old_data.corpus, RbeCodec(old))
    compat_recall = recall(old_index, RbeCodec(new), new_data.queries)
    sign = make_codec("sign", 384)
    training_free = recall(
        CodedIndex.from_embeddings(old_data.corpus, sign), sign, old_data.queries
    )
    assert compat_recall > training_free + 0.02, (compat_recall, training_free)
    with pytest.raises(BinarizerError, match="same rows"):
        train_binarizer(new_data.corpus, old=old, old_x=old_data.corpus[:-1], progress=False)


def test_mixed_version_index_scores_both_segments_and_refuses_strangers(compat, tmp_path):
    from binsearch.collection.mixed_versions import IncompatibleSegmentError, MixedVersionIndex

    old_data, new_data, old, new = compat
    n = old_data.corpus.shape[0]
    half = n // 2
    seg = MixedVersionIndex(tmp_path / "mixed")
    seg.add_segment(RbeCodec(old), old_data.corpus[:half], np.arange(half))
    seg.add_segment(RbeCodec(new), new_data.corpus[half:], np.arange(half, n))
    queries = new_data.queries[:30]
    scores, ids = MixedVersionIndex.open(tmp_path / "mixed").search(RbeCodec(new), queries, 10)
    # Reference in numpy: each document's unit code value from the model that wrote it.
    values = []
    for model, x in ((old, old_data.corpus[:half]), (new, new_data.corpus[half:])):
        s, a = model.encode_documents(x)
        v = ((s * 2.0 - 1.0) * a[..., None]).sum(1)
        values.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    qs, qw = new.encode_queries(queries)
    qv = ((qs * 2.0 - 1.0) * qw[..., None]).sum(1)
    ref = qv @ np.concatenate(values).T / np.linalg.norm(qv, axis=1, keepdims=True)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ids, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores[:, 0], ref.max(1), rtol=1e-4, atol=1e-5)
    assert (ids < half).any() and (ids >= half).any()  # both segments contribute
    # A model with the same shapes but its own code space (not trained against
    # the old one) must be refused, not silently mis-scored.
    stranger = RecurrentBinarizer(768, old.m, planes=1, query_dim=768)
    stranger.version = "0123456789abcdef"
    with pytest.raises(IncompatibleSegmentError, match="not compatible"):
        seg.search(RbeCodec(stranger), queries, 10)


# ----------------------------------------------------------------------- CLI


def test_cli_train_binarizer_then_index_and_search(tmp_path, bundled, capsys):
    from binsearch.cli.main import main

    emb = bundled / MINILM / "corpus.npy"
    assert (
        main(
            [
                "train-binarizer",
                str(emb),
                "--bits",
                "1",
                "--out",
                str(tmp_path / "m"),
                "--steps",
                "5",
            ]
        )
        == 0
    )
    docs = tmp_path / "docs.txt"
    lines = [
        json.loads(t)["text"][:200]
        for t in (bundled / "corpus.jsonl").read_text().splitlines()[:80]
    ]
    docs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "idx"
    args = ["index", str(docs), "--out", str(out), "--codec", "rbe", "--bits", "1"]
    assert main([*args, "--binarizer", str(tmp_path / "m")]) == 0
    assert main(["search", str(out), lines[3], "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert hits[0]["text"] == lines[3]
    # Without --binarizer the codec trains on the corpus's own embeddings at index time.
    assert main([*args[:-1], "2", "--out", str(tmp_path / "idx2")]) == 0
    manifest = json.loads((tmp_path / "idx2" / "collection.json").read_text())
    assert manifest["codec"]["binarizer"]["planes"] == 2
    assert manifest["codec"]["binarizer"]["version"]
    # Wrong width model for this index's bits: one clear error line.
    assert main([*args[:-1], "2", "--binarizer", str(tmp_path / "m")]) == 2
    assert "writes 1 planes; pass --bits 1" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((100, 8), np.nan, np.float32))
    assert main(["train-binarizer", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "NaN" in capsys.readouterr().err
