"""The app factory: ``create_app(settings)`` builds one service over one collection directory.

Run it with ``binsearch serve DIR`` or ``uvicorn --factory server.app:create_app``
(settings then come from ``BINSEARCH_*`` variables).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from binsearch.distributed.errors import ShardUnavailable
from server.errors import BodySizeLimit, error_response, install_error_handlers
from server.logs import RequestLog, configure_logging
from server.routes import documents, ops, search
from server.settings import Settings
from server.store import DiskFull, Store, StoreCorruption, TextEncoder

log = logging.getLogger("binsearch.server")

# The scan kernels run on OpenMP threads, which by default spin for a while
# after each parallel region. In a server those spinning threads steal the
# cores from the event loop, the encoder and other requests
# (results/serve/notes.md has the measurement).
# Only effective before the OpenMP runtime starts, i.e. before the first scan.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DESCRIPTION = """Semantic search over binary codes of sentence embeddings.

Search with text or a vector; add, fetch and delete documents. A write returns
only once it is in the fsynced write-ahead log. With `BINSEARCH_API_KEY` set,
writes and snapshots need `Authorization: Bearer <key>` or `X-API-Key: <key>`.
"""


def create_app(
    settings: Settings | None = None,
    *,
    encoder: TextEncoder | None = None,
    exit_on_load_failure: bool | None = None,
) -> FastAPI:
    """Build the app. ``settings`` default to the environment; ``encoder`` to the index's model.

    The collection loads in a worker thread after start-up, so ``/health``
    answers at once and ``/ready`` turns 200 once a write can be served (the
    collection open and its model loaded); every other route answers 503 until
    then. A collection that cannot be loaded ends the process with exit status
    2 and its one-line error, so a supervisor sees it (``exit_on_load_failure``;
    default: yes when the settings come from the environment, as under uvicorn).
    """
    if exit_on_load_failure is None:
        exit_on_load_failure = settings is None
    settings = settings or Settings()
    store = Store(settings, encoder)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging()
        log.info(
            json.dumps(
                {
                    "event": "starting",
                    "collection_dir": str(settings.collection_dir),
                    "api_key": settings.api_key is not None,
                    "read_auth": settings.read_auth,
                }
            )
        )
        loading = asyncio.create_task(asyncio.to_thread(_load, store, exit_on_load_failure))
        app.state.loading = loading
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a failed load was logged already
                await loading
            await asyncio.to_thread(store.close)
            log.info(json.dumps({"event": "stopped"}))

    app = FastAPI(
        title="binsearch",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    install_error_handlers(app)
    app.add_exception_handler(DiskFull, _insufficient_storage)
    app.add_exception_handler(StoreCorruption, _damaged)
    app.add_exception_handler(ShardUnavailable, _shard_unavailable)
    app.include_router(search.router)
    app.include_router(documents.router)
    app.include_router(ops.router)
    # Outermost first: the size limit guards everything, the log sees every answer.
    app.add_middleware(
        BodySizeLimit, limit=settings.max_body_bytes, read_timeout=settings.body_timeout_s
    )
    if settings.log_requests:
        app.add_middleware(RequestLog)
    return app


def _load(store: Store, exit_on_failure: bool) -> None:
    try:
        store.load()
    except Exception as exc:
        if not exit_on_failure:
            raise
        # Half-alive (healthy, never ready) helps nobody: exit for the supervisor.
        print(f"error: {store.load_error or exc}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(2)


async def _insufficient_storage(request: Request, exc: Exception) -> JSONResponse:
    return error_response(507, str(exc), headers={"Retry-After": "60"})


async def _damaged(request: Request, exc: Exception) -> JSONResponse:
    # Never served as if it were the document: a clear 500 naming the damage.
    log.error(json.dumps({"event": "damaged_store", "error": str(exc)}))
    return error_response(500, f"the collection's stored data is damaged: {exc}")


async def _shard_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # Never a silently short top-k: the caller retries once Ray restarted the shard.
    return error_response(503, str(exc), headers={"Retry-After": "1"})
