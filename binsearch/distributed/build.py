"""Making sharded collections: split an existing collection, or build shard-parallel from a corpus.

Both load every shard in bulk mode (``Collection.bulk``: no journal, one
snapshot at the end) and keep one global key space:

* :func:`split` moves each document's codes, row and key to the shard its id
  hashes to (codes are copied, not re-encoded), so the sharded collection
  ranks exactly like the one it came from;
* :func:`build_sharded` gives document ``i`` of the corpus key ``i``, as one
  collection indexing the same corpus in order does, and has every shard
  actor binarize (and, without precomputed embeddings, embed) its own
  documents. With an embeddings ``.npy`` file, each actor memory-maps the file
  and reads its own rows: no embedding crosses the wire.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.distributed.collection import ShardedCollection
from binsearch.distributed.shardmap import route

#: Documents per bulk call to a shard.
CHUNK = 20_000


def split(
    collection_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    shards: int,
    *,
    address: str | None = None,
    progress: bool = False,
    **open_options: Any,
) -> ShardedCollection:
    """Split the collection at ``collection_path`` into a new sharded collection at ``out``.

    The source is opened (and locked) for the duration and left unchanged.
    Every document keeps its key, so searches rank exactly as before. Returns
    the opened :class:`ShardedCollection`; new documents get keys after the
    source's last one.
    """
    from binsearch.collection import Collection

    src = Collection.open(collection_path, mmap=True)
    try:
        model = src.manifest.get("model_path") or src.model_name
        sc = ShardedCollection.create(
            out,
            shards,
            codec=src.codec,
            bits=src.codec.planes,
            model=model,
            dim=src.dim,
            address=address,
            **open_options,
        )
        try:
            _bulk_all(sc, "begin_bulk")
            keys = np.sort(src.store.all_keys())
            bar = tqdm(total=len(keys), desc="splitting", unit="doc", disable=not progress)
            for start in range(0, len(keys), CHUNK):
                chunk = keys[start : start + CHUNK]
                rows = src.store.rows(chunk)
                codes, scales = src.index.get(chunk)
                ids = [rows[int(k)]["id"] for k in chunk]
                docs = [{f: rows[int(k)][f] for f in ("title", "text", "metadata")} for k in chunk]
                owners = route(ids, shards)
                calls = {}
                for s in np.unique(owners):
                    sel = np.flatnonzero(owners == s)
                    calls[int(s)] = (
                        [ids[j] for j in sel],
                        [docs[j] for j in sel],
                        np.ascontiguousarray(codes[sel]),
                        None if scales is None else np.ascontiguousarray(scales[sel]),
                        chunk[sel],
                    )
                sc._call("add_codes", calls, timeout=max(sc.timeout, 600.0))
                bar.update(len(chunk))
            bar.close()
            _bulk_all(sc, "end_bulk")
            sc._reserve_given(np.array([src.store.next_key() - 1], dtype=np.int64))
        except BaseException:
            sc.close()
            raise
    finally:
        src.close(snapshot=False)
    return sc


def build_sharded(
    documents: Sequence[Any],
    out: str | os.PathLike[str],
    shards: int,
    *,
    embeddings: str | os.PathLike[str] | np.ndarray | None = None,
    codec: Any = "residual",
    bits: int = 2,
    model: str | None = "all-MiniLM-L6-v2",
    dim: int | None = None,
    address: str | None = None,
    progress: bool = False,
    **open_options: Any,
) -> ShardedCollection:
    """Build a new sharded collection at ``out`` from ``documents``, shard-parallel.

    Args:
        documents: :class:`binsearch.corpus.Document` objects (``id``, ``title``,
            ``text``) or dicts with those keys; document ``i`` gets key ``i``.
        embeddings: float32 ``(len(documents), dim)`` rows in document order: a
            ``.npy`` path (each shard actor memory-maps it and reads its own
            rows) or an array (each row is sent to its shard once). None: every
            shard embeds its own documents with ``model``.
        codec, bits, model, dim, address: as for :meth:`ShardedCollection.create`.

    Returns the opened :class:`ShardedCollection`.
    """
    ids = [str(_field(d, "id")) for d in documents]
    docs = [{"title": _field(d, "title") or "", "text": _field(d, "text") or ""} for d in documents]
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("document ids must be unique")
    emb_path: str | None = None
    if isinstance(embeddings, str | os.PathLike):
        emb_path = str(Path(embeddings).resolve())
        shape = np.load(emb_path, mmap_mode="r").shape
        if shape[0] != n:
            raise ValueError(f"{embeddings} holds {shape[0]} rows for {n} documents")
        if model is None and dim is None:
            dim = int(shape[1])
    elif embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != n:
            raise ValueError(f"{embeddings.shape} embeddings for {n} documents")
        if model is None and dim is None:
            dim = int(embeddings.shape[1])
    sc = ShardedCollection.create(
        out, shards, codec=codec, bits=bits, model=model, dim=dim, address=address, **open_options
    )
    try:
        _bulk_all(sc, "begin_bulk")
        owners = route(ids, shards)
        bar = tqdm(total=n, desc="indexing", unit="doc", disable=not progress)
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            calls = {}
            for s in np.unique(owners[start:stop]):
                rows = start + np.flatnonzero(owners[start:stop] == s)
                vectors = None
                if isinstance(embeddings, np.ndarray):
                    vectors = embeddings[rows]
                calls[int(s)] = (
                    [ids[j] for j in rows],
                    [docs[j] for j in rows],
                    rows.astype(np.int64),  # the keys: row numbers
                    vectors,
                    emb_path,
                )
            sc._call("add_rows", calls, timeout=max(sc.timeout, 3600.0))
            bar.update(stop - start)
        bar.close()
        _bulk_all(sc, "end_bulk")
        if n:
            sc._reserve_given(np.array([n - 1], dtype=np.int64))
    except BaseException:
        sc.close()
        raise
    return sc


def _field(doc: Any, name: str) -> Any:
    return doc.get(name) if isinstance(doc, dict) else getattr(doc, name)


def _bulk_all(sc: ShardedCollection, method: str) -> list[Any]:
    return sc._call_all(method, [() for _ in range(sc.shards)], timeout=max(sc.timeout, 600.0))
