"""Fixtures for the service tests: a tiny deterministic encoder and an app on a temp index."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from server_fakes import WordHashEncoder, wait_ready

from server.app import create_app
from server.settings import Settings


@pytest.fixture
def encoder() -> WordHashEncoder:
    return WordHashEncoder()


@pytest.fixture
def make_client(tmp_path: Path, encoder: WordHashEncoder) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings)``: a started, ready TestClient over ``tmp_path/index``."""
    opened: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        settings = Settings(collection_dir=tmp_path / "index", **overrides)
        client = TestClient(create_app(settings, encoder=encoder))
        client.__enter__()
        opened.append(client)
        wait_ready(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
