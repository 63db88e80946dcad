"""``POST /documents``, ``GET`` and ``DELETE /documents/{id}``."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path

from server.deps import StoreDep, require_read_key, require_write_key
from server.errors import error_responses
from server.models import (
    ID_PATTERN,
    Deleted,
    DocumentOut,
    DocumentsIn,
    WriteResult,
    id_schema,
    unit_float32,
)
from server.store import CollectionError

router = APIRouter(tags=["documents"], responses=error_responses(400, 401, 413, 422, 503))

PathId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=256,
        pattern=ID_PATTERN,
        examples=["doc-42"],
        json_schema_extra=id_schema,
    ),
]


@router.post("/documents", response_model=WriteResult, dependencies=[Depends(require_write_key)])
def add_documents(body: DocumentsIn, store: StoreDep) -> WriteResult:
    """Add or replace documents; returns after the write is durable (logged and fsynced)."""
    started = time.perf_counter()
    dim = store.dim
    docs = body.documents
    vectors = np.empty((len(docs), dim), dtype=np.float32)
    to_encode = []
    for i, d in enumerate(docs):
        if d.vector is None:
            to_encode.append(i)
        elif len(d.vector) != dim:
            raise CollectionError(
                f"documents[{i}].vector has {len(d.vector)} values; this collection expects {dim}"
            )
        else:
            vectors[i] = unit_float32(d.vector)
    if to_encode:
        # Same text the CLI indexes: title, a space, text.
        texts = [f"{docs[i].title} {docs[i].text}".strip() for i in to_encode]
        vectors[to_encode] = store.encode(texts)
    rows = [{"id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata} for d in docs]
    added, replaced = store.upsert(rows, vectors)
    took = (time.perf_counter() - started) * 1e3
    return WriteResult(
        ids=[d.id for d in docs], added=added, replaced=replaced, took_ms=round(took, 3)
    )


@router.get(
    "/documents/{doc_id}",
    response_model=DocumentOut,
    dependencies=[Depends(require_read_key)],
    responses=error_responses(404),
)
async def get_document(doc_id: PathId, store: StoreDep) -> DocumentOut:
    """A stored document by id."""
    row = store.get(doc_id)
    if row is None:
        raise HTTPException(404, f"no document with id {doc_id!r}")
    return DocumentOut(
        id=row["id"],
        title=row.get("title", ""),
        text=row.get("text", ""),
        metadata=row.get("metadata"),
    )


@router.delete(
    "/documents/{doc_id}",
    response_model=Deleted,
    dependencies=[Depends(require_write_key)],
    responses=error_responses(404),
)
def delete_document(doc_id: PathId, store: StoreDep) -> Deleted:
    """Delete a document; returns after the delete is durable."""
    if not store.delete(doc_id):
        raise HTTPException(404, f"no document with id {doc_id!r}")
    return Deleted(id=doc_id, deleted=True)
