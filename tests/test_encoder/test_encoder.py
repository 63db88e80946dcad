"""The encoder's two paths: torch (sentence-transformers) and the cached ONNX Runtime export.

References are independent of the ONNX path: the torch model itself, and the
precomputed all-MiniLM-L6-v2 embeddings shipped with the bundled Cranfield
(made by the dataset's maintainers). The export is made once per machine
into the encoder cache (``$BINSEARCH_CACHE`` or ``~/.cache/binsearch``), as
the first real use would make it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX Runtime path needs onnxruntime")

from binsearch.encoder import onnx_runtime as encoder_onnx  # noqa: E402
from binsearch.encoder.model import ONNX_MAX_TEXTS, Encoder, ModelError  # noqa: E402

CRANFIELD = Path(__file__).resolve().parents[2] / "binsearch" / "data" / "cranfield"
QUERIES = [
    "a",
    "What is the effect of vitamin D on bone density?",
    "lift of a wing in a propeller slipstream",
    "Binary codes make semantic search cheap, and ÜNICODE ñ 日本語 too.",
    "   leading and trailing spaces   ",
]


@pytest.fixture(scope="session")
def torch_encoder() -> Encoder:
    return Encoder(backend="torch")


@pytest.fixture(scope="session")
def onnx_encoder() -> Encoder:
    encoder = Encoder(backend="onnx")
    if encoder.onnx_encoder() is None:
        pytest.fail("the default model's ONNX export failed (see the log line)")
    return encoder


@pytest.fixture(scope="session")
def cranfield_docs() -> tuple[list[str], np.ndarray]:
    """The 12 longest bundled Cranfield documents (past 256 tokens) and their embeddings."""
    rows = [json.loads(line) for line in (CRANFIELD / "corpus.jsonl").open()]
    texts = [f"{r['title']} {r['text']}".strip() for r in rows]
    reference = np.load(CRANFIELD / "embeddings" / "all-MiniLM-L6-v2" / "corpus.npy")
    longest = np.argsort([-len(t) for t in texts], kind="stable")[:12]
    return [texts[i] for i in longest], reference[longest]


def test_onnx_reproduces_the_published_embeddings(onnx_encoder, cranfield_docs) -> None:
    texts, reference = cranfield_docs
    emb = onnx_encoder.encode(texts, batch_size=8)
    assert emb.dtype == np.float32 and emb.shape == (12, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(emb * reference, axis=1)
    assert cosine.min() >= 0.999, cosine.min()


def test_onnx_matches_torch(onnx_encoder, torch_encoder, cranfield_docs) -> None:
    texts = cranfield_docs[0][:4] + QUERIES
    cosine = np.sum(onnx_encoder.encode(texts) * torch_encoder.encode(texts), axis=1)
    assert cosine.mean() >= 0.9999 and cosine.min() >= 0.999, cosine


def test_onnx_rows_do_not_depend_on_batching(onnx_encoder, cranfield_docs) -> None:
    # padding within a batch must not leak into a row: every row equals the row
    # encoded alone, whatever the batch size and order
    texts = QUERIES + cranfield_docs[0][:1]
    alone = np.concatenate([onnx_encoder.encode([t]) for t in texts])
    for batch_size in (1, 3, 64):
        np.testing.assert_allclose(onnx_encoder.encode(texts, batch_size), alone, atol=2e-5)
    np.testing.assert_allclose(onnx_encoder.encode(texts[::-1]), alone[::-1], atol=2e-5)


def test_onnx_edge_cases(onnx_encoder) -> None:
    assert onnx_encoder.dim == 384
    assert onnx_encoder.encode([]).shape == (0, 384)
    with pytest.raises(ValueError, match="batch size"):
        onnx_encoder.encode(["x"], batch_size=0)
    assert onnx_encoder.encode([""]).shape == (1, 384)


def test_onnx_is_safe_across_threads(onnx_encoder) -> None:
    expected = onnx_encoder.encode(QUERIES)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(onnx_encoder.encode(QUERIES))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        np.testing.assert_allclose(r, expected, atol=2e-5)


def test_auto_sends_small_calls_to_onnx_and_large_ones_to_torch(
    onnx_encoder, torch_encoder
) -> None:
    auto = Encoder()
    assert auto.backend == "auto"
    small = auto.encode(QUERIES[: min(ONNX_MAX_TEXTS, 3)])
    assert auto._model is None, "a small call must not load the torch model"
    np.testing.assert_allclose(small, onnx_encoder.encode(QUERIES[:3]), atol=1e-6)
    texts = (QUERIES * ONNX_MAX_TEXTS)[: ONNX_MAX_TEXTS + 1]
    large = auto.encode(texts)
    assert auto._model is not None, "a large call runs on torch"
    np.testing.assert_allclose(large, torch_encoder.encode(texts), atol=1e-6)


def test_missing_onnxruntime_falls_back_to_torch_with_one_log_line(
    onnx_encoder, torch_encoder, monkeypatch, caplog
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    encoder = Encoder(backend="onnx")
    encoder._model = torch_encoder.model  # share the loaded weights: this is about routing
    with caplog.at_level(logging.WARNING, logger="binsearch.encoder"):
        emb = encoder.encode(QUERIES)
        encoder.encode(QUERIES)
    assert [r.getMessage() for r in caplog.records] == [
        "encoder all-MiniLM-L6-v2: ONNX Runtime path off, using torch "
        "(onnxruntime is not installed)"
    ]
    np.testing.assert_allclose(emb, torch_encoder.encode(QUERIES), atol=1e-6)


def test_failed_export_falls_back_to_torch(torch_encoder, tmp_path, monkeypatch, caplog) -> None:
    def broken(model, out_dir):
        raise encoder_onnx.ExportError("ONNX export failed: simulated")

    monkeypatch.setenv("BINSEARCH_CACHE", str(tmp_path))
    monkeypatch.setattr(encoder_onnx, "export_onnx", broken)
    encoder = Encoder()
    encoder._model = torch_encoder.model
    with caplog.at_level(logging.WARNING, logger="binsearch.encoder"):
        emb = encoder.encode(QUERIES[:2])
    assert "ExportError: ONNX export failed: simulated" in caplog.text
    assert not list((tmp_path / "encoders").iterdir()), "a failed export leaves nothing behind"
    np.testing.assert_allclose(emb, torch_encoder.encode(QUERIES[:2]), atol=1e-6)


def test_verification_rejects_an_export_that_tokenizes_differently(
    onnx_encoder, torch_encoder, tmp_path
) -> None:
    directory = onnx_encoder.onnx_encoder().directory
    for f in directory.iterdir():
        (tmp_path / f.name).symlink_to(f)
    meta = json.loads((directory / "meta.json").read_text()) | {"max_length": 32}
    (tmp_path / "meta.json").unlink()
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(encoder_onnx.ExportError, match="token ids"):
        encoder_onnx._verify(torch_encoder.model, encoder_onnx.OnnxEncoder(tmp_path))


def test_export_key_follows_the_model_files(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights.bin").write_bytes(b"1234")
    key = encoder_onnx.export_key(tmp_path)
    assert key == encoder_onnx.export_key(tmp_path) and len(key) == 16
    (tmp_path / "sub" / "weights.bin").write_bytes(b"12345")
    assert encoder_onnx.export_key(tmp_path) != key


def test_cache_root_honours_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BINSEARCH_CACHE", str(tmp_path))
    assert encoder_onnx.cache_root() == tmp_path
    monkeypatch.delenv("BINSEARCH_CACHE")
    assert encoder_onnx.cache_root() == Path.home() / ".cache" / "binsearch"


def test_bad_backend_is_a_one_line_error() -> None:
    with pytest.raises(ModelError, match="backend must be one of auto, torch, onnx"):
        Encoder(backend="tensorrt")


def test_torch_backend_never_touches_onnx(monkeypatch) -> None:
    monkeypatch.setenv("BINSEARCH_ENCODER_BACKEND", "torch")
    encoder = Encoder()
    assert encoder.backend == "torch" and encoder.onnx_encoder() is None
