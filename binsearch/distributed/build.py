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
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sized
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.collection.collection import CollectionError
from binsearch.collection.corpus import CorpusError
from binsearch.distributed.collection import ShardedCollection
from binsearch.distributed.shard import ShardServer
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
    from binsearch.collection.collection import Collection

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
            _bulk_all(sc, ShardServer.begin_bulk)
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
                sc._call(ShardServer.add_codes, calls, timeout=max(sc.timeout, 600.0))
                bar.update(len(chunk))
            bar.close()
            _bulk_all(sc, ShardServer.end_bulk)
            sc._reserve_given(np.array([src.store.next_key() - 1], dtype=np.int64))
        except BaseException:
            sc.close()
            raise
    finally:
        src.close(snapshot=False)
    return sc


def build_sharded(
    documents: Iterable[Any],
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
        documents: :class:`binsearch.collection.corpus.Document` objects (``id``, ``title``,
            ``text``) or dicts with those keys, streamed; document ``i`` gets key ``i``.
        embeddings: float32 rows in document order: a ``.npy`` path (each shard
            actor memory-maps it and reads its own rows) or an array (each row
            is sent to its shard once). None: every shard embeds its own
            documents with ``model``.
        codec, bits, model, dim, address: as for :meth:`ShardedCollection.create`.

    Returns the opened :class:`ShardedCollection`.
    """
    emb_path: str | None = None
    if isinstance(embeddings, str | os.PathLike):
        emb_path = str(Path(embeddings).resolve())
        shape = np.load(emb_path, mmap_mode="r").shape
        if model is None and dim is None:
            dim = int(shape[1])
    elif embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            raise CollectionError(f"embeddings must be 2-d, got shape {embeddings.shape}")
        if model is None and dim is None:
            dim = int(embeddings.shape[1])
    total = len(documents) if isinstance(documents, Sized) else None

    def batches() -> Iterator[tuple[list[str], list[dict[str, Any]], np.ndarray, Any, Any]]:
        key = 0
        it = iter(documents)
        while batch := list(islice(it, CHUNK)):
            ids = [str(_field(d, "id")) for d in batch]
            docs = [
                {"title": _field(d, "title") or "", "text": _field(d, "text") or ""} for d in batch
            ]
            rows = np.arange(key, key + len(batch), dtype=np.int64)
            vectors = embeddings[rows] if isinstance(embeddings, np.ndarray) else None
            yield ids, docs, rows, vectors, rows
            key += len(batch)

    sc = ShardedCollection.create(
        out, shards, codec=codec, bits=bits, model=model, dim=dim, address=address, **open_options
    )
    try:
        _load(sc, batches(), emb_path, total, progress)
    except BaseException:
        sc.close(snapshot=False)
        shutil.rmtree(out, ignore_errors=True)  # ours, half-built: never left to be misread
        raise
    return sc


def index_corpus_sharded(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    shards: int,
    *,
    model: str | None = "all-MiniLM-L6-v2",
    codec: str = "residual",
    bits: int = 2,
    binarizer: Any = None,
    embeddings: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    skip_empty: bool = False,
    progress: bool = True,
    address: str | None = None,
    **open_options: Any,
) -> ShardedCollection:
    """``binsearch index CORPUS --out DIR --shards N``: :func:`binsearch.collection.ingest.index_corpus`, sharded.

    The same arguments and the same keys (corpus order) as the one-collection
    build, so both rank alike. The corpus is streamed; with ``embeddings`` (a
    folder of ``corpus.npy`` + ``ids.json``) each shard actor reads its own rows
    from the memory-mapped ``corpus.npy``; without, each shard embeds its own
    documents.
    """
    from binsearch.collection.corpus import iter_corpus
    from binsearch.collection.ingest import _codec, build_inputs

    if shards < 1:
        raise CollectionError(f"--shards must be at least 1, got {shards}")
    out, empty, pre, encoder = build_inputs(out, model, embeddings, skip_empty)
    the_codec = _codec(codec, bits, binarizer, corpus, empty, pre, encoder, batch_size)
    emb_path = str((pre.folder / "corpus.npy").resolve()) if pre is not None else None

    def batches() -> Iterator[tuple[list[str], list[dict[str, Any]], np.ndarray, Any, Any]]:
        key = 0
        it = iter_corpus(corpus, empty)
        while batch := list(islice(it, CHUNK)):
            ids = [d.id for d in batch]
            if len(set(ids)) != len(ids):
                dup = next(i for n, i in enumerate(ids) if i in ids[:n])
                raise CorpusError(f"{corpus}: duplicate document id {dup!r}")
            docs = [{"title": d.title, "text": d.text, "metadata": d.metadata} for d in batch]
            rows = None
            if pre is not None:
                try:
                    rows = np.array([pre.row[i] for i in ids], dtype=np.int64)
                except KeyError as exc:
                    raise CorpusError(
                        f"document {exc.args[0]!r} of the corpus has no row in "
                        f"{pre.folder}/ids.json; the embeddings were made from another corpus"
                    ) from None
            yield ids, docs, np.arange(key, key + len(batch), dtype=np.int64), None, rows
            key += len(batch)

    dim = None if pre is None else pre.dim
    sc = ShardedCollection.create(
        out,
        shards,
        codec=the_codec,
        bits=bits,
        model=model,
        dim=dim,
        address=address,
        **open_options,
    )
    try:
        _load(sc, batches(), emb_path, None, progress)
    except sqlite3.IntegrityError:
        sc.close(snapshot=False)
        shutil.rmtree(out, ignore_errors=True)
        raise CorpusError(f"{corpus}: a document id appears twice") from None
    except BaseException:
        sc.close(snapshot=False)
        shutil.rmtree(out, ignore_errors=True)
        raise
    return sc


def _load(
    sc: ShardedCollection,
    batches: Iterator[tuple[list[str], list[dict[str, Any]], np.ndarray, Any, Any]],
    emb_path: str | None,
    total: int | None,
    progress: bool,
) -> None:
    """Bulk-load ``(ids, documents, keys, vectors | None, npy rows | None)`` batches into new shards."""
    _bulk_all(sc, ShardServer.begin_bulk)
    bar = tqdm(total=total, desc="indexing", unit="doc", disable=None if progress else True)
    top = -1
    for ids, docs, keys, vectors, rows in batches:
        owners = route(ids, sc.shards)
        calls = {}
        for s in np.unique(owners):
            sel = np.flatnonzero(owners == s)
            calls[int(s)] = (
                [ids[j] for j in sel],
                [docs[j] for j in sel],
                keys[sel],
                None if vectors is None else vectors[sel],
                emb_path,
                None if rows is None else rows[sel],
            )
        sc._call(ShardServer.add_rows, calls, timeout=max(sc.timeout, 3600.0))
        top = max(top, int(keys.max()))
        bar.update(len(ids))
    bar.close()
    _bulk_all(sc, ShardServer.end_bulk)
    if top >= 0:
        sc._reserve_given(np.array([top], dtype=np.int64))


def _field(doc: Any, name: str) -> Any:
    return doc.get(name) if isinstance(doc, dict) else getattr(doc, name)


def _bulk_all(sc: ShardedCollection, method: Callable[..., Any]) -> list[Any]:
    return sc._call_all(method, [() for _ in range(sc.shards)], timeout=max(sc.timeout, 600.0))
