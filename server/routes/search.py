"""``POST /search`` and ``POST /search/batch``."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from server.deps import StoreDep, require_read_key
from server.errors import error_responses
from server.models import (
    BatchSearchRequest,
    BatchSearchResponse,
    SearchHit,
    SearchRequest,
    SearchResponse,
    Timings,
)
from server.store import Store, StoreError

router = APIRouter(
    tags=["search"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(400, 401, 413, 422, 503),
)


def answer(store: Store, requests: list[SearchRequest], where: str) -> list[SearchResponse]:
    """Search every request against one consistent state of the index.

    Runs in one worker thread per request (the routes hand it over
    explicitly), so encoding and scanning never block the event loop.
    """
    state = store.state
    dim = store.dim
    vectors = np.empty((len(requests), dim), dtype=np.float32)
    texts = [(i, r.query) for i, r in enumerate(requests) if r.query is not None]
    for i, r in enumerate(requests):
        if r.vector is not None:
            if len(r.vector) != dim:
                raise StoreError(
                    f"{where.format(i=i)}vector has {len(r.vector)} values; this index expects {dim}"
                )
            vectors[i] = r.vector
    encode_ms = 0.0
    if texts:
        started = time.perf_counter()
        vectors[[i for i, _ in texts]] = store.encode([t for _, t in texts])
        encode_ms = (time.perf_counter() - started) * 1e3 / len(texts)
    responses = []
    for i, r in enumerate(requests):
        started = time.perf_counter()
        hits = store.search(vectors[i : i + 1], r.k, r.filter, r.rescore, state=state)[0]
        search_ms = (time.perf_counter() - started) * 1e3
        results = [
            SearchHit(
                id=h.id,
                score=h.score,
                title=h.row.get("title") or None,
                text=h.row.get("text") if r.with_text else None,
            )
            for h in hits
        ]
        own_encode = encode_ms if r.query is not None else 0.0
        timings = Timings(
            encode_ms=round(own_encode, 3),
            search_ms=round(search_ms, 3),
            total_ms=round(own_encode + search_ms, 3),
        )
        responses.append(SearchResponse(results=results, timings=timings))
    return responses


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True)
async def search(body: SearchRequest, store: StoreDep) -> SearchResponse:
    """Top-k documents for a text ``query`` or a ``vector``."""
    return (await run_in_threadpool(answer, store, [body], ""))[0]


@router.post("/search/batch", response_model=BatchSearchResponse, response_model_exclude_none=True)
async def search_batch(body: BatchSearchRequest, store: StoreDep) -> BatchSearchResponse:
    """Many queries in one request (texts are encoded together)."""
    started = time.perf_counter()
    responses = await run_in_threadpool(answer, store, body.queries, "queries[{i}].")
    encode = sum(r.timings.encode_ms for r in responses)
    scan = sum(r.timings.search_ms for r in responses)
    total = (time.perf_counter() - started) * 1e3
    timings = Timings(
        encode_ms=round(encode, 3), search_ms=round(scan, 3), total_ms=round(total, 3)
    )
    return BatchSearchResponse(responses=responses, timings=timings)
