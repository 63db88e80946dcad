"""Bodies of the operations endpoints (/health, /ready, /stats, /snapshot) and of every error."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
    startup: dict[str, Any] | None = Field(
        None,
        description="ready_after_s: seconds from start to /ready; encoder: 'onnx' (the cached "
        "export `binsearch index` prepares), 'torch' or null; encoder_state: 'preparing' (a "
        "first start on this machine exports the encoder in a child process after /ready: "
        "vector queries and writes are served, text requests wait), 'ready', 'failed' or "
        "'none'; encoder_ready_after_s: seconds from start until text queries are served; "
        "kernels: 'measuring' (a first start times the scan kernels after /ready, serving "
        "with the exact popcount kernel meanwhile) or 'measured'",
    )
    indexed_fields: list[str] | None = Field(
        None,
        description="declared metadata fields (filters on them read an index of "
        "keys; filters on others read every row)",
    )
    last_filter: dict[str, Any] | None = Field(
        None,
        description="the last filtered search: fields read, documents matched, filter_ms, and "
        "scan ('index': an indexed field's range; 'rows': every row's metadata)",
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
