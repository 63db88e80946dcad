"""Test helpers for the service tests (a module of its own: ``conftest`` is not a unique name)."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

FAKE_DIM = 32


class WordHashEncoder:
    """A stand-in for the sentence model: the normalised sum of one fixed random vector per word.

    Texts sharing words get similar vectors, so searches rank like a real model's
    would for these tests, at no model-loading cost.
    """

    name = "word-hash-test-encoder"
    dim = FAKE_DIM

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
                out[i] += np.random.default_rng(seed).standard_normal(self.dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    """Poll ``/ready`` until the background load is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready after {timeout}s: {client.get('/ready').json()}")


@contextmanager
def serve_in_thread(app: FastAPI, timeout: float = 60.0) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on a free loopback port; yields its base URL once ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not (server.started and app.state.store.ready):
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
