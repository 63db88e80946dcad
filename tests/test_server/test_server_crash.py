"""A real server process killed with SIGKILL mid-stream of writes loses no acknowledged write."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np

from binsearch.encoder import DEFAULT_MODEL
from server.settings import Settings
from server.store import CURRENT, Store

DIM = 384
BATCH = 3


class NamedStub:
    """Creates the empty index under the real model's name without loading the model."""

    name = DEFAULT_MODEL
    dim = DIM

    def encode(self, texts, batch_size=64):  # pragma: no cover - never called
        raise AssertionError("vectors only")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "BINSEARCH_WARM_MODEL": "false",  # vector writes only: the model is never needed
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-m", "binsearch.cli", "serve", str(index_dir), "--port", str(port)]
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited during start-up"
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not ready after {timeout}s")


def vector_of(doc_id: str) -> list[float]:
    seed = zlib.crc32(doc_id.encode())
    return np.random.default_rng(seed).standard_normal(DIM).tolist()


def test_sigkill_mid_writes_keeps_every_acknowledged_write(tmp_path):
    index_dir = tmp_path / "index"
    store = Store(Settings(index_dir=index_dir), encoder=NamedStub())
    store.load()  # writes the empty index (manifest names the default model)
    store.close(snapshot=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    proc = start_server(index_dir, port, log)
    try:
        wait_ready(url, proc)
        acked: list[list[str]] = []
        issued: list[list[str]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(name: str) -> None:
            with httpx.Client(base_url=url, timeout=10) as client:
                for b in range(10_000):  # bounded; stops at the kill
                    if stop.is_set():
                        return
                    ids = [f"{name}-{b}-{j}" for j in range(BATCH)]
                    docs = [{"id": i, "title": i, "vector": vector_of(i)} for i in ids]
                    with lock:
                        issued.append(ids)
                    try:
                        r = client.post("/documents", json={"documents": docs})
                    except httpx.TransportError:
                        return  # the server died with this write in flight
                    assert r.status_code == 200, r.text
                    with lock:
                        acked.append(ids)

        threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-stream: the writers are still sending
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(15)
        assert len(acked) >= 20, f"only {len(acked)} writes acknowledged before the kill"

        proc = start_server(index_dir, port, log)
        wait_ready(url, proc)
        with httpx.Client(base_url=url, timeout=30) as client:
            for ids in acked:
                for i in ids:
                    assert client.get(f"/documents/{i}").status_code == 200, f"lost {i}"
            for ids in acked[:: max(1, len(acked) // 15)]:  # searchable, by its own vector
                top = client.post("/search", json={"vector": vector_of(ids[0]), "k": 1})
                assert top.json()["results"][0]["id"] == ids[0]
            present = {
                i for ids in issued for i in ids if client.get(f"/documents/{i}").status_code == 200
            }
            for ids in issued:  # a batch is all there or not at all
                assert len(set(ids) & present) in (0, BATCH), ids
            count = client.get("/stats").json()["documents"]
            assert count == len(present)
        # A graceful stop snapshots: the log is folded into a new generation.
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown, hence -SIGTERM.
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert json.loads((index_dir / CURRENT).read_text())["generation"] >= 1
        assert sum(p.stat().st_size for p in (index_dir / "wal").glob("*.log")) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "request" and e.get("route") == "/documents" for e in events)
    assert any(e.get("event") == "snapshot" for e in events)
    assert events[-1]["event"] == "stopped"
