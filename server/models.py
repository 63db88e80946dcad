"""Request and response bodies of the HTTP API, with the examples shown at ``/docs``."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_K = 1000
MAX_QUERY_CHARS = 2000
MAX_TITLE_CHARS = 1000
MAX_TEXT_CHARS = 50_000
MAX_VECTOR_WIDTH = 4096
MAX_FILTER_IDS = 10_000
MAX_BATCH_QUERIES = 64
MAX_DOCUMENTS = 256

# Ids travel in URL paths: no slashes, no control characters.
DocId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^[^/\x00-\x1f\x7f]+$",
        examples=["doc-42"],
        description="document id (no '/', no control characters)",
    ),
]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Vector = Annotated[
    list[FiniteFloat],
    Field(
        min_length=1,
        max_length=MAX_VECTOR_WIDTH,
        description="float embedding of the index's width (see GET /stats: dim)",
    ),
]

_EXAMPLE_VECTOR = [0.05, -0.12, 0.31]


def _strict(examples: list[dict[str, Any]]) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra={"examples": examples})


class SearchRequest(BaseModel):
    """One query: ``query`` text or a ``vector``, exactly one of them."""

    model_config = _strict(
        [
            {"query": "boundary layer transition at supersonic speed", "k": 5, "with_text": True},
            {"vector": _EXAMPLE_VECTOR, "k": 3, "filter": ["12", "51", "184"]},
        ]
    )

    query: str | None = Field(
        None, min_length=1, max_length=MAX_QUERY_CHARS, description="query text"
    )
    vector: Vector | None = None
    k: int = Field(10, ge=1, le=MAX_K, description="number of results")
    filter: list[DocId] | None = Field(
        None,
        max_length=MAX_FILTER_IDS,
        description="allow-list: only these document ids can be returned",
    )
    rescore: bool = Field(
        False, description="re-rank 4k code candidates with the float query (slower, finer)"
    )
    with_text: bool = Field(False, description="include each document's text")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.query is None) == (self.vector is None):
            raise ValueError("give exactly one of 'query' (text) or 'vector'")
        if self.query is not None and not self.query.strip():
            raise ValueError("'query' is blank")
        return self


class SearchHit(BaseModel):
    """One ranked document."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"id": "12", "score": 0.71, "title": "boundary layer on a flat plate"}]
        }
    )

    id: str
    score: float = Field(description="cosine similarity (of codes, or float query vs codes)")
    title: str | None = None
    text: str | None = None


class Timings(BaseModel):
    """Where the time of a request went, in milliseconds.

    Concurrent requests share encoder calls and scans: ``encode_ms`` and
    ``search_ms`` are the shared calls' durations, ``queue_ms`` the wait for them.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"encode_ms": 6.1, "search_ms": 3.2, "queue_ms": 0.0, "total_ms": 9.3}]
        }
    )

    encode_ms: float = Field(description="the model call that embedded the query text")
    search_ms: float = Field(description="the scan (and rescoring) that ranked the query")
    queue_ms: float = Field(0.0, description="waiting for a shared model call or scan")
    total_ms: float = Field(description="encode + search + queue")


class SearchResponse(BaseModel):
    """Ranked hits for one query."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [{"id": "12", "score": 0.71, "title": "boundary layer"}],
                    "timings": {"encode_ms": 6.1, "search_ms": 3.2, "total_ms": 9.5},
                }
            ]
        }
    )

    results: list[SearchHit]
    timings: Timings


class BatchSearchRequest(BaseModel):
    """Many queries in one request; each is answered as by ``POST /search``."""

    model_config = _strict(
        [{"queries": [{"query": "heat transfer", "k": 3}, {"vector": _EXAMPLE_VECTOR, "k": 3}]}]
    )

    queries: list[SearchRequest] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)


