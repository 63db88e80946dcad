"""Embedding codecs: float vectors in, packed codes (the DESIGN.md format) out.

A codec turns float32 ``(n, d)`` embeddings into :class:`Codes` that
``index.BinaryIndex`` stores and scans. Documents and queries go through the
same codec, so scores are symmetric inner products of code values.

Training-free codecs live here; the learned recurrent binarizer plugs in with
the same interface (``encode``, ``config``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from binsearch.codes.base import Codec, Codes, check_embeddings
from binsearch.codes.quantize import residual_binarize
from index import pack_codes


class SignCodec:
    """One plane: the sign of each dimension. Scored by Hamming distance."""

    name = "sign"
    planes = 1
    scaling = "fixed"
    metric = "cosine"

    def __init__(self, dim: int) -> None:
        self.dim = self.m = int(dim)

    def encode(self, x: np.ndarray) -> Codes:
        x = check_embeddings(x, self.dim)
        return Codes(pack_codes((x >= 0)[:, None, :]), None)

    def encode_queries(self, q: np.ndarray) -> Codes:
        """A query is coded as a document is (symmetric Hamming scoring)."""
        return self.encode(q)

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
    scaling = "per_document"
    metric = "cosine"

    def __init__(self, dim: int, planes: int = 2, refit: bool = False) -> None:
        if planes < 1:
            raise ValueError(f"bits must be at least 1, got {planes}")
        self.dim = self.m = int(dim)
        self.planes = int(planes)
        self.refit = bool(refit)

    def encode(self, x: np.ndarray) -> Codes:
        x = check_embeddings(x, self.dim)
        signs, scales = residual_binarize(x, self.planes, axis=-1, refit=self.refit)
        # (P, n, d) -> (n, P, d) and (P, n, 1) -> (n, P)
        words = pack_codes(np.transpose(signs, (1, 0, 2)))
        return Codes(words, np.ascontiguousarray(scales[:, :, 0].T))

    def encode_queries(self, q: np.ndarray) -> Codes:
        """A query is coded as a document is; its scales become its plane weights."""
        return self.encode(q)

    def config(self) -> dict[str, Any]:
        return {"codec": self.name, "dim": self.dim, "planes": self.planes, "refit": self.refit}


class RbeCodec:
    """The learned recurrent binarizer (:mod:`binsearch.codes.binarizer`) as a codec.

    Documents get the model's ``P`` planes (per-document scales when ``P > 1``);
    queries, which are never stored, get :meth:`encode_queries`: the model's
    query map written as several residual planes, scored asymmetrically.
    :meth:`config` carries the whole model inline, so an index is self-contained.
    """

    name = "rbe"
    metric = "cosine"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.dim, self.m, self.planes = model.dim, model.m, model.planes
        # One plane has the same norm everywhere: its scale would be dead weight.
        self.scaling = "fixed" if self.planes == 1 else "per_document"

    def encode(self, x: np.ndarray) -> Codes:
        signs, scales = self.model.encode_documents(check_embeddings(x, self.dim))
        return Codes(pack_codes(signs), scales if self.scaling == "per_document" else None)

    def encode_queries(self, q: np.ndarray) -> Codes:
        """Query codes ``(nq, query_planes, words)`` with per-query plane weights as ``scales``."""
        signs, weights = self.model.encode_queries(check_embeddings(q, self.model.query_dim))
        return Codes(pack_codes(signs), weights)

    def config(self) -> dict[str, Any]:
        return {
            "codec": self.name,
            "dim": self.dim,
            "planes": self.planes,
            "binarizer": self.model.to_json(),
        }


CODECS = ("sign", "residual")
LEARNED_CODECS = (
    "rbe",
    "grid",
    "varwidth",
)  # need a trained model (or training data): not in default sweeps


def make_codec(name: str, dim: int, bits: int = 1, **options: Any) -> Codec:
    """A codec by name: ``sign`` (1 bit per dimension) or ``residual`` (``bits`` planes)."""
    if name == "sign":
        if bits != 1:
            raise ValueError(f"the sign codec has exactly 1 bit per dimension, not {bits}")
        return SignCodec(dim)
    if name == "residual":
        return ResidualCodec(dim, bits, **options)
    if name == "rbe":
        return _make_rbe(dim, bits, **options)
    if name == "grid":
        return _make_grid(dim, bits, **options)
    if name == "varwidth":
        return _make_varwidth(dim, bits, **options)
    raise ValueError(f"unknown codec {name!r}; choose from {', '.join(CODECS + LEARNED_CODECS)}")


def _make_rbe(
    dim: int,
    bits: int,
    model: Any = None,
    binarizer: dict[str, Any] | None = None,
    train_on: np.ndarray | None = None,
    **train_options: Any,
) -> RbeCodec:
    """``rbe`` from a model (object or saved directory), its inline JSON, or training data."""
    from binsearch.codes.binarizer import BinarizerError, RecurrentBinarizer

    if binarizer is not None:
        model = RecurrentBinarizer.from_json(binarizer)
    elif isinstance(model, str | os.PathLike):
        model = RecurrentBinarizer.load(model)
    elif model is None and train_on is not None:
        from binsearch.codes.train_binarizer import train_binarizer

        model, _ = train_binarizer(train_on, planes=bits, **train_options)
    elif model is None:
        raise BinarizerError(
            "the rbe codec needs a trained binarizer: pass one (--binarizer MODEL) "
            "or embeddings to train it on"
        )
    if model.dim != dim or model.planes != bits:
        raise BinarizerError(
            f"the binarizer takes {model.dim}-d embeddings to {model.planes} planes, "
            f"asked for {dim}-d and {bits} planes"
        )
    return RbeCodec(model)


def _make_grid(
    dim: int,
    bits: int,
    rotation: Any = None,
    query_map: Any = None,
    train_on: np.ndarray | None = None,
    query_planes: int = 8,
    m: int | None = None,
    center: Any = None,
    **fit_options: Any,
) -> Codec:
    """``grid`` (:class:`binsearch.codes.grid.GridCodec`) from stored matrices or training data."""
    from binsearch.codes.grid import GridCodec
    from binsearch.codes.grid_fit import fit_grid

    if isinstance(rotation, str):
        codec = GridCodec.from_config_parts(dim, bits, rotation, query_map, query_planes, m, center)
    elif rotation is not None:
        codec = GridCodec(rotation, bits, query_map, query_planes, center)
    elif train_on is not None:
        codec = fit_grid(check_embeddings(train_on, dim), bits, **fit_options)
    else:
        raise ValueError("the grid codec needs embeddings to fit its rotation on")
    if codec.dim != dim:
        raise ValueError(f"the grid codec takes {codec.dim}-d embeddings, asked for {dim}-d")
    return codec


def _make_varwidth(
    dim: int,
    bits: int,
    train_on: np.ndarray | None = None,
    budget: int | None = None,
    direction_bits: list[int] | None = None,
    **parts: Any,
) -> Codec:
    """``varwidth`` (:mod:`binsearch.codes.varwidth`) from its stored fields or training data.

    Fitting, the budget is ``bits x dim`` stored bits per vector unless ``budget``
    says otherwise; ``direction_bits`` and ``parts`` are :meth:`VarWidthCodec.config`'s fields.
    """
    from binsearch.codes.varwidth import VarWidthCodec

    if direction_bits is not None:
        codec = VarWidthCodec.from_config_parts(dim, direction_bits, **parts)
    elif train_on is not None:
        total = int(budget) if budget is not None else int(bits) * dim
        codec = VarWidthCodec.fit(check_embeddings(train_on, dim), total, **parts)
    else:
        raise ValueError("the varwidth codec needs embeddings to fit its allocation on")
    if codec.dim != dim:
        raise ValueError(f"the varwidth codec takes {codec.dim}-d embeddings, asked for {dim}-d")
    return codec


def codec_from_config(config: dict[str, Any]) -> Codec:
    """Rebuild a codec from its :meth:`config` (as stored in an index manifest)."""
    config = dict(config)
    if config.get("codec") == "varwidth-compat":
        from binsearch.codes.varwidth_compat import CompatibleQueries

        return CompatibleQueries.from_config(config)
    name = config.pop("codec", None)
    dim = config.pop("dim")
    planes = config.pop("planes", 1)
    return make_codec(name, dim, planes, **config)
