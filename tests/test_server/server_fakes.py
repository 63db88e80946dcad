"""Test helpers for the service tests (a module of its own: ``conftest`` is not a unique name)."""

from __future__ import annotations

import hashlib
import time

import numpy as np
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
