"""The encoder's precision paths and the chooser that picks one per machine.

The chooser's logic is tested with injected measurements (no timing, any CPU);
the bf16 and int8 paths against the fp32 model itself on real texts. Nothing
here assumes AMX or AVX512-BF16: torch runs bf16 on any x86 CPU, more slowly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from binsearch.encoder import Encoder, ModelError
from binsearch.encoder import precision as P
from binsearch.encoder.precision import Measurement, PrecisionChooser

TEXTS = [
    "a",
    "What is the effect of vitamin D on bone density?",
    "lift of a wing in a propeller slipstream",
    "Binary codes make semantic search cheap, and ÜNICODE ñ 日本語 too.",
    " ".join(["Long documents are truncated at the model's maximum sequence length."] * 40),
]


def fake(times: dict[str, float | None], cosines: dict[str, float] | None = None):
    """A measure function returning fixed figures, counting its calls."""
    cosines = cosines or {}

    def measure(model, texts):
        measure.calls += 1
        out = []
        for name, cpu in times.items():
            cos = cosines.get(name, 1.0 if name == "fp32" else 0.9999)
            ok = cos >= P.MEAN_COSINE
            out.append(Measurement(name, cpu if ok else None, cos, cos, ok))
        return out

    measure.calls = 0
    return measure


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def chooser(cache: Path | None, measure, signature: str = "machine-a") -> PrecisionChooser:
    return PrecisionChooser(cache, measure=measure, signature=lambda: signature, texts=["x"])


def test_picks_the_fastest_candidate_that_passes_the_bar(model_dir) -> None:
    # int8 is fastest but unfaithful; bf16 passes and beats fp32
    measure = fake({"fp32": 1.0, "bf16": 0.3, "int8": 0.1}, {"int8": 0.95})
    choice = chooser(None, measure).choose("m", model_dir, model=None)
    assert choice.precision == "bf16"
    measure = fake({"fp32": 1.0, "bf16": 0.5, "int8": 0.25})
    assert chooser(None, measure).choose("m", model_dir, None).precision == "int8"


def test_a_lower_precision_must_pay_for_itself(model_dir) -> None:
    # 1.05x is within noise: fp32 stays; so does a slower bf16 (an AVX2-only CPU)
    for bf16 in (0.96, 3.0):
        measure = fake({"fp32": 1.0, "bf16": bf16})
        assert chooser(None, measure).choose("m", model_dir, None).precision == "fp32"


def test_untimed_or_unavailable_candidates_are_never_chosen() -> None:
    ms = [
        Measurement("fp32", 1.0, 1.0, 1.0, True),
        Measurement("bf16", None, 0.99999, 0.99999, True, "not timed"),
        Measurement("int8", None, 0.0, 0.0, False, "unavailable: no engine"),
    ]
    assert P.pick(ms).precision == "fp32"
    assert P.pick([Measurement("bf16", 0.1, 1.0, 1.0, True)]).precision == "fp32"


def test_fidelity_bar() -> None:
    assert P.faithful(np.array([0.9995, 0.9990, 0.9985]))
    assert not P.faithful(np.array([0.9999] * 9 + [0.99]))  # mean 0.99891 < 0.999
    assert not P.faithful(np.array([1.0] * 99 + [0.994]))  # min below 0.995
    assert not P.faithful(np.array([]))


def test_the_choice_is_cached_per_machine_and_model(tmp_path, model_dir) -> None:
    cache = tmp_path / "cache" / "precision.json"
    measure = fake({"fp32": 1.0, "bf16": 0.3})
    first = chooser(cache, measure).choose("m", model_dir, None)
    assert measure.calls == 1 and cache.is_file()
    # a new process (a new chooser) on the same machine and model reads it back
    again = chooser(cache, measure)
    assert again.choose("m", model_dir, None) == first
    assert measure.calls == 1 and again.measured == 0
    # another machine, or a rewritten model directory, is measured again
    chooser(cache, measure, signature="machine-b").choose("m", model_dir, None)
    assert measure.calls == 2
    (model_dir / "config.json").write_text('{"changed": true}')
    chooser(cache, measure).choose("m", model_dir, None)
    assert measure.calls == 3
    entries = json.loads(cache.read_text())
    assert len(entries) == 3 and all(e["precision"] == "bf16" for e in entries.values())


def test_a_bad_cache_file_is_ignored_with_a_warning(tmp_path, model_dir, caplog) -> None:
    cache = tmp_path / "precision.json"
    measure = fake({"fp32": 1.0, "bf16": 0.3})
    for bad in ("{not json", "[1, 2]"):
        cache.write_text(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=P.__name__):
            assert chooser(cache, measure).choose("m", model_dir, None).precision == "bf16"
        assert any("precision cache" in r.getMessage() for r in caplog.records)
        assert json.loads(cache.read_text())  # replaced by a good one
    # a bad entry (unknown precision) is dropped and measured again
    key = chooser(cache, measure).key("m", model_dir)
    cache.write_text(json.dumps({key: {"precision": "fp4", "reason": ""}}))
    calls = measure.calls
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        assert chooser(cache, measure).choose("m", model_dir, None).precision == "bf16"
    assert measure.calls == calls + 1


def test_an_unwritable_cache_does_not_stop_encoding(tmp_path, model_dir, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    measure = fake({"fp32": 1.0, "bf16": 0.3})
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        choice = chooser(blocker / "precision.json", measure).choose("m", model_dir, None)
    assert choice.precision == "bf16"
    assert any("not cached" in r.getMessage() for r in caplog.records)


def test_default_cache_file_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(P.CACHE_ENV, raising=False)
    monkeypatch.setenv("BINSEARCH_CACHE", str(tmp_path))
    assert P.default_cache_file() == tmp_path / "precision.json"
    monkeypatch.setenv(P.CACHE_ENV, "off")
    assert P.default_cache_file() is None
    monkeypatch.setenv(P.CACHE_ENV, str(tmp_path / "p.json"))
    assert P.default_cache_file() == tmp_path / "p.json"


def test_bad_precision_is_a_one_line_error(monkeypatch) -> None:
    with pytest.raises(ModelError, match="precision must be one of auto, fp32, bf16, int8"):
        Encoder(precision="fp16")
    monkeypatch.setenv(P.PRECISION_ENV, "bogus")
    with pytest.raises(ModelError, match="'bogus'"):
        Encoder()
    monkeypatch.setenv(P.PRECISION_ENV, "bf16")
    assert Encoder().precision == "bf16"


# --- the real model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp32_embeddings() -> np.ndarray:
    return Encoder(backend="torch", precision="fp32").encode(TEXTS)


@pytest.mark.parametrize("precision", ["bf16"])
def test_lower_precision_matches_fp32_within_the_bar(precision, fp32_embeddings) -> None:
    encoder = Encoder(backend="torch", precision=precision)
    emb = encoder.encode(TEXTS)
    assert encoder.precision_used == precision
    assert emb.dtype == np.float32 and emb.shape == fp32_embeddings.shape
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cos = np.sum(emb * fp32_embeddings, axis=1)
    assert P.faithful(cos), cos


def test_int8_runs_and_stays_close(fp32_embeddings) -> None:
    """int8 is below the bar for MiniLM (so auto never picks it there), but it must be
    the same model: cosine well above that of unrelated texts."""
    encoder = Encoder(backend="torch", precision="int8")
    cos = np.sum(encoder.encode(TEXTS) * fp32_embeddings, axis=1)
    assert cos.min() > 0.9, cos


def test_auto_runs_the_chosen_precision(tmp_path, fp32_embeddings) -> None:
    measure = fake({"fp32": 1.0, "bf16": 0.3})
    encoder = Encoder(
        backend="torch",
        precision="auto",
        precision_chooser=PrecisionChooser(tmp_path / "p.json", measure=measure),
    )
    emb = encoder.encode(TEXTS)
    assert encoder.precision_used == "bf16" and measure.calls == 1
    assert P.faithful(np.sum(emb * fp32_embeddings, axis=1))
    encoder.encode(TEXTS)
    assert measure.calls == 1  # chosen once per encoder
    # .model stays the float32 model
    assert str(next(encoder.model.parameters()).dtype) == "torch.float32"


def test_the_real_measurement_ranks_and_checks_candidates() -> None:
    """measure_precisions on a few texts: fp32 is exact, bf16 passes the bar; times are
    whatever this CPU gives (not asserted)."""
    import torch

    model = Encoder(backend="torch").model
    threads = torch.get_num_threads()
    ms = {m.precision: m for m in P.measure_precisions(model, TEXTS[1:4], ("fp32", "bf16"), 1)}
    assert ms["fp32"].cosine_min == 1.0 and ms["fp32"].cpu_s is not None
    assert ms["bf16"].eligible and ms["bf16"].cosine_min >= P.MIN_COSINE
    assert torch.get_num_threads() == threads  # measured on one thread, then restored


# --- the command line ------------------------------------------------------------------


def test_cli_precision_flag_reaches_the_encoder(tmp_path, monkeypatch, capsys) -> None:
    from binsearch.cli.main import main

    # main() sets the variable; setenv first so that monkeypatch restores it (delenv of an
    # absent variable records nothing to undo)
    monkeypatch.setenv(P.PRECISION_ENV, "auto")
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(f"{t} number {i}" for i, t in enumerate(TEXTS * 3)) + "\n")
    out = tmp_path / "coll"
    assert main(["index", str(corpus), "--out", str(out), "--precision", "bf16"]) == 0
    assert "all-MiniLM-L6-v2 (bf16)" in capsys.readouterr().err
    assert main(["search", str(out), "vitamin D", "-k", "3", "--precision", "fp32"]) == 0
    assert "3 results" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["index", str(corpus), "--out", str(out), "--precision", "fp16"])
    assert exc.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


# --- the compressed encoder ----------------------------------------------------------------

SENTENCES = [
    "boundary layer transition on a flat plate",
    "heat transfer to a blunt body in hypersonic flow",
    "the lift of a thin wing at small angles of attack",
    "buckling of thin cylindrical shells under axial load",
]


@pytest.fixture(scope="module")
def compressed_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT sentence encoder, compressed to 3 bits (weight-only fits)."""
    import time

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from binsearch.encoder.compress.compressor import compress_encoder
    from binsearch.encoder.compress.format import save_compressed

    root = tmp_path_factory.mktemp("tiny")
    chars = list("abcdefghijklmnopqrstuvwxyz")
    words = sorted({w for t in SENTENCES for w in t.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars]]
    (root / "vocab.txt").write_text("\n".join(vocab + words) + "\n")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab) + len(words),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(root / "hf")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(root / "hf")
    transformer = Transformer(str(root / "hf"), max_seq_length=32)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling]).save(str(root / "float"))
    model, compressed, _ = compress_encoder(
        str(root / "float"), 3.0, SENTENCES * 8, progress=False, deadline=time.monotonic()
    )
    save_compressed(model, compressed, root / "3bit")
    return root / "3bit"


