"""Compress a sentence encoder's weights with the quantizer core, save and load it.

Every ``nn.Linear`` weight of the transformer (and, optionally, the word
embedding table) becomes ``K`` residual sign planes with per-row (or per-group)
scales, fitted by :func:`binsearch.quantize.binarize_weight`: greedy residual
signs, least-squares scales, then alternating refinement. LayerNorm, biases and
position embeddings stay float. :mod:`binsearch.compress_calibrate` can then
tune signs and scales by distillation on real text.

A compressed model directory holds::

    modules.json, config.json, tokenizer files, 1_Pooling/ ...   as in the source model
    model.safetensors        only the float tensors (LayerNorm, biases, positions)
    quantized.npz            per tensor: <name>.planes uint8 (K, rows, ceil(cols/8))
                             (numpy packbits, set bit = +1) and <name>.scales
                             float16 (K, rows, groups)
    binsearch_compressed.json  how it was made (bits per tensor, group size, ...)

:func:`load_compressed` dequantizes once into an ordinary
``SentenceTransformer``, so it encodes at float speed. Loading the directory
with plain sentence-transformers leaves the quantized weights at random
values (transformers warns about them) — load it through binsearch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.quantize import binarize_weight, dequantize_weight

CONFIG_FILE = "binsearch_compressed.json"
PLANES_FILE = "quantized.npz"
FLOAT_FILE = "model.safetensors"
FORMAT_VERSION = 1
MAX_BITS = 8


class CompressionError(ValueError):
    """A model or setting the compressor cannot work with."""


@dataclass
class QuantizedTensor:
    """One weight as stored: packed sign planes and float16 scales.

    ``planes``: uint8 ``(K, rows, ceil(cols/8))`` (``np.packbits`` along the
    columns, set bit = +1); ``scales``: float16 ``(K, rows, groups)``.
    """

    planes: np.ndarray
    scales: np.ndarray
    cols: int

    @classmethod
    def from_signs(cls, signs: np.ndarray, scales: np.ndarray) -> QuantizedTensor:
        """Pack int8 ±1 ``signs (K, rows, cols)`` and round ``scales`` to float16."""
        return cls(np.packbits(signs > 0, axis=-1), scales.astype(np.float16), int(signs.shape[-1]))

    @property
    def bits(self) -> int:
        return int(self.planes.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.planes.shape[1]), self.cols

    def signs(self) -> np.ndarray:
        """int8 ±1 ``(K, rows, cols)``."""
        bits = np.unpackbits(self.planes, axis=-1, count=self.cols)
        return (bits.astype(np.int8) * 2 - 1).astype(np.int8)

    def dequantize(self) -> np.ndarray:
        """float32 ``(rows, cols)``: ``sum_k scale_k * sign_k`` — the one decode path."""
        return dequantize_weight(self.signs(), self.scales.astype(np.float32))

    def stored_bits(self) -> int:
        """Every stored bit: one per sign, 16 per scale."""
        return self.bits * self.shape[0] * self.cols + 16 * self.scales.size


@dataclass
class CompressedEncoder:
    """A compressed transformer: quantized tensors by state-dict name, and provenance."""

    tensors: dict[str, QuantizedTensor]
    config: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Dequantized float32 weights by name."""
        return {name: q.dequantize() for name, q in self.tensors.items()}

    def bits_per_weight(self) -> dict[str, float]:
        """Sign bits and all stored bits (signs + scales) per quantized weight."""
        n = sum(q.shape[0] * q.cols for q in self.tensors.values())
        signs = sum(q.bits * q.shape[0] * q.cols for q in self.tensors.values())
        stored = sum(q.stored_bits() for q in self.tensors.values())
        return {"sign_bits": signs / n, "stored_bits": stored / n, "weights": n}


