"""How a :class:`~binsearch.collection.collection.Collection` searches: filters, modes, fusion.

The search half of ``Collection`` (a mixin, so the class stays one object):
a ``where`` filter and an id list become one SQL condition
(:mod:`binsearch.collection.filters`) whose keys are the scan's allow-list; the
keyword ranking is the FTS5 index (:mod:`binsearch.collection.keyword`); hybrid
fuses both by reciprocal rank (:mod:`binsearch.collection.fusion`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from binsearch.collection import field_index, fusion, keyword
from binsearch.collection.field_index import compile_filter
from binsearch.collection.filters import Compiled, path_of, with_ids
from binsearch.collection.types import SearchResult, unit_vectors

#: A filter that reads every row splits the key range over this many cores at most,
#: where the collection spans at least ``SPLIT_ROWS`` keys.
MAX_SCAN_PARTS = 4
SPLIT_ROWS = 100_000


def _key_list(select: Any, sql: str, params: list[Any]) -> np.ndarray:
    """The int64 keys a query yields, as one string: 10,000 keys in about 1 ms, not the
    11 ms of a Python tuple per row."""
    text = select(f"SELECT group_concat(key) FROM ({sql})", params)[0][0]
    return np.fromstring(text, dtype=np.int64, sep=",") if text else np.empty(0, np.int64)


class SearchMixin:
    """``search``, ``search_vectors`` and metadata field indexes of a ``Collection``."""

    #: What the last filtered search's filter did (fields, rows matched, time, scan).
    last_filter: dict[str, Any] | None = None

    def search(
        self,
        queries: Sequence[str] | None = None,
        k: int = 10,
        *,
        embeddings: np.ndarray | None = None,
        filter: Sequence[str] | None = None,
        rescore: bool = False,
        threads: int | None = None,
        where: dict[str, Any] | None = None,
        mode: str = "semantic",
    ) -> list[SearchResult]:
        """Top-``k`` documents for each query text (or float32 query embedding).

        Scores are cosines of code values (query and document binarized alike);
        ``rescore`` re-ranks ``4k`` candidates by the float query against the
        stored code values. ``filter`` restricts results to those document ids,
        ``where`` to documents whose metadata matches a filter
        (:mod:`binsearch.collection.filters`); the top-``k`` is then exactly the
        best ``k`` of the matching documents. ``mode``: ``"semantic"``,
        ``"keyword"`` (BM25 scores, :mod:`binsearch.collection.keyword`) or
        ``"hybrid"`` (reciprocal-rank fusion, :mod:`binsearch.collection.fusion`).
        ``threads``: scan threads (default every numba thread; see ``BinaryIndex.search``).
        """
        self._check_open()
        queries, embeddings = self._check_search(queries, k, embeddings, mode, where)
        condition = self._condition(filter, where)
        if mode == "keyword":
            assert queries is not None
            return self._with_rows([self._keyword(q, int(k), condition) for q in queries])
        if embeddings is None:
            assert queries is not None
            embeddings = self.embed(queries)
        vectors = unit_vectors(embeddings, len(embeddings), self.dim, "query embeddings")
        if mode == "semantic":
            return self._with_rows(self._semantic(vectors, int(k), condition, rescore, threads))
        assert queries is not None
        depth = fusion.depth(int(k))
        semantic = self._semantic(vectors, depth, condition, rescore, threads)
        hits = [
            fusion.rrf([keys, self._keyword(q, depth, condition)[1]], int(k))
            for q, (_, keys) in zip(queries, semantic, strict=True)
        ]
        return self._with_rows(hits)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int,
        filter: Sequence[str] | None = None,
        rescore: bool = False,
        threads: int | None = None,
        where: dict[str, Any] | None = None,
    ) -> list[SearchResult]:
        """:meth:`search` for checked, unit-length float32 ``(nq, dim)`` vectors."""
        condition = self._condition(filter, where)
        return self._with_rows(self._semantic(vectors, k, condition, rescore, threads))

    def _condition(
        self, filter: Sequence[str] | None, where: dict[str, Any] | None
    ) -> Compiled | None:
        """The id list and metadata filter as one compiled SQL condition (None: no filter)."""
        combined = with_ids(where, None if filter is None else list(filter))
        if combined is None:
            return None
        return compile_filter(combined, self.indexed_fields())

    def filter_stats(self) -> dict[str, Any]:
        """Declared fields and the last filtered search (see the protocol)."""
        return {"indexed_fields": self.indexed_fields(), "last_filter": self.last_filter}

    def indexed_fields(self) -> list[str]:
        """Declared metadata fields (:meth:`index_fields`)."""
        return field_index.declared(self.store.select)

    def index_fields(self, fields: Sequence[str]) -> list[str]:
        """Declare metadata ``fields`` (dotted names) so filters on them read an index
        whose rows carry the keys (:mod:`binsearch.collection.field_index`), not every
        row's metadata; kept in step with every write from now on. Builds the index of
        the stored documents now (one transaction); returns every declared field."""
        self._check_writable()
        fields = list(dict.fromkeys(fields))
        for name in fields:
            path_of(name, "index_fields")  # checked before anything is built
        with self._write_lock, self.store._lock, self.store._transaction() as db:
            return field_index.declare(db, fields)

    def allowed_keys(self, condition: Compiled) -> np.ndarray:
        """The sorted int64 keys of the documents a compiled filter matches."""
        started = time.perf_counter()
        if condition.rows and not condition.indexed:
            keys = self._scan_rows(condition)
        else:
            keys = _key_list(self.store.select, condition.keys_sql, condition.keys_params)
        keys.sort()
        self.last_filter = {
            "fields": list(condition.fields),
            "matched": int(len(keys)),
            "filter_ms": round((time.perf_counter() - started) * 1e3, 3),
            # "index": declared fields' index only; "rows": every row's metadata was read;
            # "index+rows": the metadata of the rows the declared fields' index selected.
            "scan": ("index+rows" if condition.indexed else "rows") if condition.rows else "index",
        }
        return keys

    def _scan_rows(self, condition: Compiled) -> np.ndarray:
        """Keys of a filter that reads every row's metadata, the key range split over
        the cores (each part on its own connection: SQLite parses JSON on one core)."""
        low, high = self.store.select("SELECT min(key), max(key) FROM documents")[0]
        parts = min(os.cpu_count() or 1, MAX_SCAN_PARTS)
        if low is None or self.store.readonly or high - low < SPLIT_ROWS or parts < 2:
            return _key_list(self.store.select, condition.keys_sql, condition.keys_params)
        sql = f"{condition.keys_sql} AND d.key >= ? AND d.key < ?"
        bounds = np.linspace(low, high + 1, parts + 1).astype(np.int64).tolist()

        def part(i: int) -> np.ndarray:
            params = [*condition.keys_params, bounds[i], bounds[i + 1]]
            if i == 0:
                return _key_list(self.store.select, sql, params)
            db = self.store._connect()
            try:
                db.execute("PRAGMA query_only=1")
                return _key_list(lambda q, p: db.execute(q, p).fetchall(), sql, params)
            finally:
                db.close()

        with ThreadPoolExecutor(parts - 1) as pool:
            rest = list(pool.map(part, range(1, parts)))
            return np.concatenate([part(0), *rest])

    def _semantic(
        self,
        vectors: np.ndarray,
        k: int,
        condition: Compiled | None,
        rescore: bool,
        threads: int | None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        allow = None if condition is None else self.allowed_keys(condition)
        return self.coded.search(vectors, k, allow=allow, rescore=rescore, threads=threads)

    def _keyword(
        self, text: str, k: int, condition: Compiled | None
    ) -> tuple[np.ndarray, np.ndarray]:
        where = None if condition is None else (condition.sql, condition.params)
        return keyword.search(self.store.select, text, k, where)