def test_the_compressed_encoder_runs_in_bf16(compressed_dir, tmp_path) -> None:
    import torch

    reference = Encoder(str(compressed_dir), precision="fp32").encode(SENTENCES)
    encoder = Encoder(str(compressed_dir), precision="bf16")
    emb = encoder.encode(SENTENCES)
    assert encoder.precision_used == "bf16"
    assert next(encoder.torch_model().parameters()).dtype == torch.bfloat16
    # centred cosine: a random BERT's embeddings share one large common direction
    centre = reference.mean(0)
    a, b = emb - centre, reference - centre
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99, cos
    # auto measures the compressed directory under its own key
    measure = fake({"fp32": 1.0, "bf16": 0.4})
    chooser = PrecisionChooser(tmp_path / "p.json", measure=measure)
    auto = Encoder(str(compressed_dir), precision="auto", precision_chooser=chooser)
    auto.encode(SENTENCES)
    assert auto.precision_used == "bf16" and measure.calls == 1
    assert chooser.known(auto.name, auto.path) is not None


def test_a_failed_measurement_falls_back_to_fp32(tmp_path, fp32_embeddings, caplog) -> None:
    def broken(model, texts):
        raise RuntimeError("no clock")

    chooser = PrecisionChooser(tmp_path / "p.json", measure=broken)
    encoder = Encoder(backend="torch", precision_chooser=chooser)
    with caplog.at_level(logging.WARNING):
        emb = encoder.encode(TEXTS)
    assert encoder.precision_used == "fp32" and "no clock" in caplog.text
    np.testing.assert_allclose(emb, fp32_embeddings, atol=1e-6)
