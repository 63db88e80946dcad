"""Request and response bodies of the HTTP API, with the examples shown at ``/docs``."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

MAX_K = 1000
MAX_QUERY_CHARS = 2000
MAX_TITLE_CHARS = 1000
MAX_TEXT_CHARS = 50_000
MAX_VECTOR_WIDTH = 4096
MAX_FILTER_IDS = 10_000
MAX_BATCH_QUERIES = 64
MAX_DOCUMENTS = 256
# Metadata is stored as JSON and served back: bounded so every stored document
# can be read (pydantic's serializer gives up near 255 levels) and no document
# costs more than its text.
MAX_METADATA_DEPTH = 32
MAX_METADATA_BYTES = 65_536
FLOAT32_MAX = float(np.finfo(np.float32).max)

# The characters Python's str.isspace() (so str.strip()) counts as whitespace.
# Written out so the schema's pattern says exactly what the server checks.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
    "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# JSON Schema "pattern" (a search, not a match): at least one non-whitespace character.
NON_BLANK = "[^" + WHITESPACE.encode("unicode_escape").decode("ascii") + "]"

# The schema states the id rules as searches that every regex engine reads
# alike: an anchored pattern's "$" also matches before a final newline in
# Python's re (which schema tools use), but not in the server's validator.
ID_PATTERN = r"^[^/\x00-\x1f\x7f]+$"
_BAD_ID_CHAR = {"pattern": r"[/\x00-\x1f\x7f]"}


def id_schema(schema: dict[str, Any]) -> None:
    """JSON schema of an id: no '/' or control character anywhere."""
    schema.pop("pattern", None)
    schema["not"] = _BAD_ID_CHAR


def _write_id_schema(schema: dict[str, Any]) -> None:
    schema.pop("pattern", None)
    schema["not"] = {"anyOf": [_BAD_ID_CHAR, {"enum": [".", ".."]}]}


# Ids travel in URL paths: no slashes, no control characters.
DocId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=ID_PATTERN,
        examples=["doc-42"],
        description="document id (no '/', no control characters)",
        json_schema_extra=id_schema,
    ),
]


def _reachable_id(doc_id: str) -> str:
    if doc_id in (".", ".."):
        raise ValueError(
            f"the id {doc_id!r} cannot be used: clients that normalise URL paths could never "
            "reach /documents/" + doc_id
        )
    return doc_id


# The id of a document being written: also not "." or "..".
WriteDocId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=ID_PATTERN,
        examples=["doc-42"],
        description="document id: no '/', no control characters, not '.' or '..'",
        json_schema_extra=_write_id_schema,
    ),
    AfterValidator(_reachable_id),
]


def _check_vector(values: list[float]) -> list[float]:
    """Refuse what float32 cannot hold, and vectors with no direction.

    One conversion of the list (the dominant cost); the values are already
    finite, so an infinity after it means a value beyond the float32 range.
    """
    with np.errstate(over="ignore"):
        x32 = np.array(values, dtype=np.float32)
    if not np.isfinite(x32).all():
        raise ValueError(f"vector values must fit float32 (|v| <= {FLOAT32_MAX:.4g})")
    if not x32.any():
        raise ValueError("the vector is all zeros (in float32): cosine similarity is undefined")
    x = x32.astype(np.float64)
    if np.dot(x, x) > FLOAT32_MAX**2:
        raise ValueError(
            f"the vector's length overflows float32 (over {FLOAT32_MAX:.4g}); scale it down"
        )
    return values


FiniteFloat = Annotated[
    float,
    Field(
        allow_inf_nan=False,
        json_schema_extra={"minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
    ),
]
Vector = Annotated[
    list[FiniteFloat],
    Field(
        min_length=1,
        max_length=MAX_VECTOR_WIDTH,
        description="float embedding of the index's width (see GET /stats: dim); float32 "
        "range, not all zeros",
    ),
    AfterValidator(_check_vector),
]


def unit_float32(values: list[float]) -> np.ndarray:
    """A checked vector scaled to unit length in float64, as float32 ``(dim,)``.

    Cosine ignores length; scaling first keeps tiny vectors (whose float32 norm
    would underflow to 0) and large ones (whose norm would overflow) usable.
    """
    x = np.array(values, dtype=np.float32).astype(np.float64)
    return (x / np.sqrt(np.dot(x, x))).astype(np.float32)


def _without_null(schema: dict[str, Any], *names: str) -> None:
    """In a model's JSON schema, let ``names`` be absent but not null."""
    for name in names:
        prop = schema["properties"][name]
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            prop.update(options[0])
            if prop.get("default", 0) is None:
                del prop["default"]


