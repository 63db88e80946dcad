"""The on-disk format of a compressed encoder: write, read and load a directory.

This module is the FORMAT only (the encoder loads compressed directories
through it); how weights get their signs and scales is the ALGORITHM, in
:mod:`binsearch.encoder.compress.compressor`. It imports neither that module nor the encoder.

A compressed model directory holds::

    modules.json, config.json, tokenizer files, 1_Pooling/ ...   as in the source model
    model.safetensors        only the float tensors (LayerNorm, biases) as float16
    quantized.npz            per stored tensor KEY:
                               KEY.planes  uint64 (K, rows, ceil(cols/64)): sign bits
                                           packed by index.codes.pack_codes, the
                                           project's one convention (DESIGN.md, "code
                                           format"): bit j % 64 of word j // 64, set = +1
                               KEY.scales  float16 (K, rows, groups)
                               KEY.rows    (row tiers only) uint16/int32 (rows,): which
                                           rows of the full matrix this tier holds
    binsearch_compressed.json  how it was made, per-tensor bits, bits per weight, size

A weight is stored whole under its state-dict name, or split into row *tiers*
``NAME@K`` (the word-embedding table: frequent tokens get more planes than
rare ones). Format 1 directories (bits packed MSB first, float32 rest) are
still read.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from binsearch.codes.quantize import dequantize_weight
from index.codes import pack_codes, unpack_codes

CONFIG_FILE = "binsearch_compressed.json"
PLANES_FILE = "quantized.npz"
FLOAT_FILE = "model.safetensors"
COMPRESSED_FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MAX_BITS = 8
TIER_SEP = "@"


class CompressionError(ValueError):
    """A model, setting or directory the compressor cannot work with."""


def pack_signs(signs: np.ndarray) -> np.ndarray:
    """int8 ±1 ``(K, rows, cols)`` -> uint64 ``(K, rows, ceil(cols/64))`` by the code
    format's :func:`index.codes.pack_codes` (column ``j`` is bit ``j % 64`` of word
    ``j // 64``, LSB first, set = +1): a weight row is stored like a K-plane code."""
    return np.ascontiguousarray(pack_codes(np.swapaxes(signs, 0, 1)).swapaxes(0, 1))


def unpack_signs(planes: np.ndarray, cols: int) -> np.ndarray:
    """Inverse of :func:`pack_signs`: int8 ±1 ``(K, rows, cols)``. Format 1's uint8
    planes (``np.packbits``, MSB first) are unpacked by their own order."""
    if planes.dtype == np.uint8:
        bits = np.unpackbits(planes, axis=-1, count=cols, bitorder="big")
        return (bits.astype(np.int8) * 2 - 1).astype(np.int8)
    return np.ascontiguousarray(unpack_codes(np.swapaxes(planes, 0, 1), cols).swapaxes(0, 1))


