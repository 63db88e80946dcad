"""Schemathesis over the whole OpenAPI schema: no 5xx, every response as the schema says.

The app runs under a real uvicorn server on a loopback port in a thread; the
schema is the app's own OpenAPI document. Bounded: 30 examples per operation.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_fakes import FAKE_DIM, WordHashEncoder, serve_in_thread

from server.app import create_app
from server.settings import Settings

# Building the app touches no disk; only its schema is needed at collection time.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(collection_dir=Path("unused")), encoder=WordHashEncoder()).openapi()
)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    app = create_app(
        Settings(collection_dir=tmp_path_factory.mktemp("fuzz") / "index", fsync=False),
        encoder=WordHashEncoder(),
    )
    with serve_in_thread(app) as url:
        _warm_up(url)
        yield url


def _warm_up(url: str) -> None:
    """One of each kind of call with a long timeout, before schemathesis' 10 s ones.

    The first write and searches compile numba kernels when the on-disk cache
    is cold (a fresh checkout, a changed kernel): over 10 s on a busy machine.
    """
    with httpx.Client(base_url=url, timeout=300) as client:
        doc = {"documents": [{"id": "warm-up", "text": "flutter of swept wings"}]}
        assert client.post("/documents", json=doc).status_code == 200
        for body in ({"query": "wings"}, {"vector": [0.1] * FAKE_DIM, "rescore": True}):
            assert client.post("/search", json=body).status_code == 200
        assert (
            client.post("/search", json={"query": "wings", "filter": ["warm-up"]}).status_code
            == 200
        )
        assert client.post("/snapshot").status_code == 200
        assert client.delete("/documents/warm-up").status_code == 200


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, base_url):
    case.call_and_validate(
        base_url=base_url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
