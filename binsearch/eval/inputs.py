"""What ``binsearch eval`` is given, checked and turned into a :class:`Workload`.

The corpus is anything ``binsearch index`` accepts (a BEIR folder, ``.jsonl``,
``.csv``/``.tsv`` with a ``text`` column, ``.txt``) or precomputed embeddings
(``--embeddings``: a ``.npy`` or a folder with ``corpus.npy``). Queries are, in
order of precedence: ``--queries FILE`` (texts in any corpus layout, or a
``.npy`` of query embeddings), a BEIR folder's judged test queries, or
documents held out of the corpus. A file of the wrong kind is named as such in
one line, with what the option takes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from binsearch.collection.corpus import CorpusError, iter_corpus, read_qrels, read_queries
from binsearch.eval.holdout import Workload, holdout_count, holdout_workload
from binsearch.eval.sources import ArraySource, EmbeddingSource, NpyFile, open_embeddings, unit_rows

CORPUS_FORMATS = "a BEIR folder (corpus.jsonl), .jsonl, .csv/.tsv with a 'text' column, or .txt"
TEXT_SUFFIXES = (".jsonl", ".csv", ".tsv", ".txt")
ENCODE_CHUNK = 4096
QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass
class Inputs:
    """The workload plus what the report and the ``binsearch index`` line need."""

    work: Workload
    documents: int  # the whole corpus, held-out rows included
    corpus: str | None
    embeddings: str | None
    model: str | None
    skip_empty: bool = False  # the corpus has empty documents: the index line needs --skip-empty
    setup: dict[str, Any] = field(default_factory=dict)


def check_corpus_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a corpus; else a one-line :class:`CorpusError` saying what it looks like."""
    p = Path(path)
    if p.is_dir():
        if (p / "corpus.jsonl").is_file():
            return p
        if (p / "corpus.npy").is_file():
            raise CorpusError(f"{p} holds embeddings (corpus.npy): pass it as --embeddings {p}")
        raise CorpusError(f"{p} is a folder without corpus.jsonl; eval takes {CORPUS_FORMATS}")
    if not p.exists():
        raise CorpusError(f"{p}: no such file or folder")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        raise CorpusError(f"{p} holds embeddings: pass it as --embeddings {p}")
    if suffix not in TEXT_SUFFIXES:
        raise CorpusError(f"{p} is not a corpus; eval takes {CORPUS_FORMATS}")
    if suffix == ".tsv" and _looks_like_qrels(p):
        raise CorpusError(
            f"{p} holds relevance judgments (query-id, corpus-id, score), not documents: "
            f"pass it as --qrels; the corpus is {CORPUS_FORMATS}"
        )
    return p


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror})") from exc


def _looks_like_qrels(path: Path) -> bool:
    head = [c.strip().lower() for c in _first_line(path).rstrip("\n").split("\t")]
    return tuple(head) == QRELS_HEADER or (len(head) == 3 and head[2].lstrip("-").isdigit())


