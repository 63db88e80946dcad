"""A first start whose encoder still has to be exported: /ready first, text queries once it is."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from server_fakes import FAKE_DIM, WordHashEncoder, wait_ready

from server.app import create_app
from server.settings import Settings


class ExportingEncoder(WordHashEncoder):
    """An encoder whose ONNX export is missing: preparing it blocks until ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def onnx_state(self) -> str:
        return "ready" if self.release.is_set() else "missing"

    @property
    def dim(self) -> int:  # the server's background preparation waits here
        if threading.current_thread().name == "binsearch-encoder-export":
            assert self.release.wait(30)
        return FAKE_DIM

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        assert self.release.wait(30)  # as the real encoder's lock makes text calls wait
        return super().encode(texts, batch_size)


def test_ready_before_the_encoder_export_then_text_queries(tmp_path) -> None:
    encoder = ExportingEncoder()
    with TestClient(create_app(Settings(collection_dir=tmp_path / "i"), encoder=encoder)) as client:
        wait_ready(client)  # ready although the encoder is not
        assert client.get("/ready").json()["model_loaded"] is False
        startup = client.get("/stats").json()["startup"]
        assert startup["encoder_state"] == "preparing" and startup["encoder"] is None
        assert startup["encoder_ready_after_s"] is None
        vector = np.eye(1, FAKE_DIM)[0].tolist()
        r = client.post("/search", json={"vector": vector, "k": 3})
        assert r.status_code == 200, r.text  # vectors are served meanwhile
        encoder.release.set()
        deadline = time.monotonic() + 30
        while client.get("/stats").json()["startup"]["encoder_state"] != "ready":
            assert time.monotonic() < deadline, "the encoder never became ready"
            time.sleep(0.02)
        startup = client.get("/stats").json()["startup"]
        assert startup["encoder_ready_after_s"] >= startup["ready_after_s"] > 0
        assert client.get("/ready").json()["model_loaded"] is True
        docs = [{"id": "a", "text": "heat transfer"}, {"id": "b", "text": "swept wings"}]
        assert client.post("/documents", json={"documents": docs}).status_code == 200
        r = client.post("/search", json={"query": "heat", "k": 1})
        assert r.status_code == 200 and r.json()["results"][0]["id"] == "a"


@pytest.mark.parametrize("state", ["off", "ready"])
def test_an_encoder_ready_at_start_is_ready_with_the_collection(tmp_path, state: str) -> None:
    encoder = WordHashEncoder()
    encoder.onnx_state = lambda: state  # type: ignore[attr-defined]
    with TestClient(create_app(Settings(collection_dir=tmp_path / "i"), encoder=encoder)) as client:
        wait_ready(client)
        assert client.get("/stats").json()["startup"]["encoder_state"] == "ready"
