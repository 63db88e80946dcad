"""The ONNX export made in a child process: torch stays out of the asking process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX Runtime path needs onnxruntime")

from binsearch.encoder import onnx_runtime  # noqa: E402
from binsearch.encoder.model import Encoder  # noqa: E402

CRANFIELD = Path(__file__).resolve().parents[2] / "binsearch" / "data" / "cranfield"


def test_export_in_a_child_process(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BINSEARCH_CACHE", str(tmp_path / "cache"))
    encoder = Encoder(backend="onnx")
    assert encoder.onnx_state() == "missing"
    assert encoder.onnx_encoder() is not None
    assert encoder._model is None  # the torch model was loaded by the child only
    assert encoder.onnx_state() == "ready" and Encoder().onnx_state() == "cached"
    # The export reproduces the published embeddings of the bundled Cranfield.
    rows = [json.loads(line) for line in (CRANFIELD / "corpus.jsonl").open()][:8]
    texts = [f"{r['title']} {r['text']}".strip() for r in rows]
    reference = np.load(CRANFIELD / "embeddings" / "all-MiniLM-L6-v2" / "corpus.npy")[:8]
    cosine = np.sum(encoder.encode(texts) * reference, axis=1)
    assert cosine.min() > 0.999


def test_a_failed_child_export_says_why_in_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BINSEARCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(onnx_runtime.ExportError) as err:
        onnx_runtime.export_in_child(tmp_path / "model", "broken")
    assert "\n" not in str(err.value) and str(err.value)
    assert onnx_runtime.find_export(tmp_path / "model", "broken") is None
