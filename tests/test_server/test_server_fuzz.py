"""Schemathesis over the whole OpenAPI schema: no 5xx, every response as the schema says.

The app runs under a real uvicorn server on a loopback port in a thread; the
schema is the app's own OpenAPI document. Bounded: 30 examples per operation.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_fakes import WordHashEncoder

from server.app import create_app
from server.settings import Settings

# Building the app touches no disk; only its schema is needed at collection time.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(index_dir=Path("unused")), encoder=WordHashEncoder()).openapi()
)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    app = create_app(
        Settings(index_dir=tmp_path_factory.mktemp("fuzz") / "index", fsync=False),
        encoder=WordHashEncoder(),
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and app.state.store.ready):
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


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
