"""Build a collection from a corpus: ``binsearch index``'s body.

The corpus is streamed in batches (constant memory, so a corpus larger than
RAM can be indexed): each batch is embedded (or its rows looked up in
precomputed embeddings), binarized, and bulk-loaded into a new
:class:`~binsearch.collection.collection.Collection` with keys in corpus order.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack, closing
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.codes.codecs import Codec, make_codec
from binsearch.collection.collection import DEFAULT_MODEL, Collection, CollectionError
from binsearch.collection.corpus import CorpusError, Document, corpus_file, iter_corpus
from binsearch.collection.stages import staged

#: Documents per bulk-load batch when the embeddings are precomputed.
LOAD_BATCH = 20_000
#: Rows an rbe binarizer trains on when it is trained during indexing.
TRAIN_ROWS = 100_000


class PrecomputedEmbeddings:
    """``corpus.npy`` + ``ids.json`` (the layout ``eval --embeddings`` reads), rows by id."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        folder = Path(folder)
        for name in ("corpus.npy", "ids.json"):
            if not (folder / name).is_file():
                raise CorpusError(f"{folder}: missing {name} (expected corpus.npy and ids.json)")
        try:
            meta = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
            ids = [str(i) for i in meta["corpus_ids"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorpusError(f"{folder}/ids.json: unreadable ({exc})") from None
        self.vectors = np.load(folder / "corpus.npy", mmap_mode="r")
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(ids):
            raise CorpusError(
                f"{folder}: corpus.npy has shape {self.vectors.shape} but ids.json lists "
                f"{len(ids)} ids"
            )
        self.row = {doc_id: i for i, doc_id in enumerate(ids)}
        if len(self.row) != len(ids):
            raise CorpusError(f"{folder}/ids.json: duplicate corpus ids")
        self.model: str | None = meta.get("model")
        self.dim = int(self.vectors.shape[1])
        self.folder = folder

    def rows_of(self, docs: list[Document]) -> np.ndarray:
        """float32 ``(len(docs), dim)``: each document's row, found by id."""
        try:
            rows = [self.row[d.id] for d in docs]
        except KeyError as exc:
            raise CorpusError(
                f"document {exc.args[0]!r} of the corpus has no row in {self.folder}/ids.json; "
                "the embeddings were made from another corpus"
            ) from None
        return np.asarray(self.vectors[np.array(rows)], dtype=np.float32)


def _batches(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    while batch := list(islice(docs, size)):
        yield batch


def index_corpus(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str | None = DEFAULT_MODEL,
    codec: str = "residual",
    bits: int = 2,
    binarizer: Any = None,
    embeddings: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    skip_empty: bool = False,
    progress: bool = True,
) -> Collection:
    """Index ``corpus`` into a new collection at ``out``; returns it, open.

    Args:
        model: the model that embeds documents (and later, queries).
        codec, bits: a named codec; ``binarizer`` (a trained ``rbe`` model) replaces them.
        embeddings: a folder of precomputed ``corpus.npy`` + ``ids.json``; the
            encoder is then not run (its name must match ``model``). With
            ``model=None`` the collection holds these vectors only, of any width:
            queries are vectors (or keyword searches), never texts to embed.
        batch_size: encoder batch size.
    """
    out, empty, pre, encoder = build_inputs(out, model, embeddings, skip_empty)
    the_codec = _codec(codec, bits, binarizer, corpus, empty, pre, encoder, batch_size)
    dim = None if pre is None else pre.dim
    collection = Collection.create(
        out, the_codec, bits, model, dim=dim, encoder=encoder, loading=True
    )
    try:
        _load(collection, corpus, empty, pre, encoder, batch_size, progress)
    except BaseException:
        collection.close(snapshot=False)
        shutil.rmtree(out, ignore_errors=True)  # ours, half-built: never left to be misread
        raise
    return collection


def build_inputs(
    out: str | os.PathLike[str], model: str | None, embeddings: Any, skip_empty: bool
) -> tuple[Path, str, PrecomputedEmbeddings | None, Any]:
    """What a build (one collection or shards) starts from, checked before any reading.

    Returns ``(out, empty, precomputed embeddings or None, encoder or None)``: ``out``
    must be new or empty; ``empty`` is the corpus readers' policy; the model resolves
    now (a bad path fails first) and must be the one the embeddings were made by.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CollectionError(f"{out} exists and is not empty; choose a new directory")
    empty = "skip" if skip_empty else "error"
    pre = PrecomputedEmbeddings(embeddings) if embeddings is not None else None
    encoder = None
    if model is None:
        if pre is None:
            raise CollectionError(
                "a collection without a model needs its vectors: pass --embeddings DIR"
            )
    else:
        from binsearch.encoder.model import Encoder

        encoder = Encoder(model)  # resolves the model now: a bad path fails before any reading
        if pre is not None and pre.model is not None and pre.model.split("/")[-1] != encoder.name:
            raise CollectionError(
                f"the embeddings in {embeddings} were made by {pre.model!r}, not "
                f"{encoder.name!r}; pass --model with that model so queries are embedded "
                "alike, or --model none for a collection of these vectors only"
            )
    return out, empty, pre, encoder


def _codec(
    name: str,
    bits: int,
    binarizer: Any,
    corpus: str | os.PathLike[str],
    empty: str,
    pre: PrecomputedEmbeddings | None,
    encoder: Any,
    batch_size: int,
) -> Codec:
    dim = pre.dim if pre is not None else None
    if name not in ("rbe", "grid", "varwidth"):
        if dim is None:
            from binsearch.collection.collection import KNOWN_DIMS

            dim = KNOWN_DIMS.get(encoder.name) or encoder.dim
        return make_codec(name, dim, 1 if name == "sign" else bits)
    if binarizer is not None:
        return make_codec("rbe", binarizer.dim, bits, model=binarizer)
    # Fit the learned codec on (up to TRAIN_ROWS of) the corpus's own embeddings.
    sample = list(islice(iter_corpus(corpus, empty), TRAIN_ROWS))
    if pre is not None:
        x = pre.rows_of(sample)
    else:
        x = encoder.encode([d.content for d in sample], batch_size, True)
    return make_codec(name, x.shape[1], bits, train_on=x)


def _load(
    collection: Collection,
    corpus: str | os.PathLike[str],
    empty: str,
    pre: PrecomputedEmbeddings | None,
    encoder: Any,
    batch_size: int,
    progress: bool,
) -> None:
    """Stream the corpus into ``collection``, three stages overlapping (see
    :mod:`binsearch.collection.stages`): a thread reads (and tokenises) chunk
    i+1 while another encodes chunk i (or looks up its precomputed rows) and
    this thread codes and writes chunk i-1, inside the bulk load as before.
    On the CPU the encoding runs one batch per core side by side, torch on one
    thread each (:class:`binsearch.encoder.batches.Workers`)."""
    size = LOAD_BATCH if pre is not None else max(batch_size * 16, 1024)
    # No bar where stderr is not a terminal (logs, pipes): errors stay one line.
    bar = tqdm(
        total=estimate_documents(corpus) if progress else None,
        desc="indexing",
        unit="doc",
        disable=None if progress else True,
        smoothing=0.1,
    )

    def read(batch: list[Document]) -> tuple[list[Document], Any]:
        if len({d.id for d in batch}) != len(batch):  # before any encoding
            raise CorpusError(
                f"{corpus}: duplicate document id {_first_duplicate(collection, batch)!r}"
            )
        if pre is not None:
            return batch, pre.rows_of(batch)
        return batch, encoder.tokenize_bulk([d.content for d in batch], batch_size)

    def encode(item: tuple[list[Document], Any]) -> tuple[list[Document], np.ndarray]:
        batch, payload = item
        if pre is not None:
            bar.update(len(batch))
            return batch, payload
        return batch, encoder.encode_tokenized(payload, on_batch=bar.update, workers=workers)

    key = 0
    workers: Any = None
    with closing(bar), collection.bulk(), ExitStack() as stack:
        if encoder is not None and pre is None and encoder.device == "cpu":
            from binsearch.encoder.batches import Workers

            # the model loads (and its precision is chosen) on the first chunk, after that
            # chunk's checks: a bad corpus fails before the model is loaded
            workers = stack.enter_context(Workers())
        chunks = staged(_batches(iter_corpus(corpus, empty), size), [read, encode], name="index")
        with closing(chunks):
            for batch, vectors in chunks:
                keys = np.arange(key, key + len(batch), dtype=np.int64)
                documents = [
                    {"title": d.title, "text": d.text, "metadata": d.metadata} for d in batch
                ]
                try:
                    collection.add([d.id for d in batch], vectors, documents=documents, keys=keys)
                except sqlite3.IntegrityError:
                    dup = _first_duplicate(collection, batch)
                    raise CorpusError(f"{corpus}: duplicate document id {dup!r}") from None
                key += len(batch)
        bar.total = key  # the estimate made exact
        bar.refresh()


def estimate_documents(corpus: str | os.PathLike[str]) -> int | None:
    """About how many documents ``corpus`` holds, for the progress bar's ETA: its
    lines (less a header for .csv/.tsv), counted in one fast pass. None when
    unreadable (the reader then says why)."""
    try:
        path = corpus_file(corpus)
        lines, last = 0, b"\n"
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        lines += last != b"\n"  # a last line without its newline
        lines -= path.suffix.lower() in (".csv", ".tsv")  # the header
        return lines if lines > 0 else None
    except (OSError, CorpusError):
        return None


def _first_duplicate(collection: Collection, batch: list[Document]) -> str:
    seen: set[str] = set()
    for doc in batch:
        if doc.id in seen:
            return doc.id
        seen.add(doc.id)
    stored = collection.store.keys_of([d.id for d in batch])
    return next(iter(stored), "?")
