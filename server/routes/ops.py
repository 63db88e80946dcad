"""Operations: ``/health``, ``/ready``, ``/stats``, ``/snapshot`` and the search page ``/``."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, JSONResponse

from server.deps import StoreDep, require_read_key, require_write_key
from server.errors import error_responses, without_paths
from server.ops_models import Health, Ready, SnapshotResult, Stats

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: answers from the event loop, whatever the workers are doing."""
    return Health(status="ok")


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}})
async def ready(store: StoreDep) -> Ready | JSONResponse:
    """Readiness: 200 once the index is loaded, 503 before (or if loading failed)."""
    if not store.ready:
        error = store.load_error and without_paths(store.load_error)
        body = Ready(ready=False, model_loaded=store.model_ready, error=error)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
    # model_loaded: false while a first start prepares the text encoder after /ready.
    loaded = store.model_ready and store.encoder_state != "preparing"
    return Ready(ready=True, documents=len(store.state), model_loaded=loaded)


@router.get(
    "/stats",
    response_model=Stats,
    dependencies=[Depends(require_read_key)],
    responses=error_responses(401, 503),
)
def stats(store: StoreDep) -> Stats:
    """Documents, bits per vector, codec, model, bytes, queries served."""
    return Stats(**store.stats())


@router.post(
    "/snapshot",
    response_model=SnapshotResult,
    dependencies=[Depends(require_write_key)],
    responses=error_responses(401, 503),
)
def snapshot(store: StoreDep) -> SnapshotResult:
    """Write a consistent snapshot now and truncate the write-ahead log."""
    return SnapshotResult(**store.snapshot())


@cache
def _page() -> str:
    return resources.files("server").joinpath("static/search.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The search page: plain HTML and JavaScript calling ``POST /search``."""
    return HTMLResponse(_page())
