"""Dependencies shared by the routers: the store, and the API-key checks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from server.settings import Settings
from server.store import Store


async def get_store(request: Request) -> Store:
    """The store of this app (one per app, made by the factory).

    Dependencies are ``async def``: FastAPI runs a sync dependency in a worker
    thread, and each such hop costs more than the work itself.
    """
    return request.app.state.store


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _presented_key(request: Request) -> str | None:
    """The key the client sent, or None; a blank header counts as no key."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    presented = request.headers.get("x-api-key", "").strip()
    return presented or None


def _check_key(request: Request, settings: Settings) -> None:
    if settings.api_key is None:
        return
    presented = _presented_key(request)
    expected = settings.api_key.get_secret_value().encode()
    # Fail closed: an empty key (which Settings refuses) must never match an empty header.
    # Constant-time comparison: the time taken must not reveal how much of the key matched.
    if not presented or not expected or not hmac.compare_digest(presented.encode(), expected):
        raise HTTPException(
            401,
            "this route needs the API key: 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_write_key(request: Request, settings: SettingsDep) -> None:
    """Writes and snapshots: the key, whenever one is set."""
    _check_key(request, settings)


async def require_read_key(request: Request, settings: SettingsDep) -> None:
    """Reads: the key only when ``read_auth`` is on."""
    if settings.read_auth:
        _check_key(request, settings)
