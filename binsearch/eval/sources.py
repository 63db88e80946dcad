"""Float embeddings read a block of rows at a time: what ``binsearch eval`` streams.

An :class:`EmbeddingSource` is either an array already in memory
(:class:`ArraySource`) or a ``.npy`` file read by explicit seeks
(:class:`NpyFile`), never memory-mapped: a 1M x 384 float32 corpus (1.5 GB)
is scanned with only one block of rows resident, so the process's RSS stays
at one block plus what the caller keeps. Every block comes back as float32
rows of unit length (the cosine the float truth and the codecs rank by).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from binsearch.collection.corpus import CorpusError

BLOCK = 16384  # rows per block: 24 MiB of 384-d float32


class EmbeddingSource(Protocol):
    n: int
    dim: int

    def read(self, start: int, stop: int) -> np.ndarray: ...

    def take(self, rows: np.ndarray) -> np.ndarray: ...


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


class ArraySource:
    """An in-memory ``(n, d)`` array as a source."""

    def __init__(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] < 1:
            raise CorpusError(f"expected embeddings as an (n, d) array, got shape {x.shape}")
        self.x, self.n, self.dim = x, int(x.shape[0]), int(x.shape[1])

    def read(self, start: int, stop: int) -> np.ndarray:
        return unit_rows(self.x[start:stop])

    def take(self, rows: np.ndarray) -> np.ndarray:
        return unit_rows(self.x[np.asarray(rows, dtype=np.int64)])


class NpyFile:
    """Rows of a C-ordered 2-d ``.npy`` (float16/32/64) read by seeks, not mapped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                self.offset = f.tell()
        except (ValueError, OSError) as exc:
            raise CorpusError(f"{self.path}: not a .npy array file ({exc})") from exc
        if len(shape) != 2 or fortran or dtype.kind != "f" or shape[0] < 1:
            raise CorpusError(
                f"{self.path}: expected a C-ordered float (n, d) array, got {dtype} {shape}"
            )
        self.n, self.dim, self.dtype = int(shape[0]), int(shape[1]), dtype
        self.row_bytes = self.dim * dtype.itemsize

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.n)
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.row_bytes)
            x = np.fromfile(f, self.dtype, (stop - start) * self.dim)
        return unit_rows(x.reshape(stop - start, self.dim))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows by number (any order), one seek each."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        with open(self.path, "rb") as f:
            for i, row in enumerate(rows.tolist()):
                f.seek(self.offset + row * self.row_bytes)
                out[i] = np.fromfile(f, self.dtype, self.dim)
        return unit_rows(out)


def open_embeddings(path: str | os.PathLike[str]) -> tuple[EmbeddingSource, list[str] | None]:
    """A corpus's precomputed embeddings and their document ids (None when not stored).

    ``path`` is a ``.npy`` file or a folder holding ``corpus.npy`` and, optionally,
    ``ids.json`` (``corpus_ids``, as the shared data sets and ``binsearch index
    --embeddings`` have them, or ``ids``).
    """
    path = Path(path)
    folder = path if path.is_dir() else None
    npy = path / "corpus.npy" if folder else path
    if not npy.is_file():
        where = f"{path}: missing corpus.npy" if folder else f"{path}: no such file"
        raise CorpusError(f"{where} (--embeddings takes a .npy file or a folder with corpus.npy)")
    if npy.suffix != ".npy":
        raise CorpusError(f"{npy}: --embeddings takes a .npy file or a folder with corpus.npy")
    source = NpyFile(npy)
    ids = None
    if folder and (folder / "ids.json").is_file():
        meta = json.loads((folder / "ids.json").read_text())
        raw = meta.get("corpus_ids", meta.get("ids")) if isinstance(meta, dict) else None
        if raw is not None:
            ids = [str(i) for i in raw]
            if len(ids) != source.n:
                raise CorpusError(
                    f"{folder}/ids.json lists {len(ids):,} ids for {source.n:,} rows of corpus.npy"
                )
    return source, ids


def blocks(
    source: EmbeddingSource, excluded: np.ndarray | None = None, block: int = BLOCK
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(row numbers int64, unit float32 rows)`` over the source, minus ``excluded`` rows."""
    excluded = np.empty(0, np.int64) if excluded is None else np.asarray(excluded, np.int64)
    for start in range(0, source.n, block):
        stop = min(start + block, source.n)
        rows = np.arange(start, stop, dtype=np.int64)
        x = source.read(start, stop)
        if len(excluded):
            keep = ~np.isin(rows, excluded, assume_unique=True)
            rows, x = rows[keep], x[keep]
        if len(rows):
            yield rows, x


def block_count(source: EmbeddingSource, block: int = BLOCK) -> int:
    """How many blocks :func:`blocks` yields at most (for progress bars)."""
    return -(-source.n // block)