def check_qrels_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it may be a judgments TSV; a corpus or queries file is refused by name."""
    p = Path(path)
    if p.is_dir():
        p = p / "qrels" / "test.tsv"
    if not p.is_file():
        raise CorpusError(
            f"{p}: no such file (--qrels takes query-id<TAB>corpus-id<TAB>score lines)"
        )
    line = _first_line(p).strip()
    if p.suffix.lower() in (".jsonl", ".json") or line.startswith("{"):
        raise CorpusError(
            f"{p} holds JSON documents or queries, not judgments: --qrels takes a TSV of "
            "query-id<TAB>corpus-id<TAB>score lines (a corpus is the first argument, "
            "queries go to --queries)"
        )
    return p


def read_query_file(path: str | os.PathLike[str]) -> tuple[list[str], list[str] | np.ndarray]:
    """``(ids, texts)`` of a queries file, or ``(ids, embeddings)`` of a ``.npy``."""
    p = Path(path)
    if not p.is_file():
        raise CorpusError(f"{p}: no such file (--queries takes .jsonl, .csv/.tsv, .txt or .npy)")
    if p.suffix.lower() == ".npy":
        x = np.load(p)
        if x.ndim != 2:
            raise CorpusError(f"{p}: expected query embeddings as an (n, d) array, got {x.shape}")
        return [f"row:{i}" for i in range(len(x))], unit_rows(x)
    if p.suffix.lower() == ".tsv" and _looks_like_qrels(p):
        raise CorpusError(f"{p} holds relevance judgments, not queries: pass it as --qrels")
    if p.suffix.lower() not in TEXT_SUFFIXES:
        raise CorpusError(
            f"{p} is not a queries file; --queries takes .jsonl, .csv/.tsv, .txt or .npy"
        )
    queries = list(iter_corpus(p, empty="skip"))
    return [q.id for q in queries], [q.content for q in queries]


def count_documents(corpus: Path) -> int:
    """Documents with text (the ones evaluation encodes), read once, streamed."""
    return sum(1 for _ in iter_corpus(corpus, empty="skip"))


def encode_corpus(
    corpus: Path,
    encoder: Any,
    out: Path,
    batch_size: int = 64,
    progress: bool = True,
    total: int | None = None,
) -> tuple[NpyFile, list[str]]:
    """Encode a corpus into ``out/corpus.npy`` + ``ids.json``, a chunk at a time.

    Before the bulk of the work, says how many documents and how long at the
    rate measured on the first chunk. Empty documents are left out.
    """
    from tqdm.auto import tqdm

    total = count_documents(corpus) if total is None else total
    encoder.encode(["the model loads before the rate is measured"])
    out.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    chunk: list[str] = []
    bar = tqdm(total=total, desc="encoding", unit="doc", disable=not progress)
    with open(out / "corpus.npy", "wb") as f, bar:
        started = time.perf_counter()

        def flush() -> None:
            x = encoder.encode(chunk, batch_size)
            if f.tell() == 0:
                rate = len(chunk) / max(time.perf_counter() - started, 1e-9)
                print(
                    f"encoding {total:,} documents with {encoder.name}: about "
                    f"{_duration(total / rate)} at {rate:,.0f} documents/s "
                    "(pass --embeddings to skip this next time)",
                    file=sys.stderr,
                )
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f4", "fortran_order": False, "shape": (total, x.shape[1])}
                )
            f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
            bar.update(len(chunk))
            chunk.clear()

        for doc in iter_corpus(corpus, empty="skip"):
            ids.append(doc.id)
            chunk.append(doc.content)
            if len(chunk) == (256 if not f.tell() else ENCODE_CHUNK):
                flush()
        if chunk:
            flush()
    if len(set(ids)) != len(ids):
        raise CorpusError(f"{corpus}: duplicate document ids")
    (out / "ids.json").write_text(json.dumps({"corpus_ids": ids, "model": encoder.name}))
    return NpyFile(out / "corpus.npy"), ids


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _has_empty(corpus: Path) -> bool:
    return any(not d.content for d in iter_corpus(corpus, empty="keep"))


def _corpus_ids(corpus: Path) -> list[str]:
    return [d.id for d in iter_corpus(corpus, empty="skip")]


def resolve(
    corpus: str | None,
    embeddings: str | None,
    queries: str | None,
    qrels: str | None,
    holdout: int | None,
    seed: int,
    model: str,
    batch_size: int,
    workdir: Path,
    progress: bool = True,
    holdout_query: str = "auto",
) -> Inputs:
    """Check the arguments, read or encode the embeddings, and choose the queries.

    ``holdout_query`` (held-out documents only): ``opening`` queries with each
    held-out document's first words, ``title`` with its title
    (:mod:`binsearch.eval.query_text`), ``document`` with its embedding, ``auto``
    with the opening words when the corpus's text is given and lines up with the
    embeddings.
    """
    if corpus is None and embeddings is None:
        raise CorpusError(f"give a corpus ({CORPUS_FORMATS}) or --embeddings")
    if queries is not None and holdout is not None:
        raise CorpusError(
            "--holdout and --queries exclude each other (held-out documents are the queries)"
        )
    cpath = check_corpus_path(corpus) if corpus is not None else None
    qrels_path = check_qrels_path(qrels) if qrels is not None else None
    beir_judged = (
        cpath is not None
        and cpath.is_dir()
        and (cpath / "queries.jsonl").is_file()
        and (cpath / "qrels" / "test.tsv").is_file()
    )
    mode = "queries" if queries else ("judged" if beir_judged and holdout is None else "held-out")
    if qrels_path is not None and mode == "held-out":
        raise CorpusError("--qrels needs --queries (held-out documents have no judgments)")
    encoder = None

    def get_encoder() -> Any:
        nonlocal encoder
        if encoder is None:
            from binsearch.encoder.model import Encoder

            encoder = Encoder(model)
        return encoder

    if embeddings is not None:
        source, doc_ids = open_embeddings(embeddings)
        saved = embeddings
    else:
        total = count_documents(cpath)
        if mode == "held-out":
            holdout_count(total, holdout)  # refuse an impossible split before encoding
        source, doc_ids = encode_corpus(cpath, get_encoder(), workdir, batch_size, progress, total)
        saved = None
    if mode == "held-out":
        work = holdout_workload(source, holdout, seed)
        how = f"{len(work.query_ids):,} documents held out as queries (seed {seed}), removed from the searched corpus"
        if holdout_query != "document":
            how += _query_by_title(work, cpath, doc_ids, holdout_query, get_encoder, batch_size)
    else:
        work = query_workload(
            mode, cpath, embeddings, queries, qrels_path, source, doc_ids, get_encoder, batch_size
        )
        how = (
            f"{len(work.query_ids):,} judged test queries"
            if mode == "judged"
            else f"{len(work.query_ids):,} queries from {queries}"
        )
    setup = {
        "corpus": corpus or "–",
        "embeddings": embeddings or f"encoded with {model}",
        "documents": f"{source.n:,} ({work.searched:,} searched), {source.dim}-d",
        "queries": how,
    }
    skip_empty = cpath is not None and _has_empty(cpath)
    return Inputs(work, source.n, corpus, saved, None if embeddings else model, skip_empty, setup)


def _query_by_title(
    work: Workload,
    cpath: Path | None,
    doc_ids: list[str] | None,
    how: str,
    get_encoder: Any,
    batch_size: int,
) -> str:
    """Replace the held-out rows' embeddings by their opening words' (or titles'); say so."""
    from binsearch.eval.query_text import OPENING_WORDS, held_out_texts

    kind = "opening" if how == "auto" else how
    texts = (
        None
        if cpath is None
        else held_out_texts(cpath, work.excluded, work.source.n, doc_ids, kind)
    )
    if texts is None:
        if how != "auto":
            raise CorpusError(
                f"--holdout-query {how} needs the corpus's text, in the order of the embeddings' rows"
            )
        return ", queried by their embeddings"
    have = [i for i, t in enumerate(texts) if t]
    queries = work.queries.copy()  # an empty document keeps its embedding
    encoded = unit_rows(get_encoder().encode([texts[i] for i in have], batch_size))
    if encoded.shape[1] != work.source.dim:
        raise CorpusError(
            f"the embeddings are {work.source.dim}-d but the model's queries {queries.shape[1]}-d "
            "(pass the --model the embeddings were made with, or --holdout-query document)"
        )
    queries[have] = encoded
    work.queries = queries
    if kind == "title":
        return ", queried by their titles"
    return f", queried by their first {OPENING_WORDS} words"


def query_workload(
    mode: str,
    cpath: Path | None,
    embeddings: str | None,
    queries: str | None,
    qrels_path: Path | None,
    source: EmbeddingSource,
    doc_ids: list[str] | None,
    get_encoder: Any,
    batch_size: int,
) -> Workload:
    """Given queries (a file, or a BEIR folder's judged ones) over the whole corpus."""
    qrels = None
    if mode == "judged":
        qrels = read_qrels(cpath)
        texts_by_id = read_queries(cpath)
        ids = [q for q in texts_by_id if q in qrels]
        vectors = _stored_queries(embeddings, ids)
        if vectors is None:
            vectors = get_encoder().encode([texts_by_id[q] for q in ids], batch_size)
    else:
        ids, content = read_query_file(queries)
        vectors = (
            content
            if isinstance(content, np.ndarray)
            else get_encoder().encode(content, batch_size)
        )
        if qrels_path is not None:
            qrels = read_qrels(qrels_path)
    vectors = unit_rows(vectors)
    if vectors.shape[1] != source.dim:
        raise CorpusError(f"corpus is {source.dim}-d but queries are {vectors.shape[1]}-d")
    if qrels is not None:
        keep = [i for i, q in enumerate(ids) if q in qrels]
        if not keep:
            raise CorpusError(
                "no query has relevance judgments (query ids differ from the judgments')"
            )
        ids, vectors = [ids[i] for i in keep], vectors[keep]
        if doc_ids is None:
            if cpath is None:
                raise CorpusError(
                    "judgments name documents by id: give the corpus too, or ids.json beside corpus.npy"
                )
            doc_ids = _corpus_ids(cpath)
        if len(doc_ids) != source.n:
            raise CorpusError(
                f"the corpus has {len(doc_ids):,} documents but the embeddings {source.n:,} rows"
            )
    return Workload(source, vectors, ids, kind=mode, doc_ids=doc_ids, qrels=qrels)


def _stored_queries(embeddings: str | None, ids: list[str]) -> np.ndarray | None:
    """The judged queries' rows of a precomputed ``queries.npy`` (None when there is none)."""
    if embeddings is None or not Path(embeddings).is_dir():
        return None
    folder = Path(embeddings)
    if not (folder / "queries.npy").is_file():
        return None
    meta = json.loads((folder / "ids.json").read_text())
    row = {str(q): i for i, q in enumerate(meta.get("query_ids", []))}
    missing = [q for q in ids if q not in row]
    if missing:
        raise CorpusError(f"{folder}/ids.json has no query row for {missing[0]!r}")
    return ArraySource(np.load(folder / "queries.npy")).take(np.array([row[q] for q in ids]))