_EXAMPLE_VECTOR = [0.05, -0.12, 0.31]


def _strict(examples: list[dict[str, Any]], rules: Any = None) -> ConfigDict:
    """Unknown fields refused; ``rules(schema)`` adds what field types cannot say."""

    def extra(schema: dict[str, Any], cls: type) -> None:
        schema["examples"] = examples
        if rules is not None:
            rules(schema)

    return ConfigDict(extra="forbid", json_schema_extra=extra)


def _one_query_rule(schema: dict[str, Any]) -> None:
    _without_null(schema, "query", "vector")
    schema["oneOf"] = [{"required": ["query"]}, {"required": ["vector"]}]


def _content_rule(schema: dict[str, Any]) -> None:
    _without_null(schema, "vector")
    schema["anyOf"] = [
        {"required": ["vector"]},
        {"required": ["title"], "properties": {"title": {"pattern": NON_BLANK}}},
        {"required": ["text"], "properties": {"text": {"pattern": NON_BLANK}}},
    ]


class SearchRequest(BaseModel):
    """One query: ``query`` text or a ``vector``, exactly one of them."""

    model_config = _strict(
        [
            {"query": "boundary layer transition at supersonic speed", "k": 5, "with_text": True},
            {"vector": _EXAMPLE_VECTOR, "k": 3, "filter": ["12", "51", "184"]},
        ],
        _one_query_rule,
    )

    query: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="query text (not blank)",
        json_schema_extra={"pattern": NON_BLANK},
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


def _check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Refuse metadata that could be stored but not served back as JSON.

    Walked with a stack, not recursion: depth is what is being checked.
    """
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key, "metadata keys")
                stack.append((item, depth + 1))
        elif isinstance(value, str):
            _check_text(value, "metadata values")
        elif isinstance(value, float) and not math.isfinite(value):
            # Python's JSON reader accepts NaN and Infinity, but no response could carry them.
            raise ValueError("metadata must be plain JSON: no NaN or Infinity")
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    return metadata


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{what} must be valid Unicode: a lone surrogate (\\ud800-\\udfff) has no UTF-8 form"
        ) from None


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
        ],
        _content_rule,
    )

    id: WriteDocId
    title: str = Field("", max_length=MAX_TITLE_CHARS)
    text: str = Field("", max_length=MAX_TEXT_CHARS)
    metadata: Annotated[dict[str, Any], AfterValidator(_check_metadata)] | None = Field(
        None,
        description=f"any JSON object, stored as is: at most {MAX_METADATA_DEPTH} levels deep "
        f"and {MAX_METADATA_BYTES} bytes as compact JSON",
    )
    vector: Vector | None = Field(None, description="precomputed embedding (skips the encoder)")

    @model_validator(mode="after")
    def _has_content(self) -> DocumentIn:
        if self.vector is None and not (self.title.strip() or self.text.strip()):
            raise ValueError("a document needs a non-blank title or text (or a vector)")
        return self


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
                    "database_bytes": 98304,
                    "segments": 1,
                    "pending_changes": 0,
                    "generation": 3,
                    "shards": 1,
                    "per_shard": None,
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
    database_bytes: int = Field(description="the document database (SQLite) and its log")
    segments: int
    pending_changes: int = Field(description="changes since the last snapshot (the journal)")
    generation: int = Field(description="the journal number the last snapshot covers")
    shards: int = Field(description="1 for a local collection")
    per_shard: list[dict[str, Any]] | None = Field(
        None, description="a sharded collection: each shard's own statistics"
    )
    queries_served: int
    documents_written: int
    documents_deleted: int
    uptime_s: float
    encoder_precision: str | None = Field(
        None,
        description="the precision the encoder's torch path runs in (fp32, bf16, int8), once a "
        "bulk call has run; null before (queries of up to 8 texts run on ONNX Runtime in fp32)",
    )


class SnapshotResult(BaseModel):
    """What a snapshot wrote: the index manifest's new generation and the bytes of new files."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"generation": 4, "documents": 1402, "seconds": 0.021, "bytes_written": 9120}
            ]
        }
    )

    generation: int
    documents: int
    seconds: float
    bytes_written: int = Field(0, description="bytes of the new index files and manifest")


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
