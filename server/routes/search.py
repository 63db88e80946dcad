"""``POST /search`` and ``POST /search/batch``."""

from __future__ import annotations

import time

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Response
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
    unit_float32,
)
from server.store import CollectionError, Store

JSON = "application/json"

router = APIRouter(
    tags=["search"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(400, 401, 413, 422, 503),
)


def answer_many(store: Store, requests: list[SearchRequest], where: str) -> list[SearchResponse]:
    """Search every request; runs in a worker thread, never on the event loop.

    Every query is answered from the one state taken at the start, so a batch
    sees a single version of the index. Encoding is shared with concurrent
    requests' texts. ``where`` prefixes error messages (``"queries[{i}]."``).
    """
    state = store.state
    dim = store.dim
    vectors = np.empty((len(requests), dim), dtype=np.float32)
    texts = [(i, r.query) for i, r in enumerate(requests) if r.query is not None]
    for i, r in enumerate(requests):
        if r.vector is not None:
            if len(r.vector) != dim:
                raise CollectionError(
                    f"{where.format(i=i)}vector has {len(r.vector)} values; this collection expects {dim}"
                )
            vectors[i] = unit_float32(r.vector)
    encode_ms = encode_wait_ms = 0.0
    if texts:
        encoded = store.encode_timed([t for _, t in texts])
        vectors[[i for i, _ in texts]] = encoded.result
        encode_ms, encode_wait_ms = encoded.run_ms, encoded.wait_ms
    responses = []
    for i, r in enumerate(requests):
        started = time.perf_counter()
        hits = store.search(vectors[i : i + 1], r.k, r.filter, r.rescore, state=state)[0]
        search_ms, scan_wait_ms = (time.perf_counter() - started) * 1e3, 0.0
        results = [
            SearchHit(
                id=h.id,
                score=h.score,
                title=h.row.get("title") or None,
                text=h.row.get("text") if r.with_text else None,
            )
            for h in hits
        ]
        own_encode, own_wait = (encode_ms, encode_wait_ms) if r.query is not None else (0.0, 0.0)
        queue_ms = own_wait + scan_wait_ms
        timings = Timings(
            encode_ms=round(own_encode, 3),
            search_ms=round(search_ms, 3),
            queue_ms=round(queue_ms, 3),
            total_ms=round(own_encode + search_ms + queue_ms, 3),
        )
        responses.append(SearchResponse(results=results, timings=timings))
    return responses


async def answer_coalesced(store: Store, r: SearchRequest) -> Response:
    """One plain query (no filter, no rescoring), answered on the event loop.

    The encoder call and the scan are shared with concurrent requests
    (:mod:`server.batching`); awaiting them holds no thread of the pool, and
    the response is written as JSON bytes directly (the same fields and
    values :class:`SearchResponse` gives, without validating it again).
    """
    encode_ms = encode_wait_ms = 0.0
    if r.vector is not None:
        dim = store.dim
        if len(r.vector) != dim:
            raise CollectionError(
                f"vector has {len(r.vector)} values; this collection expects {dim}"
            )
        vector = unit_float32(r.vector)
    else:
        encoded = await store.encode_async([r.query])
        vector = encoded.result[0]
        encode_ms, encode_wait_ms = encoded.run_ms, encoded.wait_ms
    scanned = await store.scan_coalesced(vector, r.k)
    results = []
    for h in scanned.result:
        hit: dict[str, object] = {"id": h.id, "score": h.score}
        title = h.row.get("title") or None
        if title is not None:
            hit["title"] = title
        text = h.row.get("text") if r.with_text else None
        if text is not None:
            hit["text"] = text
        results.append(hit)
    queue_ms = encode_wait_ms + scanned.wait_ms
    timings = {
        "encode_ms": round(encode_ms, 3),
        "search_ms": round(scanned.run_ms, 3),
        "queue_ms": round(queue_ms, 3),
        "total_ms": round(encode_ms + scanned.run_ms + queue_ms, 3),
    }
    return Response(orjson.dumps({"results": results, "timings": timings}), media_type=JSON)


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True)
async def search(body: SearchRequest, store: StoreDep) -> SearchResponse | Response:
    """Top-k documents for a text ``query`` or a ``vector``."""
    if body.filter is None and not body.rescore:
        return await answer_coalesced(store, body)
    return (await run_in_threadpool(answer_many, store, [body], ""))[0]


@router.post("/search/batch", response_model=BatchSearchResponse, response_model_exclude_none=True)
async def search_batch(body: BatchSearchRequest, store: StoreDep) -> BatchSearchResponse:
    """Many queries in one request (texts are encoded together)."""
    started = time.perf_counter()
    responses = await run_in_threadpool(answer_many, store, body.queries, "queries[{i}].")
    # The texts of a batch are encoded in one call: count that call once.
    encode = max((r.timings.encode_ms for r in responses), default=0.0)
    scan = sum(r.timings.search_ms for r in responses)
    queue = max((r.timings.queue_ms for r in responses), default=0.0)
    total = (time.perf_counter() - started) * 1e3
    timings = Timings(
        encode_ms=round(encode, 3),
        search_ms=round(scan, 3),
        queue_ms=round(queue, 3),
        total_ms=round(total, 3),
    )
    return BatchSearchResponse(responses=responses, timings=timings)
