"""Real ``binsearch serve`` processes for the crash and reliability tests.

``ServerProcess(dir, log)`` starts ``python -m binsearch.cli serve DIR --port P``
(vectors only unless told otherwise: ``BINSEARCH_WARM_MODEL=false``), waits
for ``/ready``, and is killed with SIGKILL or stopped with SIGTERM. A
``Ledger`` remembers which writes were sent and which were acknowledged, and
:func:`verify` checks a restarted server against it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

DIM = 384
BATCH = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vector_of(doc_id: str) -> list[float]:
    """A fixed random 384-d vector per id: a document is found by its own vector."""
    seed = zlib.crc32(doc_id.encode())
    return np.random.default_rng(seed).standard_normal(DIM).tolist()


def text_of(doc_id: str) -> str:
    return f"the text of {doc_id}"


def documents(ids: list[str]) -> dict:
    return {"documents": [{"id": i, "text": text_of(i), "vector": vector_of(i)} for i in ids]}


class ServerProcess:
    """One ``binsearch serve`` process at a time over ``directory``, on one port."""

    def __init__(self, directory: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "BINSEARCH_WARM_MODEL": "false",  # vector writes only: the model is never needed
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, stderr: Path | None = None) -> ServerProcess:
        cmd = [sys.executable, "-m", "binsearch.cli", "serve", str(self.directory)]
        out = self.log.open("ab")
        err = stderr.open("wb") if stderr is not None else subprocess.STDOUT
        self.proc = subprocess.Popen(
            [*cmd, "--port", str(self.port)], env=self.env, stdout=out, stderr=err
        )
        return self

    def wait_ready(self, timeout: float = 180) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            assert code is None, f"the server exited with {code} during start-up: {self.tail()}"
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s: {self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut of the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> int:
        """SIGTERM and wait: uvicorn's graceful shutdown (the store snapshots)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


@dataclass
class Ledger:
    """What clients sent and what the server acknowledged (thread-safe)."""

    issued: list[list[str]] = field(default_factory=list)
    acked: list[list[str]] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)  # acknowledged deletes
    deleting: set[str] = field(default_factory=set)  # deletes sent, answer unknown
    lock: threading.Lock = field(default_factory=threading.Lock)

    def live_acked(self) -> list[str]:
        with self.lock:
            return [i for ids in self.acked for i in ids if i not in self.deleted | self.deleting]


def writer(url: str, name: str, ledger: Ledger, stop: threading.Event) -> None:
    """POST batches of 3 new documents until ``stop`` or the server dies."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for b in range(100_000):
            if stop.is_set():
                return
            ids = [f"{name}-{b}-{j}" for j in range(BATCH)]
            with ledger.lock:
                ledger.issued.append(ids)
            try:
                r = client.post("/documents", json=documents(ids))
            except httpx.TransportError:
                return  # the server died with this write in flight
            assert r.status_code == 200, r.text
            with ledger.lock:
                ledger.acked.append(ids)


def verify(url: str, ledger: Ledger) -> int:
    """Check a (restarted) server against the ledger; returns the acknowledged writes checked.

    Every acknowledged, undeleted id is there with its own text and is the top
    hit of its own vector; every acknowledged delete is gone; every batch sent
    is all there or all absent; ``/stats`` counts exactly the documents present.
    """
    checked = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        present = set()
        for ids in ledger.issued:
            for i in ids:
                r = client.get(f"/documents/{i}")
                assert r.status_code in (200, 404), r.text
                if r.status_code == 200:
                    assert r.json()["text"] == text_of(i), r.text
                    present.add(i)
        for ids in ledger.issued:  # a batch is all there or not at all
            there = set(ids) & present
            if not set(ids) & (ledger.deleted | ledger.deleting):
                assert len(there) in (0, BATCH), f"half a batch: {sorted(there)}"
        for i in ledger.live_acked():
            assert i in present, f"lost acknowledged write {i}"
            checked += 1
        for i in ledger.deleted:
            assert i not in present, f"acknowledged delete of {i} undone"
            checked += 1
        live = ledger.live_acked()
        for start in range(0, len(live), 64):
            chunk = live[start : start + 64]
            body = {"queries": [{"vector": vector_of(i), "k": 1} for i in chunk]}
            r = client.post("/search/batch", json=body)
            assert r.status_code == 200, r.text
            tops = [resp["results"][0]["id"] for resp in r.json()["responses"]]
            assert tops == chunk, "a document is not the top hit of its own vector"
        assert client.get("/stats").json()["documents"] == len(present)
    return checked


def crash_image(src: Path, dst: Path) -> Path:
    """Copy of a collection directory as left on disk (without the lock and SQLite's -shm)."""
    for file in src.rglob("*"):
        if file.is_file() and file.name not in ("collection.lock", "documents.db-shm"):
            target = dst / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    return dst