class BatchSearchResponse(BaseModel):
    """One response per query, in order, and the time of the whole batch."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "responses": [
                        {
                            "results": [{"id": "12", "score": 0.71}],
                            "timings": {"encode_ms": 6.1, "search_ms": 3.2, "total_ms": 9.5},
                        }
                    ],
                    "timings": {"encode_ms": 6.1, "search_ms": 3.2, "total_ms": 9.5},
                }
            ]
        }
    )

    responses: list[SearchResponse]
    timings: Timings


class DocumentIn(BaseModel):
    """A document to add or replace. Encoded from ``title + text`` unless ``vector`` is given."""

    model_config = _strict(
        [
            {
                "id": "doc-42",
                "title": "Flutter of swept wings",
                "text": "Wind-tunnel tests of flutter on swept wings at transonic speed.",
                "metadata": {"year": 1962},
            }
        ]
    )

    id: DocId
    title: str = Field("", max_length=MAX_TITLE_CHARS)
    text: str = Field("", max_length=MAX_TEXT_CHARS)
    metadata: dict[str, Any] | None = Field(None, description="any JSON object, stored as is")
    vector: Vector | None = Field(None, description="precomputed embedding (skips the encoder)")

    @model_validator(mode="after")
    def _has_content(self) -> DocumentIn:
        if self.vector is None and not (self.title.strip() or self.text.strip()):
            raise ValueError("a document needs a non-blank title or text (or a vector)")
        if self.metadata is not None and not _plain_json(self.metadata):
            # Python's JSON reader accepts NaN and Infinity, but no response could carry them.
            raise ValueError("metadata must be plain JSON: no NaN or Infinity")
        return self


def _plain_json(value: Any) -> bool:
    """True if ``value`` holds no non-finite floats, however deeply nested."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_plain_json(v) for v in value.values())
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    return True


class DocumentsIn(BaseModel):
    """Documents to add; an id already in the index is replaced."""

    model_config = _strict(
        [{"documents": [{"id": "doc-42", "title": "Flutter", "text": "Flutter of swept wings."}]}]
    )

    documents: list[DocumentIn] = Field(min_length=1, max_length=MAX_DOCUMENTS)


class WriteResult(BaseModel):
    """What a write did; returned only once it is durable."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"ids": ["doc-42"], "added": 1, "replaced": 0, "took_ms": 8.2}]
        }
    )

    ids: list[str]
    added: int
    replaced: int
    took_ms: float


class DocumentOut(BaseModel):
    """A stored document."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "doc-42",
                    "title": "Flutter",
                    "text": "Flutter of swept wings.",
                    "metadata": None,
                }
            ]
        }
    )

    id: str
    title: str
    text: str
    metadata: dict[str, Any] | None = None


class Deleted(BaseModel):
    """Confirmation of a durable delete."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "doc-42", "deleted": True}]})

    id: str
    deleted: bool


class Health(BaseModel):
    """Liveness: the process answers."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str


class Ready(BaseModel):
    """Readiness: the index is loaded (and whether the text encoder is)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ready": True, "documents": 1400, "model_loaded": True}]}
    )

    ready: bool
    documents: int | None = None
    model_loaded: bool
    error: str | None = None


class Stats(BaseModel):
    """Size and traffic of the served index."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "documents": 1400,
                    "bits_per_vector": 832,
                    "codec": {"codec": "residual", "dim": 384, "planes": 2, "refit": False},
                    "model": "all-MiniLM-L6-v2",
                    "dim": 384,
                    "index_bytes": 156800,
                    "generation": 3,
                    "wal_bytes": 0,
                    "pending_writes": 0,
                    "queries_served": 10,
                    "documents_written": 2,
                    "documents_deleted": 0,
                    "uptime_s": 61.0,
                }
            ]
        }
    )

    documents: int
    bits_per_vector: int
    codec: dict[str, Any]
    model: str | None
    dim: int
    index_bytes: int
    generation: int
    wal_bytes: int
    pending_writes: int
    queries_served: int
    documents_written: int
    documents_deleted: int
    uptime_s: float


class SnapshotResult(BaseModel):
    """The generation a snapshot wrote."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"generation": 4, "documents": 1402, "seconds": 0.21}]}
    )

    generation: int
    documents: int
    seconds: float


class ErrorBody(BaseModel):
    """Every error: what was wrong, and for validation errors, where."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "status": 422,
                        "message": "body.k: Input should be less than or equal to 1000",
                        "details": [{"loc": ["body", "k"], "msg": "..."}],
                    }
                }
            ]
        }
    )

    error: ErrorDetail


class ErrorDetail(BaseModel):
    status: int
    message: str
    details: list[dict[str, Any]] | None = None


ErrorBody.model_rebuild()
