"""Encoder + codec + index: build an index directory from texts, and search it.

An index directory holds the scan index (``index.BinaryIndex``: manifest,
codes, ids, scales) and ``documents.jsonl``, the document store that turns
result ids back into titles and texts. The manifest's ``meta`` records the
model and codec, so a search encodes queries exactly as documents were.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.codecs import Codec, codec_from_config, make_codec
from binsearch.corpus import Document
from binsearch.encoder import DEFAULT_MODEL, Encoder
from index import BinaryIndex, fixed_plane_weights, read_manifest

DOCUMENTS = "documents.jsonl"


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    title: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def index_embeddings(
    embeddings: np.ndarray,
    codec: Codec,
    ids: np.ndarray | None = None,
    batch_size: int = 4096,
    progress: bool = False,
    meta: dict[str, Any] | None = None,
) -> BinaryIndex:
    """Binarize float32 ``(n, d)`` embeddings with ``codec`` into a new index.

    ``ids`` default to row numbers. Encoding runs in batches (progress bar
    optional) so memory stays bounded by one batch of unpacked signs.
    """
    n = embeddings.shape[0]
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    index = BinaryIndex(codec.m, codec.planes, codec.weights, "cosine", meta=meta)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="binarizing", unit="batch", disable=not progress):
        stop = min(start + batch_size, n)
        codes = codec.encode(embeddings[start:stop])
        index.add(codes.words, ids[start:stop], codes.scales)
    return index


def search_embeddings(
    index: BinaryIndex, codec: Codec, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores, ids)`` for float32 query embeddings ``(nq, d)``."""
    # Learned codecs write queries (never stored) with more planes than documents.
    codes = getattr(codec, "encode_queries", codec.encode)(queries)
    weights = codes.scales
    if weights is None:
        weights = np.broadcast_to(fixed_plane_weights(codes.words.shape[1]), codes.words.shape[:2])
    # "fast": fast-scan SDC where measured faster, also with quantized tables whose
    # best 4k are re-scored exactly (the query is itself a binarized float).
    return index.search(codes.words, k, weights, method="fast")


def build_index(
    docs: Sequence[Document],
    out: str | os.PathLike[str],
    encoder: Encoder,
    codec_name: str = "residual",
    bits: int = 2,
    batch_size: int = 64,
    progress: bool = True,
    embeddings: np.ndarray | None = None,
    codec: Codec | None = None,
) -> BinaryIndex:
    """Encode ``docs``, binarize, and write an index directory at ``out``.

    ``embeddings`` (float32, one row per document) skips the encoder; ``codec``
    (e.g. a trained ``rbe``) replaces ``codec_name`` and ``bits``.
    """
    if not docs:
        raise ValueError("no documents to index")
    if embeddings is None:
        embeddings = encoder.encode([d.content for d in docs], batch_size, progress)
    if embeddings.shape[0] != len(docs):
        raise ValueError(f"{embeddings.shape[0]} embeddings for {len(docs)} documents")
    if codec is None:
        codec = make_codec(codec_name, embeddings.shape[1], bits)
    meta = {"model": encoder.name, "codec": codec.config(), "documents": DOCUMENTS}
    if encoder.name != DEFAULT_MODEL:
        meta["model_path"] = str(encoder.path)
    index = index_embeddings(embeddings, codec, progress=progress, meta=meta)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{DOCUMENTS}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for key, doc in enumerate(docs):
            row = {"key": key, "id": doc.id, "title": doc.title, "text": doc.text}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / DOCUMENTS)
    index.save(out)
    return index


class IndexMismatchError(ValueError):
    """The index was built with another model than the one asked for."""


class Searcher:
    """An index directory opened for text search: the index, its codec, encoder and documents."""

    def __init__(self, index: BinaryIndex, encoder: Encoder, docs: dict[int, dict]) -> None:
        self.index = index
        self.encoder = encoder
        self.codec = codec_from_config(index.meta["codec"])
        self.docs = docs

    @classmethod
    def open(cls, path: str | os.PathLike[str], model: str | None = None) -> Searcher:
        """Open ``path``; ``model`` (name or path) must match the one the index was built with."""
        path = Path(path)
        meta = read_manifest(path).get("meta", {})
        if "codec" not in meta or "model" not in meta:
            raise IndexMismatchError(f"{path}: not built by `binsearch index` (no model/codec)")
        encoder = Encoder(model if model is not None else _stored_model(meta))
        if encoder.name != meta["model"]:
            raise IndexMismatchError(
                f"{path} was built with model {meta['model']!r}, not {encoder.name!r}; "
                "query it with the same model or rebuild it"
            )
        index = BinaryIndex.load(path)
        docs: dict[int, dict] = {}
        with open(path / meta.get("documents", DOCUMENTS), encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                docs[int(row["key"])] = row
        return cls(index, encoder, docs)

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Ranked hits for each query text."""
        vectors = self.encoder.encode(list(queries))
        if vectors.shape[1] != self.codec.dim:
            raise IndexMismatchError(
                f"the model gives {vectors.shape[1]}-d queries, the index holds {self.codec.dim}-d codes"
            )
        scores, keys = search_embeddings(self.index, self.codec, vectors, k)
        return [
            [self._hit(int(key), float(s)) for s, key in zip(row_s, row_k, strict=True)]
            for row_s, row_k in zip(scores, keys, strict=True)
        ]

    def _hit(self, key: int, score: float) -> Hit:
        doc = self.docs[key]
        return Hit(doc["id"], score, doc["title"], doc["text"])


def _stored_model(meta: dict[str, Any]) -> str:
    """The model to reopen an index with when the user names none."""
    if meta["model"] == DEFAULT_MODEL:
        return DEFAULT_MODEL
    path = meta.get("model_path")
    if path and Path(path).is_dir():
        return path
    raise IndexMismatchError(
        f"this index was built with the model {meta['model']!r}, which is no longer at "
        f"{path!r}: pass its directory with --model"
    )
