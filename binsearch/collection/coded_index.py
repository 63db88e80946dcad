"""``CodedIndex``: a codec and a :class:`index.BinaryIndex` paired, the one seam between them.

Everything that turns float vectors into codes and ranks them goes through
here: the collection, evaluation, the shard servers, the service's warm-up and
the benchmarks. So an eval score is a served score.

Scores are cosines of code values. For a query ``q`` and a document ``d`` with
code values ``v(q)`` and ``v(d)`` (:func:`index.code_values`), the index returns
``<v(q), v(d)> / |v(d)|`` under the ``"cosine"`` metric (it stores ``|v(d)|``) or
``<v(q), v(d)>`` under ``"ip"`` (the centred grid's inner-product estimate);
:meth:`CodedIndex.search` divides by ``|v(q)|`` once, here, for both. Rescoring
(:meth:`CodedIndex.rescore`) ranks candidates by the float query against the
stored code values: ``<q, v(d)> / (|q| |v(d)|)``.

>>> coded = CodedIndex.new(make_codec("sign", 4))
>>> coded.add(np.eye(2, 4, dtype=np.float32), np.array([7, 9]))
>>> scores, keys = coded.topk(np.eye(1, 4, dtype=np.float32), k=1)
>>> keys.tolist()
[[7]]
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.codes.base import Codec
from index import BinaryIndex, code_values

#: Candidates re-scored per result when ``rescore=True``.
RESCORE_FACTOR = 4
#: Float queries (codecs with ``float_queries``): the fast-scan's int8 tables are coarse for the
#: skewed slot values of a varwidth code, so ``f * k`` exact results are taken (of ``4 f k``
#: candidates) and the best ``k`` kept, ``f = FLOAT_QUERY_FACTOR`` per started 1,024 bits. On
#: SciFact and Cranfield that kept 0.993-1.0 of the exact top-10 at 448 and 768 bits (f = 4) and
#: 1.0 at 1,536 (f = 8), where the fast-scan's own 4 k candidates kept 0.94-0.97.
FLOAT_QUERY_FACTOR = 4


class CodedIndex:
    """A codec and the index of its codes.

    Args:
        codec: any :class:`binsearch.codes.base.Codec`.
        index: a :class:`index.BinaryIndex` of the codec's shape (``m``, planes,
            weights, metric).
    """

    def __init__(self, codec: Codec, index: BinaryIndex) -> None:
        # The planes may differ: a compatible codec's queries score an older codec's codes.
        if (codec.m, codec.metric) != (index.m, index.metric):
            raise ValueError(
                f"the codec writes {codec.m}-bit planes ranked by {codec.metric}, the index "
                f"holds {index.m}-bit planes ranked by {index.metric}"
            )
        self.codec = codec
        self.index = index
        # The index stores no norm where every code has the same one (one fixed-weight
        # plane: sqrt(m) |w_0|); the cosine divides by it here.
        self._constant_norm = 1.0
        if index.metric == "cosine" and index.scaling == "fixed" and index.planes == 1:
            self._constant_norm = float(np.sqrt(index.m) * abs(index.plane_weights[0]))

    @classmethod
    def new(cls, codec: Codec, **index_options: Any) -> CodedIndex:
        """An empty index of ``codec``'s shape (``index_options`` go to :class:`BinaryIndex`)."""
        index = BinaryIndex(codec.m, codec.planes, codec.scaling, codec.metric, **index_options)
        return cls(codec, index)

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray,
        codec: Codec,
        keys: np.ndarray | None = None,
        batch_size: int = 4096,
        progress: bool = False,
        **index_options: Any,
    ) -> CodedIndex:
        """Float32 ``(n, d)`` embeddings coded into a new in-memory index.

        ``keys`` default to row numbers. Encoding runs in batches (progress bar
        optional), so memory stays bounded by one batch of unpacked signs.
        """
        n = embeddings.shape[0]
        keys = np.arange(n, dtype=np.int64) if keys is None else np.asarray(keys, dtype=np.int64)
        coded = cls.new(codec, **index_options)
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc="binarizing", unit="batch", disable=not progress):
            stop = min(start + batch_size, n)
            coded.add(embeddings[start:stop], keys[start:stop])
        return coded

    def __len__(self) -> int:
        return len(self.index)

    @property
    def bits_per_vector(self) -> int:
        """Every stored bit per document: codes, scales and the cosine's norm."""
        return int(self.index.bits_per_vector)

    # ------------------------------------------------------------------ write
    def add(self, vectors: np.ndarray, keys: np.ndarray) -> None:
        """Code float32 ``(n, d)`` vectors and store them under int64 ``keys`` (upsert)."""
        codes = self.codec.encode(vectors)
        self.index.add(codes.words, np.asarray(keys, dtype=np.int64), codes.scales)

    def remove(self, keys: np.ndarray) -> int:
        """Remove ``keys`` (absent ones ignored); how many were present."""
        return int(self.index.remove(np.asarray(keys, dtype=np.int64)))

    # ------------------------------------------------------------------ read
    def query_codes(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Query codes uint64 ``(nq, Pq, words)`` and plane weights float32 ``(nq, Pq)``.

        A codec's query codes carry their own plane weights (``scales``) or none,
        and then take the index's fixed plane weights.
        """
        codes = self.codec.encode_queries(vectors)
        weights = codes.scales
        if weights is None:
            pq = codes.words.shape[1]
            weights = np.broadcast_to(
                self.index.default_query_weights(pq), (codes.words.shape[0], pq)
            )
        return codes.words, np.ascontiguousarray(weights, dtype=np.float32)

    def topk(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        allow: np.ndarray | None = None,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` cosine scores float32 ``(nq, k')`` and keys int64 ``(nq, k')`` by code scores.

        ``k' = min(k, searchable documents)``; best first, ties by key. ``allow``:
        int64 keys, only these can be returned (the scan skips the rest).
        ``threads``: scan threads (default: every numba thread).
        """
        if allow is not None and not len(allow):
            nq = len(vectors)
            return np.empty((nq, 0), np.float32), np.empty((nq, 0), np.int64)
        float_queries = getattr(self.codec, "float_queries", None)
        if float_queries is not None:
            # Wide one-plane codes (varwidth): the float query by nibble tables beats its many
            # query planes by popcount, and its best candidates are re-scored exactly.
            values = np.ascontiguousarray(float_queries(vectors), dtype=np.float32)
            # exact scores of the best factor * k, of 4x as many candidates (a scalar loop
            # stands in for the SIMD one on CPUs without AVX2)
            factor = FLOAT_QUERY_FACTOR * -(-self.index.m // 1024)
            scores, keys = self.index.search_float(
                values, k * factor, method="fastscan", allow_keys=allow, threads=threads
            )
            scores, keys = scores[:, :k], keys[:, :k]
            q_norm = np.linalg.norm(values.astype(np.float64), axis=1)
            q_norm = np.where(q_norm > 0, q_norm, 1.0) * self._constant_norm
            return (scores / q_norm[:, None].astype(np.float32)).astype(np.float32), keys
        words, weights = self.query_codes(vectors)
        q_norm = np.linalg.norm(code_values(words, self.codec.m, weights), axis=1)
        q_norm = np.where(q_norm > 0, q_norm, 1.0) * self._constant_norm
        # "fast": fast-scan where the kernel chooser finds it faster, also with quantized tables whose
        # best candidates are re-scored exactly (the query is itself a binarized float).
        scores, keys = self.index.search(
            words, k, weights, method="fast", allow_keys=allow, threads=threads
        )
        return (scores / q_norm[:, None].astype(np.float32)).astype(np.float32), keys

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        allow: np.ndarray | None = None,
        rescore: bool = False,
        threads: int | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`topk`, per query, optionally re-ranked by the float query.

        ``rescore``: take ``RESCORE_FACTOR * k`` candidates by code score and keep
        the best ``k`` by :meth:`rescore`. Returns per query float32 scores and
        int64 keys, best first, ties by key.
        """
        kk = k * RESCORE_FACTOR if rescore else k
        scores, keys = self.topk(vectors, kk, allow=allow, threads=threads)
        out = []
        for qi in range(len(vectors)):
            s, ks = scores[qi], keys[qi]
            if rescore and len(ks):
                s, ks = self.rescore(vectors[qi], ks, k)
            out.append((s, ks))
        return out

    def rescore(self, query: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of candidate ``keys`` by the float ``query`` ``(d,)`` against code values.

        Keys no longer in the index are dropped. Returns float32 scores and int64
        keys, best first, ties by key.
        """
        keys = np.asarray(keys, dtype=np.int64)
        keys = keys[self.index.contains(keys)]
        codes, scales = self.index.get(keys)
        weights = scales if scales is not None else self.index.plane_weights
        values = code_values(codes, self.index.m, weights)
        norms = np.linalg.norm(values, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
        scores = values @ query / np.where(norms > 0, norms, 1.0)
        order = np.lexsort((keys, -scores))[:k]
        return scores[order].astype(np.float32), keys[order]

    # ------------------------------------------------------------------ warm-up
    def warm(self, writes: bool = False) -> None:
        """Compile (or load) the scan kernels and take the kernel choices now.

        Scans of one and two random queries; with ``writes``, also the write path
        (tail append, a replace, a tombstone) on a throwaway index of the same
        shape, so the first real write loads nothing from numba's cache.
        """
        x = np.random.default_rng(0).standard_normal((2, self.codec.dim))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        if writes:
            scratch = CodedIndex.new(self.codec)
            scratch.add(x[:1], np.array([0]))
            scratch.add(x[:1], np.array([0]))  # a replace
            scratch.remove(np.array([0]))
        if not len(self):
            return
        for nq in (1, 2):
            self.topk(x[:nq], 1)


__all__ = ["FLOAT_QUERY_FACTOR", "RESCORE_FACTOR", "CodedIndex"]
