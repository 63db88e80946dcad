"""Corpus, query and relevance-judgment readers (BEIR layout and plain files).

Accepted corpora:

* a BEIR folder holding ``corpus.jsonl``;
* a ``.jsonl`` file of ``{"_id" | "id", "title", "text"}`` objects;
* a ``.csv`` / ``.tsv`` file with a header and a ``text`` column (``id`` /
  ``_id`` and ``title`` columns are used when present);
* a ``.txt`` file with one document per line (ids are line numbers).

Every reader raises :class:`CorpusError` with the file and line on bad input.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class CorpusError(ValueError):
    """A corpus, query or qrels file that cannot be used as it is."""


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    #: A .jsonl row's ``metadata`` object (what ``where`` filters read), else None.
    metadata: dict | None = None

    @property
    def content(self) -> str:
        """The text an encoder sees: ``title + " " + text``, stripped."""
        return f"{self.title} {self.text}".strip()


EMPTY_POLICIES = ("error", "skip", "keep")


def read_corpus(path: str | Path, empty: str = "error") -> list[Document]:
    """Read a corpus in any accepted layout; refuse empty corpora and duplicate ids.

    ``empty`` says what to do with a document that has neither title nor text:
    ``"error"`` (default) refuses the corpus, ``"skip"`` drops the document,
    ``"keep"`` keeps it (evaluation keeps them so row numbers match
    precomputed embeddings).
    """
    docs = list(iter_corpus(path, empty))
    seen: set[str] = set()
    for doc in docs:
        if doc.id in seen:
            raise CorpusError(f"{corpus_file(path)}: duplicate document id {doc.id!r}")
        seen.add(doc.id)
    return docs


def corpus_file(path: str | Path) -> Path:
    """The file a corpus path names (``corpus.jsonl`` inside a BEIR folder), checked to exist."""
    path = Path(path)
    if path.is_dir():
        inner = path / "corpus.jsonl"
        if not inner.is_file():
            raise CorpusError(f"{path} is a folder without corpus.jsonl (expected the BEIR layout)")
        path = inner
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    return path


def iter_corpus(path: str | Path, empty: str = "error") -> Iterator[Document]:
    """Stream a corpus document by document (constant memory); see :func:`read_corpus`.

    Duplicate ids are not checked here (that needs every id): the caller does.
    """
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}")
    path = corpus_file(path)
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".csv": _read_table, ".tsv": _read_table, ".txt": _read_txt}
    if suffix not in readers:
        raise CorpusError(
            f"{path}: unsupported corpus type {suffix!r}; use .jsonl, .csv, .tsv or .txt"
        )
    count = 0
    for number, doc in readers[suffix](path):
        if not doc.content:
            if empty == "error":
                raise CorpusError(
                    f"{path}:{number}: document {doc.id!r} has no text "
                    "(pass --skip-empty to leave such documents out)"
                )
            if empty == "skip":
                continue
        count += 1
        yield doc
    if not count:
        raise CorpusError(f"{path}: the corpus is empty")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            yield from enumerate(f, 1)
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror})") from exc


def _read_jsonl(path: Path) -> Iterator[tuple[int, Document]]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{number}: invalid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise CorpusError(f"{path}:{number}: expected a JSON object")
        yield number, _document(row, path, number, default_id=str(number))


def _read_table(path: Path) -> Iterator[tuple[int, Document]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            fields = [name.strip().lower() for name in reader.fieldnames or []]
            if "text" not in fields:
                raise CorpusError(f"{path}: no 'text' column in the header (found {fields})")
            for number, raw in enumerate(reader, 2):
                row = {(k or "").strip().lower(): v for k, v in raw.items()}
                yield number, _document(row, path, number, default_id=str(number - 1))
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise CorpusError(f"{path}: malformed {path.suffix[1:]} ({exc})") from exc
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror})") from exc


def _read_txt(path: Path) -> Iterator[tuple[int, Document]]:
    for number, line in _lines(path):
        text = line.strip()
        if text:
            yield number, Document(str(number), "", text)


def _document(row: dict, path: Path, number: int, default_id: str) -> Document:
    raw_id = row.get("_id", row.get("id"))
    doc_id = default_id if raw_id is None or str(raw_id).strip() == "" else str(raw_id).strip()
    title = row.get("title") or ""
    text = row.get("text") or ""
    if not isinstance(title, str) or not isinstance(text, str):
        raise CorpusError(f"{path}:{number}: title and text must be strings")
    metadata = row.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise CorpusError(f"{path}:{number}: metadata must be a JSON object")
    return Document(doc_id, title.strip(), text.strip(), metadata or None)


def read_queries(path: str | Path) -> dict[str, str]:
    """``queries.jsonl`` of a BEIR folder (or the file itself) as ``{query_id: text}``."""
    path = Path(path)
    if path.is_dir():
        path = path / "queries.jsonl"
    if not path.is_file():
        raise CorpusError(f"{path}: no such file (a dataset needs queries.jsonl)")
    queries: dict[str, str] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            queries[str(row["_id"])] = str(row["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorpusError(f"{path}:{number}: expected {{'_id', 'text'}} ({exc})") from exc
    return queries


def read_qrels(path: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """Relevance judgments ``{query_id: {doc_id: gain}}``, positive gains only.

    ``path`` is a BEIR folder (reads ``qrels/<split>.tsv``) or a TSV file with a
    header line ``query-id  corpus-id  score``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise CorpusError(f"{path}: no such file (a dataset needs qrels/{split}.tsv)")
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _lines(path):
        parts = line.rstrip("\n").split("\t")
        if number == 1 and len(parts) == 3 and not parts[2].strip().lstrip("-").isdigit():
            continue  # header
        if not line.strip():
            continue
        if len(parts) != 3:
            raise CorpusError(f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>score'")
        try:
            gain = int(parts[2])
        except ValueError as exc:
            raise CorpusError(f"{path}:{number}: score {parts[2]!r} is not an integer") from exc
        if gain > 0:
            qrels.setdefault(parts[0], {})[parts[1]] = gain
    if not qrels:
        raise CorpusError(f"{path}: no positive relevance judgments")
    return qrels
