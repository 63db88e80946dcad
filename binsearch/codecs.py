"""Embedding codecs: float vectors in, packed codes (the DESIGN.md format) out.

A codec turns float32 ``(n, d)`` embeddings into :class:`Codes` that
``index.BinaryIndex`` stores and scans. Documents and queries go through the
same codec, so scores are symmetric inner products of code values.

Training-free codecs live here; the learned recurrent binarizer plugs in with
the same interface (``encode``, ``config``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from binsearch.quantize import residual_binarize
from index import pack_codes


@dataclass(frozen=True)
class Codes:
    """Packed codes and, for per-document weights, their plane scales.

    ``words``: uint64 ``(n, P, ceil(m/64))``; ``scales``: float32 ``(n, P)`` or None.
    """

    words: np.ndarray
    scales: np.ndarray | None


class Codec(Protocol):
    name: str
    dim: int  # input embedding width d
    m: int  # bits per plane
    planes: int
    weights: str  # "fixed" or "per_document"

    def encode(self, x: np.ndarray) -> Codes: ...

    def config(self) -> dict[str, Any]: ...


def _check_embeddings(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected embeddings of shape (n, {dim}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return x


class SignCodec:
    """One plane: the sign of each dimension. Scored by Hamming distance."""

    name = "sign"
    planes = 1
    weights = "fixed"

    def __init__(self, dim: int) -> None:
        self.dim = self.m = int(dim)

    def encode(self, x: np.ndarray) -> Codes:
        x = _check_embeddings(x, self.dim)
        return Codes(pack_codes((x >= 0)[:, None, :]), None)

    def config(self) -> dict[str, Any]:
        return {"codec": self.name, "dim": self.dim, "planes": self.planes}


class ResidualCodec:
    """``P`` planes of residual signs with per-document scales ``alpha_{d,p}``.

    Args:
        dim: embedding width.
        planes: bits per dimension.
        refit: least-squares refit of the scales given the signs.
    """

    name = "residual"
    weights = "per_document"

    def __init__(self, dim: int, planes: int = 2, refit: bool = False) -> None:
        if planes < 1:
            raise ValueError(f"bits must be at least 1, got {planes}")
        self.dim = self.m = int(dim)
        self.planes = int(planes)
        self.refit = bool(refit)

    def encode(self, x: np.ndarray) -> Codes:
        x = _check_embeddings(x, self.dim)
        signs, scales = residual_binarize(x, self.planes, axis=-1, refit=self.refit)
        # (P, n, d) -> (n, P, d) and (P, n, 1) -> (n, P)
        words = pack_codes(np.transpose(signs, (1, 0, 2)))
        return Codes(words, np.ascontiguousarray(scales[:, :, 0].T))

    def config(self) -> dict[str, Any]:
        return {"codec": self.name, "dim": self.dim, "planes": self.planes, "refit": self.refit}


CODECS = ("sign", "residual")


def make_codec(name: str, dim: int, bits: int = 1, **options: Any) -> Codec:
    """A codec by name: ``sign`` (1 bit per dimension) or ``residual`` (``bits`` planes)."""
    if name == "sign":
        if bits != 1:
            raise ValueError(f"the sign codec has exactly 1 bit per dimension, not {bits}")
        return SignCodec(dim)
    if name == "residual":
        return ResidualCodec(dim, bits, **options)
    raise ValueError(f"unknown codec {name!r}; choose from {', '.join(CODECS)}")


def codec_from_config(config: dict[str, Any]) -> Codec:
    """Rebuild a codec from its :meth:`config` (as stored in an index manifest)."""
    config = dict(config)
    name = config.pop("codec", None)
    dim = config.pop("dim")
    planes = config.pop("planes", 1)
    return make_codec(name, dim, planes, **config)
