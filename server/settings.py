"""Server settings: command-line flags and ``BINSEARCH_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class Settings(BaseSettings):
    """Everything the service can be told; each field reads ``BINSEARCH_<NAME>``.

    Example: ``BINSEARCH_COLLECTION_DIR=./idx BINSEARCH_API_KEY=s3cret binsearch serve ./idx``.
    """

    model_config = SettingsConfigDict(env_prefix="BINSEARCH_", extra="ignore")

    collection_dir: Path = Field(
        Path("index"),
        # BINSEARCH_INDEX_DIR is the name before the glossary's "collection directory".
        validation_alias=AliasChoices(
            "collection_dir", "BINSEARCH_COLLECTION_DIR", "BINSEARCH_INDEX_DIR"
        ),
        description="collection directory (created if missing)",
    )
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
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body that stops arriving this long gets 408"
    )
    snapshot_every: int = Field(
        50_000, ge=1, description="snapshot (and truncate the log) after this many logged writes"
    )
    snapshot_on_shutdown: bool = Field(True, description="snapshot on graceful shutdown")
    fsync: bool = Field(True, description="fsync the write-ahead log before acknowledging")
    log_requests: bool = Field(True, description="one structured log line per request")
    ray: bool = Field(False, description="serve a sharded collection on Ray (`serve --ray`)")
    ray_address: str = Field(
        "", description="Ray cluster to join: '' starts a local Ray, 'auto' or HOST:PORT joins one"
    )

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, key: SecretStr | None) -> SecretStr | None:
        # A blank key would fail open: an empty header could match it, and the
        # host check would take it for a key. Surrounding whitespace can never
        # arrive in an HTTP header, so it is dropped rather than kept unmatchable.
        if key is None:
            return None
        value = key.get_secret_value().strip()
        if not value:
            raise ValueError(
                "BINSEARCH_API_KEY is blank; set a real key (e.g. `openssl rand -hex 16`) "
                "or unset it"
            )
        return SecretStr(value)

    @model_validator(mode="after")
    def _read_auth_needs_a_key(self) -> Settings:
        if self.read_auth and self.api_key is None:
            raise ValueError(
                "BINSEARCH_READ_AUTH=true needs BINSEARCH_API_KEY: without a key reads would "
                "stay open"
            )
        return self


def settings_error(exc: ValidationError) -> str:
    """One line for a settings error: ``BINSEARCH_BITS: Input should be ...``."""
    parts = []
    for error in exc.errors():
        name = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        variable = f"BINSEARCH_{name.upper()}"
        parts.append(f"{variable}: {message}" if name and variable not in message else message)
    return "; ".join(parts)
