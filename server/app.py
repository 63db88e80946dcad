"""The app factory: ``create_app(settings)`` builds one service over one index directory.

Run it with ``binsearch serve DIR`` or ``uvicorn --factory server.app:create_app``
(settings then come from ``BINSEARCH_*`` variables).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI

from server.errors import BodySizeLimit, install_error_handlers
from server.logs import RequestLog, configure_logging
from server.routes import documents, ops, search
from server.settings import Settings
from server.store import Store, TextEncoder

log = logging.getLogger("binsearch.server")

# The scan kernels run on OpenMP threads, which by default spin for a while
# after each parallel region. In a server those spinning threads steal the
# cores from the event loop, the encoder and other requests (measured: a 20k
# scan went from 12 ms to 0.5 ms on a busy 2-core machine with passive waits).
# Only effective before the OpenMP runtime starts, i.e. before the first scan.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DESCRIPTION = """Semantic search over binary codes of sentence embeddings.

Search with text or a vector; add, fetch and delete documents. A write returns
only once it is in the fsynced write-ahead log. With `BINSEARCH_API_KEY` set,
writes and snapshots need `Authorization: Bearer <key>` or `X-API-Key: <key>`.
"""


def create_app(settings: Settings | None = None, *, encoder: TextEncoder | None = None) -> FastAPI:
    """Build the app. ``settings`` default to the environment; ``encoder`` to the index's model.

    The index loads in a worker thread after start-up, so ``/health`` answers at
    once and ``/ready`` turns 200 when the index is in memory.
    """
    settings = settings or Settings()
    store = Store(settings, encoder)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging()
        log.info(
            json.dumps(
                {
                    "event": "starting",
                    "index_dir": str(settings.index_dir),
                    "api_key": settings.api_key is not None,
                    "read_auth": settings.read_auth,
                }
            )
        )
        loading = asyncio.create_task(asyncio.to_thread(store.load))
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
    app.include_router(search.router)
    app.include_router(documents.router)
    app.include_router(ops.router)
    # Outermost first: the size limit guards everything, the log sees every answer.
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    if settings.log_requests:
        app.add_middleware(RequestLog)
    return app