@dataclass
class QuantizedTensor:
    """One stored weight (or row tier of one): packed sign planes and float16 scales.

    ``planes``: uint64 ``(K, rows, ceil(cols/64))`` (:func:`pack_signs`; uint8
    MSB-first bytes in format 1 directories);
    ``scales``: float16 ``(K, rows, groups)``; ``rows``: for a tier, the indices
    ``(rows,)`` of the full matrix's rows it holds, else None.
    """

    planes: np.ndarray
    scales: np.ndarray
    cols: int
    rows: np.ndarray | None = None

    @classmethod
    def from_signs(
        cls, signs: np.ndarray, scales: np.ndarray, rows: np.ndarray | None = None
    ) -> QuantizedTensor:
        """Pack int8 ±1 ``signs (K, rows, cols)`` and round ``scales`` to float16."""
        if rows is not None:
            rows = np.asarray(rows, dtype=np.uint16 if rows.max(initial=0) < 2**16 else np.int32)
        return cls(pack_signs(signs), scales.astype(np.float16), int(signs.shape[-1]), rows)

    @property
    def bits(self) -> int:
        return int(self.planes.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.planes.shape[1]), self.cols

    def signs(self) -> np.ndarray:
        """int8 ±1 ``(K, rows, cols)``."""
        return unpack_signs(self.planes, self.cols)

    def dequantize(self) -> np.ndarray:
        """float32 ``(rows, cols)``: ``sum_k scale_k * sign_k`` — the one decode path.

        Format 2 (the load-time path): each row's ``2^K`` values are summed once,
        plane by plane in order as :func:`dequantize_weight` sums, and every
        weight picks its value by the K-bit code its planes spell — one gather
        instead of K float passes (2x faster on the word table).
        """
        if self.planes.dtype != np.uint64:
            return dequantize_weight(self.signs(), self.scales.astype(np.float32))
        planes, rows = self.planes.shape[:2]
        groups = self.scales.shape[-1]
        as_bytes = self.planes.astype("<u8", copy=False).view(np.uint8)
        bits = np.unpackbits(as_bytes, axis=-1, count=self.cols, bitorder="little")
        code = bits[0]
        for k in range(1, planes):
            code = code | (bits[k] << k)
        pattern = (np.arange(2**planes)[:, None] >> np.arange(planes)[None, :]) & 1 == 1
        scales = self.scales.astype(np.float32)[..., None]  # (K, rows, groups, 1)
        values = np.where(pattern[:, 0], scales[0], -scales[0])  # (rows, groups, 2^K)
        for k in range(1, planes):
            values = values + np.where(pattern[:, k], scales[k], -scales[k])
        # flat gather with an int32 index: faster than take_along_axis's intp one
        kind = np.int32 if (rows * groups) << planes < 2**31 else np.int64
        index = code.reshape(rows * groups, self.cols // groups).astype(kind)
        index += (np.arange(rows * groups, dtype=kind) << planes)[:, None]
        return values.ravel().take(index).reshape(rows, self.cols)

    def stored_bits(self) -> int:
        """Every stored bit: the sign words (padding included), 16 per scale, and the
        row indices of a tier."""
        index = 0 if self.rows is None else 8 * self.rows.nbytes
        return 8 * self.planes.nbytes + 16 * self.scales.size + index


def target_name(key: str) -> str:
    """The state-dict name a stored key decodes into (``NAME@K`` -> ``NAME``)."""
    return key.split(TIER_SEP, 1)[0]


@dataclass
class CompressedEncoder:
    """A compressed transformer: quantized tensors by key, and provenance."""

    tensors: dict[str, QuantizedTensor]
    config: dict[str, Any] = field(default_factory=dict)

    def state_dict(self, shapes: Mapping[str, tuple[int, int]] | None = None) -> dict[str, Any]:
        """Dequantized float32 weights by state-dict name (tiers reassembled).

        ``shapes`` gives the full shape of tiered weights (default: the saved config's).
        """
        shapes = dict(shapes or {})
        shapes.update({k: tuple(v) for k, v in self.config.get("full_shapes", {}).items()})
        out: dict[str, np.ndarray] = {}
        for key, q in self.tensors.items():
            if q.rows is None:
                out[key] = q.dequantize()
                continue
            name = target_name(key)
            if name not in out:
                out[name] = np.zeros(shapes[name], dtype=np.float32)
            out[name][q.rows.astype(np.int64)] = q.dequantize()
        return out

    def weights_per_name(self) -> dict[str, int]:
        """Number of weights per state-dict name."""
        counts: dict[str, int] = {}
        for key, q in self.tensors.items():
            counts[target_name(key)] = counts.get(target_name(key), 0) + q.shape[0] * q.cols
        return counts

    def bits_per_weight(self) -> dict[str, float]:
        """Sign bits and all stored bits (signs + scales + tier indices) per quantized weight."""
        n = sum(q.shape[0] * q.cols for q in self.tensors.values())
        signs = sum(q.bits * q.shape[0] * q.cols for q in self.tensors.values())
        stored = sum(q.stored_bits() for q in self.tensors.values())
        return {"sign_bits": signs / n, "stored_bits": stored / n, "weights": n}

    def per_name_bits(self) -> dict[str, float]:
        """Stored bits per weight of each state-dict name (the per-layer allocation)."""
        bits: dict[str, int] = {}
        for key, q in self.tensors.items():
            bits[target_name(key)] = bits.get(target_name(key), 0) + q.stored_bits()
        counts = self.weights_per_name()
        return {name: bits[name] / counts[name] for name in bits}


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


def apply_weights(auto_model: Any, weights: Mapping[str, np.ndarray]) -> None:
    """Copy float ``weights`` (by state-dict name) into ``auto_model`` in place."""
    import torch

    params = dict(auto_model.named_parameters())
    with torch.no_grad():
        for name, w in weights.items():
            if name not in params:
                raise CompressionError(f"the model has no weight named {name!r}")
            params[name].copy_(torch.from_numpy(np.asarray(w, dtype=np.float32)))


def directory_size(path: str | os.PathLike[str]) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def is_compressed(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory written by :func:`save_compressed`."""
    return (Path(path) / CONFIG_FILE).is_file()


def save_compressed(
    model: Any, compressed: CompressedEncoder, out: str | os.PathLike[str]
) -> dict[str, Any]:
    """Write a compressed model directory at ``out`` (see the module docstring).

    ``model`` supplies everything that is not quantized (tokenizer, pooling,
    float tensors, stored as float16). Refuses to overwrite a non-empty
    directory that is not a compressed model. Returns the written config.
    """
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_compressed(out))):
        raise CompressionError(f"{out} exists and is not a compressed model; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    auto = transformer_of(model)
    staging = out.parent / f".{out.name}.saving"
    shutil.rmtree(staging, ignore_errors=True)
    model.save(str(staging))  # tokenizer, modules, pooling ... and the float weights
    for weights_file in ("model.safetensors", "pytorch_model.bin"):
        (staging / weights_file).unlink(missing_ok=True)
    quantized = {target_name(k) for k in compressed.tensors}
    state = auto.state_dict()
    # Float16 for what stays float: LayerNorms and biases lose nothing measurable.
    rest = {
        name: t.detach().cpu().to(torch.float16).contiguous()
        for name, t in state.items()
        if name not in quantized and t.is_floating_point()
    }
    save_file(rest, str(staging / FLOAT_FILE))
    arrays: dict[str, np.ndarray] = {}
    for key, q in compressed.tensors.items():
        arrays[f"{key}.planes"] = q.planes
        arrays[f"{key}.scales"] = q.scales
        if q.rows is not None:
            arrays[f"{key}.rows"] = q.rows
    np.savez(staging / PLANES_FILE, **arrays)
    config = dict(compressed.config)
    config["format"] = COMPRESSED_FORMAT_VERSION
    config["bit_order"] = "index.codes.pack_codes (uint64, LSB first)"
    config["full_shapes"] = {
        name: list(state[name].shape)
        for name in sorted(quantized)
        if any(q.rows is not None for k, q in compressed.tensors.items() if target_name(k) == name)
    }
    config["tensors"] = {
        key: {"bits": q.bits, "shape": list(q.shape), "groups": int(q.scales.shape[-1])}
        for key, q in compressed.tensors.items()
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


def read_compressed(path: str | os.PathLike[str]) -> CompressedEncoder:
    """The quantized tensors and config of a compressed model directory.

    Reads format 2 and the older format 1 (MSB-first bits); anything else is a
    :class:`CompressionError` with a one-line reason.
    """
    path = Path(path)
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CompressionError(f"{path}: not a readable compressed model ({exc})") from exc
    version = config.get("format")
    if version not in READABLE_FORMATS:
        raise CompressionError(
            f"{path}: compressed format {version!r} is not supported "
            f"(this binsearch reads {', '.join(map(str, READABLE_FORMATS))}); compress the model again"
        )
    try:
        with np.load(path / PLANES_FILE) as npz:
            tensors = {
                key: QuantizedTensor(
                    npz[f"{key}.planes"],
                    npz[f"{key}.scales"],
                    spec["shape"][1],
                    npz[f"{key}.rows"] if f"{key}.rows" in npz.files else None,
                )
                for key, spec in config["tensors"].items()
            }
    except (OSError, KeyError, ValueError) as exc:
        raise CompressionError(f"{path}: not a readable compressed model ({exc})") from exc
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


_RANDOM_INITS = ("normal_", "uniform_", "trunc_normal_", "xavier_uniform_", "xavier_normal_")
_RANDOM_INITS += ("kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextmanager
def _no_random_init():
    """Skip transformers' random initialisation of the weights missing from
    ``model.safetensors`` (the quantized ones, replaced right after): it took
    0.25 s of the load. Only the random draws are skipped; the buffers'
    initialisation (``position_ids``' copy, zeros, ones) still runs."""
    try:
        from transformers.initialization import TORCH_INIT_FUNCTIONS as inits
    except ImportError:  # another transformers: initialise as usual
        yield
        return
    saved = {n: inits[n] for n in _RANDOM_INITS if n in inits}
    inits.update({n: lambda tensor, *_a, **_k: tensor for n in saved})
    try:
        yield
    finally:
        inits.update(saved)


def load_compressed(path: str | os.PathLike[str], device: str = "cpu") -> Any:
    """A ``SentenceTransformer`` from a compressed directory, dequantized once.

    The float tensors come from ``model.safetensors``; the quantized ones are
    rebuilt by :meth:`QuantizedTensor.dequantize`, so two loads give the same
    weights bit for bit, and encoding runs at float speed.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    compressed = read_compressed(path)
    with _quiet_transformers(), _no_random_init():
        model = SentenceTransformer(str(path), device=device)
    auto = transformer_of(model)
    params = dict(auto.named_parameters())
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    for name, weight in compressed.state_dict(shapes).items():
        if name not in params or tuple(weight.shape) != shapes[name]:
            raise CompressionError(f"{path}: stored weight {name!r} does not fit the model")
        # the decoded array becomes the parameter itself: no copy into fresh memory,
        # whose first touch cost 0.6 s for the ~90 MB of weights
        params[name].data = torch.from_numpy(weight)
    return model
