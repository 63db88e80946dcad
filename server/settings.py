"""Server settings: command-line flags and ``BINSEARCH_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class Settings(BaseSettings):
    """Everything the service can be told; each field reads ``BINSEARCH_<NAME>``.

    Example: ``BINSEARCH_INDEX_DIR=./idx BINSEARCH_API_KEY=s3cret binsearch serve ./idx``.
    """

    model_config = SettingsConfigDict(env_prefix="BINSEARCH_", extra="ignore")

    index_dir: Path = Field(Path("index"), description="index directory (created if missing)")
    model: str | None = Field(
        None, description="model name or directory; default: the one the index was built with"
    )
    codec: str = Field("residual", description="codec of a new index: sign or residual")
    bits: int = Field(2, ge=1, le=8, description="planes of a new residual index")
    api_key: SecretStr | None = Field(None, description="key required by writes and snapshots")
    read_auth: bool = Field(False, description="reads need the key too")
    allow_remote: bool = Field(
        False, description="bind a non-loopback host even without an API key"
    )
    warm_model: bool = Field(True, description="load the encoder at start, not on first query")
    max_body_bytes: int = Field(4_000_000, ge=1024, description="larger request bodies get 413")
    compact_every: int = Field(
        2000,
        ge=1,
        description="fold recent writes into the main index once this many ids are pending",
    )
    snapshot_every: int = Field(
        50_000, ge=1, description="snapshot (and truncate the log) after this many logged writes"
    )
    snapshot_on_shutdown: bool = Field(True, description="snapshot on graceful shutdown")
    fsync: bool = Field(True, description="fsync the write-ahead log before acknowledging")
    log_requests: bool = Field(True, description="one structured log line per request")