def check_bits(bits: int) -> int:
    """``bits`` as an int in 1..8, else :class:`CompressionError`."""
    if isinstance(bits, bool) or int(bits) != bits or not 1 <= bits <= MAX_BITS:
        raise CompressionError(
            f"bits per weight must be an integer from 1 to {MAX_BITS}, got {bits}"
        )
    return int(bits)


def transformer_of(model: Any) -> Any:
    """The Hugging Face model inside a sentence-transformers model (its first module)."""
    first = model[0] if hasattr(model, "__getitem__") else model
    auto = getattr(first, "auto_model", None) or getattr(first, "model", None)
    if auto is None:
        raise CompressionError(
            "the model's first module is not a transformer (no auto_model); "
            "only sentence-transformers models with a Transformer module can be compressed"
        )
    return auto


def quantizable_weights(auto_model: Any, embeddings: bool = False) -> list[str]:
    """State-dict names of the weights to quantize: every ``nn.Linear`` weight,
    plus the word-embedding table when ``embeddings`` is set.

    Raises :class:`CompressionError` when the model has no Linear layer.
    """
    from torch import nn

    names = [f"{n}.weight" for n, m in auto_model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise CompressionError("the model has no nn.Linear layers to compress")
    if embeddings:
        table = word_embedding_name(auto_model)
        if table is None:
            raise CompressionError("the model has no word-embedding table to compress")
        names.append(table)
    return names


def word_embedding_name(auto_model: Any) -> str | None:
    """State-dict name of the input (word) embedding table, or None."""
    get = getattr(auto_model, "get_input_embeddings", None)
    table = get() if get else None
    for name, module in auto_model.named_modules():
        if table is not None and module is table:
            return f"{name}.weight"
    return None


def compress_weights(
    weights: Mapping[str, np.ndarray],
    bits: int | Mapping[str, int],
    group_size: int | None = None,
    iters: int = 10,
    progress: bool = True,
) -> dict[str, QuantizedTensor]:
    """Post-training quantization of named 2-D float weights (no data needed).

    ``bits`` is one K for all, or K per name (a bit allocation). Scales are per
    output row, or per ``group_size`` columns when that divides the row.
    """
    out: dict[str, QuantizedTensor] = {}
    for name, w in tqdm(weights.items(), desc="quantizing", unit="tensor", disable=not progress):
        k = check_bits(bits[name] if isinstance(bits, Mapping) else bits)
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2:
            raise CompressionError(f"{name}: expected a 2-D weight, got shape {w.shape}")
        g = group_size if group_size and w.shape[1] % group_size == 0 else None
        signs, scales = binarize_weight(w, k, group_size=g, iters=iters)
        out[name] = QuantizedTensor.from_signs(signs, scales)
    return out


def apply_weights(auto_model: Any, weights: Mapping[str, np.ndarray]) -> None:
    """Copy float ``weights`` (by state-dict name) into ``auto_model`` in place."""
    import torch

    params = dict(auto_model.named_parameters())
    with torch.no_grad():
        for name, w in weights.items():
            if name not in params:
                raise CompressionError(f"the model has no weight named {name!r}")
            params[name].copy_(torch.from_numpy(np.asarray(w, dtype=np.float32)))


def compress_encoder(
    model_name_or_path: str | None,
    bits: int | Mapping[str, int],
    embeddings: bool = False,
    embedding_bits: int | None = None,
    group_size: int | None = None,
    iters: int = 10,
    progress: bool = True,
) -> tuple[Any, CompressedEncoder]:
    """Quantize an encoder post-training.

    Args:
        model_name_or_path: as for :class:`binsearch.encoder.Encoder`.
        bits: K for every Linear weight, or a mapping name -> K.
        embeddings: quantize the word-embedding table too.
        embedding_bits: K for that table (default: ``bits`` when it is an int).
        group_size: columns per scale (None: one scale per row and plane).
        iters: alternating refinement rounds.

    Returns:
        ``(model, compressed)``: the float sentence-transformers model with the
        dequantized weights loaded into it, and the compressed tensors.
    """
    from binsearch.encoder import Encoder

    if isinstance(bits, Mapping):
        for k in bits.values():
            check_bits(k)
    else:
        check_bits(bits)
    if group_size is not None and group_size < 1:
        raise CompressionError(f"group size must be at least 1, got {group_size}")
    encoder = Encoder(model_name_or_path)
    model = encoder.model
    auto = transformer_of(model)
    names = quantizable_weights(auto, embeddings)
    state = auto.state_dict()
    table = word_embedding_name(auto) if embeddings else None
    if isinstance(bits, Mapping):
        plan = {n: check_bits(bits[n]) for n in names if n in bits}
    else:
        plan = {n: bits for n in names}
    if table is not None and embedding_bits is not None:
        plan[table] = check_bits(embedding_bits)
    weights = {n: state[n].detach().cpu().numpy() for n in plan}
    tensors = compress_weights(weights, plan, group_size, iters, progress)
    apply_weights(auto, {n: q.dequantize() for n, q in tensors.items()})
    config = {
        "format": FORMAT_VERSION,
        "source_model": encoder.name,
        "method": "residual binarization, least-squares scales, alternating refinement",
        "bits": bits if isinstance(bits, int) else "per tensor",
        "embedding_bits": plan.get(table) if table else None,
        "group_size": group_size,
        "iters": iters,
        "calibration": None,
    }
    return model, CompressedEncoder(tensors, config)


def save_compressed(
    model: Any, compressed: CompressedEncoder, out: str | os.PathLike[str]
) -> dict[str, Any]:
    """Write a compressed model directory at ``out`` (see the module docstring).

    ``model`` supplies everything that is not quantized (tokenizer, pooling,
    float tensors). Refuses to overwrite a non-empty directory that is not a
    compressed model. Returns the written config (with sizes).
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
        raise CompressionError(f"{out} exists and is not a compressed model; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    auto = transformer_of(model)
    staging = out.parent / f".{out.name}.saving"
    shutil.rmtree(staging, ignore_errors=True)
    model.save(str(staging))  # tokenizer, modules, pooling ... and the float weights
    for weights_file in ("model.safetensors", "pytorch_model.bin"):
        (staging / weights_file).unlink(missing_ok=True)
    rest = {
        name: t.detach().cpu().contiguous()
        for name, t in auto.state_dict().items()
        if name not in compressed.tensors
    }
    save_file(rest, str(staging / FLOAT_FILE))
    arrays: dict[str, np.ndarray] = {}
    for name, q in compressed.tensors.items():
        arrays[f"{name}.planes"] = q.planes
        arrays[f"{name}.scales"] = q.scales
    np.savez(staging / PLANES_FILE, **arrays)
    config = dict(compressed.config)
    config["tensors"] = {
        name: {"bits": q.bits, "shape": list(q.shape), "groups": int(q.scales.shape[-1])}
        for name, q in compressed.tensors.items()
    }
    config["bits_per_weight"] = compressed.bits_per_weight()
    config["size_bytes"] = 0
    for _ in range(4):  # the size includes this file, whose length depends on the size
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if config["size_bytes"] == directory_size(staging):
            break
        config["size_bytes"] = directory_size(staging)
    # Swap in whole: a crash mid-save never leaves a half-written model at ``out``.
    shutil.rmtree(out)
    os.replace(staging, out)
    return config


def directory_size(path: str | os.PathLike[str]) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def is_compressed(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory written by :func:`save_compressed`."""
    return (Path(path) / CONFIG_FILE).is_file()


def read_compressed(path: str | os.PathLike[str]) -> CompressedEncoder:
    """The quantized tensors and config of a compressed model directory."""
    path = Path(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        with np.load(path / PLANES_FILE) as npz:
            tensors = {
                name: QuantizedTensor(
                    npz[f"{name}.planes"], npz[f"{name}.scales"], spec["shape"][1]
                )
                for name, spec in config["tensors"].items()
            }
    except (OSError, KeyError, ValueError) as exc:
        raise CompressionError(f"{path}: not a readable compressed model ({exc})") from exc
    if config.get("format") != FORMAT_VERSION:
        raise CompressionError(
            f"{path}: compressed format {config.get('format')!r} is not supported"
        )
    return CompressedEncoder(tensors, config)


@contextmanager
def _quiet_transformers():
    """Silence transformers' warning about the (deliberately) missing weights."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_compressed(path: str | os.PathLike[str], device: str = "cpu") -> Any:
    """A ``SentenceTransformer`` from a compressed directory, dequantized once.

    The float tensors come from ``model.safetensors``; the quantized ones are
    rebuilt by :meth:`QuantizedTensor.dequantize`, so two loads give the same
    weights bit for bit.
    """
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    compressed = read_compressed(path)
    with _quiet_transformers():
        model = SentenceTransformer(str(path), device=device)
    auto = transformer_of(model)
    apply_weights(auto, compressed.state_dict())
    return model


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``."""
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def measure_sensitivity(
    model: Any,
    texts: list[str],
    names: list[str],
    options: tuple[int, ...],
    group_size: int | None = None,
    iters: int = 10,
    progress: bool = True,
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, QuantizedTensor]]]:
    """How much each weight, quantized alone, moves the sentence embeddings.

    For every weight in ``names`` and every K in ``options`` the weight is
    quantized (others float), ``texts`` are encoded, and the loss is
    ``1 - mean cosine`` to the float embeddings. Returns the losses
    ``{name: {K: loss}}`` and the quantized tensors ``{name: {K: tensor}}``
    (reused by the allocation, so nothing is quantized twice).
    """
    import torch

    auto = transformer_of(model)
    params = dict(auto.named_parameters())

    def embed() -> np.ndarray:
        return model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)

    reference = embed()
    losses: dict[str, dict[int, float]] = {}
    tensors: dict[str, dict[int, QuantizedTensor]] = {}
    for name in tqdm(names, desc="sensitivity", unit="tensor", disable=not progress):
        original = params[name].detach().clone()
        w = original.numpy()
        losses[name], tensors[name] = {}, {}
        for k in options:
            q = compress_weights({name: w}, k, group_size, iters, progress=False)[name]
            apply_weights(auto, {name: q.dequantize()})
            losses[name][k] = float(1 - (embed() * reference).sum(1).mean())
            tensors[name][k] = q
        with torch.no_grad():
            params[name].copy_(original)
    return losses, tensors


def allocate_bits(
    losses: Mapping[str, Mapping[int, float]], sizes: Mapping[str, int], budget: float
) -> dict[str, int]:
    """Bits per weight under an average ``budget`` (weighted by ``sizes``), by sensitivity.

    Starts every weight at its fewest bits and repeatedly gives one more bit to
    the weight whose measured loss falls most per added stored bit, while the
    size-weighted average stays within ``budget`` (losses are assumed to add
    up across weights, as in HAWQ-style allocation). Raises
    :class:`CompressionError` when even the fewest bits exceed the budget.
    """
    plan = {name: min(options) for name, options in losses.items()}
    total = sum(sizes[n] for n in plan)
    used = sum(plan[n] * sizes[n] for n in plan)
    if used > budget * total + 1e-9:
        raise CompressionError(f"a budget of {budget} bits per weight is below the fewest bits")
    while True:
        best, best_gain = None, 0.0
        for name, options in losses.items():
            k = plan[name]
            if k + 1 not in options or used + sizes[name] > budget * total + 1e-9:
                continue
            gain = (options[k] - options[k + 1]) / sizes[name]
            if best is None or gain > best_gain:
                best, best_gain = name, gain
        if best is None:
            return plan
        plan[best] += 1
        used += sizes[best]
