"""Reliability of a real server: start-up under load, a full disk, damaged directories, readiness.

* Routes hammered while the collection and its model load answer 503 with
  ``Retry-After`` (never 500), and the directory is intact afterwards.
* On a full disk (a 20 MB tmpfs) writes and snapshots get 507 and leave
  nothing behind; once space is free, writes work again without a restart,
  and a SIGKILL + restart keeps exactly the acknowledged ones.
* A directory that cannot load makes ``binsearch serve`` exit with status 2
  and one line on stderr; in-process, every route says 503 without paths.
* ``/ready`` is never 200 before the model is loaded (warm_model on); with
  warm_model off the first text query's ``encode_ms`` includes the load.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from server_fakes import FAKE_DIM, WordHashEncoder, wait_ready
from server_procs import DIM, ServerProcess, documents, text_of, vector_of

import binsearch.encoder.model
from binsearch import Collection
from binsearch.encoder.model import DEFAULT_MODEL
from server.app import create_app
from server.settings import Settings


def model_collection(path: Path, n: int = 20) -> list[str]:
    """A collection under the real model's name, filled with vectors (no model load)."""
    ids = [f"doc-{i}" for i in range(n)]
    with Collection.create(path, "residual", 2, model=DEFAULT_MODEL) as c:
        c.add(
            ids, embeddings=np.array([vector_of(i) for i in ids]), texts=[text_of(i) for i in ids]
        )
    return ids


def stored(path: Path) -> dict[str, str]:
    with Collection.open(path) as c:
        assert c.check()["ok"]
        keys = c.store.all_keys()
        return {row["id"]: row["text"] for row in c.store.rows(keys).values()}


# ---------------------------------------------------------------- item 1: start-up


def test_routes_hammered_during_start_up_get_503_until_ready(tmp_path):
    directory = tmp_path / "c"
    model_collection(directory)
    before = stored(directory)
    vector = vector_of("doc-0")
    routes = [
        ("GET", "/ready", None),
        ("GET", "/stats", None),
        ("GET", "/documents/doc-0", None),
        ("DELETE", "/documents/never-stored", None),
        ("POST", "/search", {"vector": vector, "k": 3}),
        ("POST", "/search", {"query": "the text of doc", "k": 3}),
        ("POST", "/search/batch", {"queries": [{"vector": vector, "k": 2}]}),
        ("POST", "/documents", documents(["doc-0"])),  # the same document again: count unchanged
        ("POST", "/snapshot", None),
    ]
    # The real model loads in the server (warm_model on): seconds of start-up.
    server = ServerProcess(directory, tmp_path / "server.log", env={"BINSEARCH_WARM_MODEL": "true"})
    answers: list[tuple[float, float, str, int, str | None]] = []
    lock, stop = threading.Lock(), threading.Event()

    def hammer(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            i = n
            while not stop.is_set():
                method, route, body = routes[i % len(routes)]
                i += 1
                sent = time.monotonic()
                try:
                    r = client.request(method, route, json=body)
                except httpx.TransportError:
                    time.sleep(0.02)  # not listening yet
                    continue
                with lock:
                    answers.append(
                        (sent, time.monotonic(), route, r.status_code, r.headers.get("retry-after"))
                    )
                time.sleep(0.01)  # leave the loading server some CPU (2 cores)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(16)]
    server.start()
    try:
        for t in threads:
            t.start()
        server.wait_ready()
        ready_at = time.monotonic()
        time.sleep(1.0)  # and a while after
        stop.set()
        for t in threads:
            t.join(60)
        assert server.stop() in (0, -15)
    finally:
        stop.set()
        server.kill()
    assert not [a for a in answers if a[3] >= 500 and a[3] != 503], "a 5xx other than 503"
    early = [a for a in answers if a[3] == 503]
    assert {a[2] for a in early} >= {"/snapshot", "/documents", "/search", "/stats"}, early[:5]
    assert all(a[4] is not None for a in early if a[2] != "/ready"), "503 without Retry-After"
    # Ready never goes back: nothing sent after the first 200 of /ready was refused.
    first_ready = min([ready_at] + [a[1] for a in answers if a[2] == "/ready" and a[3] == 200])
    assert not [a for a in early if a[0] > first_ready]
    late = {(a[2], a[3]) for a in answers if a[0] > first_ready}
    assert ("/snapshot", 200) in late and ("/documents", 200) in late
    assert stored(directory) == before  # nothing lost, nothing added
    print(f"\nstart-up hammer: {len(early)} answers 503 before ready, {len(answers)} in all")


# ---------------------------------------------------------------- items 2 and 3: full disk


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def fill(disk: Path) -> Path:
    """Fill the filesystem to the last byte with one file; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_gives_507_leaves_nothing_and_recovers_without_restart(small_disk, tmp_path):
    directory = small_disk / "c"
    Collection.create(directory, "residual", 2, model=None, dim=DIM).close()
    server = ServerProcess(directory, tmp_path / "server.log")
    server.start()
    big = "x" * 40_000  # 3 such documents per write: the log must grow
    ok: list[list[str]] = []
    failed: list[list[str]] = []
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as client:

            def write(name: str) -> int:
                ids = [f"{name}-{j}" for j in range(3)]
                body = documents(ids)
                for d in body["documents"]:
                    d["text"] += big
                r = client.post("/documents", json=body)
                assert r.status_code in (200, 507), r.text
                (ok if r.status_code == 200 else failed).append(ids)
                if r.status_code == 507:
                    assert "disk is full" in r.json()["error"]["message"]
                    assert r.headers.get("retry-after")
                return r.status_code

            for b in range(3):
                assert write(f"before{b}") == 200
            filler = fill(small_disk)
            for b in range(40):
                if write(f"full{b}") == 507 and len(failed) >= 3:
                    break
            assert len(failed) >= 3, "the disk never filled up"
            r = client.post("/snapshot")
            assert r.status_code == 507 and "disk is full" in r.text, r.text
            for ids in failed:  # nothing of a failed write is visible
                assert all(client.get(f"/documents/{i}").status_code == 404 for i in ids)
            filler.unlink()  # space again: no restart needed
            for b in range(3):
                assert write(f"after{b}") == 200
            assert client.post("/snapshot").status_code == 200
            assert write("last") == 200
        server.kill()
        assert not [p.name for p in (directory / "index").iterdir() if p.name.endswith(".tmp")]
        server.start().wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for ids in ok:
                for i in ids:
                    r = client.get(f"/documents/{i}")
                    assert r.status_code == 200 and r.json()["text"] == text_of(i) + big
            for ids in failed:
                assert all(client.get(f"/documents/{i}").status_code == 404 for i in ids)
            assert client.get("/stats").json()["documents"] == 3 * len(ok)
    finally:
        server.kill()
    with Collection.open(directory) as c:
        assert c.check() == {"documents": 3 * len(ok), "ok": True}


# ---------------------------------------------------------------- item 7 (and 4-6 as served)


def damage(directory: Path, how: str) -> None:
    """Damage a closed collection directory in one of the ways a server must refuse."""
    if how == "no collection.json":
        (directory / "collection.json").unlink()
    elif how == "no index manifest":
        (directory / "index" / "manifest.json").unlink()
    elif how == "damaged segment":
        (segment,) = (directory / "index").glob("codes.*.npy")
        with open(segment, "r+b") as f:
            f.truncate(segment.stat().st_size - 8)
    elif how == "flipped byte mid-WAL":
        wal = directory / "documents.db-wal"
        data = bytearray(wal.read_bytes())
        page = struct.unpack(">I", data[8:12])[0]
        frames = (len(data) - 32) // (24 + page)
        data[32 + (frames // 2) * (24 + page) + 24 + 7] ^= 0x10
        wal.write_bytes(bytes(data))
    else:  # pragma: no cover
        raise AssertionError(how)


def damaged_collection(root: Path, how: str, dim: int) -> Path:
    """A collection of 8 single-document commits, crashed (WAL kept) and then damaged."""
    live = Collection.create(root / "live", "residual", 2, model=None, dim=dim)
    rng = np.random.default_rng(0)
    for i in range(8):
        live.add([f"d{i}"], embeddings=rng.standard_normal((1, dim)), texts=[f"text {i}"])
        if i == 3:
            live.snapshot()  # a segment file on disk
    directory = root / "c"
    shutil.copytree(live.path, directory, ignore=shutil.ignore_patterns("*.lock", "*-shm"))
    live.close(snapshot=False)
    damage(directory, how)
    return directory


def names(directory: Path) -> list[str]:
    """Files of a collection, but those SQLite and the lock make or fold away on their own."""
    skip = ("collection.lock", "documents.db-wal", "documents.db-shm")
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.name not in skip)


@pytest.mark.parametrize("how", ["no index manifest", "flipped byte mid-WAL"])
def test_serve_exits_2_with_one_line_on_a_directory_it_cannot_load(tmp_path, how):
    directory = damaged_collection(tmp_path, how, DIM)
    files = names(directory)
    server = ServerProcess(directory, tmp_path / "server.log")
    server.start(stderr=tmp_path / "stderr.txt")
    try:
        assert server.proc.wait(120) == 2
    finally:
        server.kill()
    # stderr: the JSON log lines, and one plain line saying why.
    lines = [line for line in (tmp_path / "stderr.txt").read_text().splitlines() if line]
    plain = [line for line in lines if not line.startswith("{")]
    assert len(plain) == 1 and plain[0].startswith("error: "), lines
    assert plain[0] == lines[-1] and str(tmp_path) not in plain[0]
    assert "Traceback" not in server.tail()
    assert names(directory) == files  # never an empty collection made in its place


@pytest.mark.parametrize(
    "how", ["no collection.json", "no index manifest", "damaged segment", "flipped byte mid-WAL"]
)
def test_a_directory_that_cannot_load_answers_503_without_paths(tmp_path, how):
    directory = damaged_collection(tmp_path, how, FAKE_DIM)
    settings = Settings(collection_dir=directory)
    app = create_app(settings, encoder=WordHashEncoder(), exit_on_load_failure=False)
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while app.state.store.load_error is None:
            assert time.monotonic() < deadline, "the load neither failed nor finished"
            time.sleep(0.02)
        answers = [
            client.get("/ready"),
            client.get("/stats"),
            client.get("/documents/d0"),
            client.post("/search", json={"vector": [0.1] * FAKE_DIM}),
            client.post("/documents", json={"documents": [{"id": "x", "text": "a"}]}),
            client.post("/snapshot"),
        ]
    for r in answers:
        assert r.status_code == 503, r.text
        assert str(tmp_path) not in r.text and "/tmp" not in r.text, r.text
    message = answers[0].json()["error"]
    assert message.startswith("cannot open the index") and "\n" not in message
    assert all(r.headers.get("retry-after") for r in answers[1:])


def test_a_damaged_row_is_never_served(tmp_path):
    settings = Settings(collection_dir=tmp_path / "index")
    docs = [{"id": f"d{i}", "text": f"plain text number {i}"} for i in range(20)]
    docs.append({"id": "z", "text": "the quick zebra"})
    with TestClient(create_app(settings, encoder=WordHashEncoder())) as client:
        wait_ready(client)
        assert client.post("/documents", json={"documents": docs}).status_code == 200
    # The graceful stop snapshotted and checkpointed: the rows are in the file.
    db = tmp_path / "index" / "documents.db"
    data = db.read_bytes()
    assert data.count(b"quick zebra") == 1
    db.write_bytes(data.replace(b"quick zebra", b"quick zebrb"))
    with TestClient(create_app(settings, encoder=WordHashEncoder())) as client:
        deadline = time.monotonic() + 30
        while not client.app.state.store.ready and client.app.state.store.load_error is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        answers = [
            client.get("/documents/z"),
            client.post("/search", json={"query": "quick zebra", "k": 3, "with_text": True}),
        ]
        if client.app.state.store.ready:  # the start-up's warm-up scan missed the row
            assert client.get("/documents/d1").json()["text"] == "plain text number 1"
            assert all(r.status_code == 500 for r in answers)
        else:  # or it read the row and refused to serve at all
            assert "checksum" in client.get("/ready").json()["error"]
            assert all(r.status_code == 503 for r in answers)
    assert all("zebr" not in r.text for r in answers), answers


# ---------------------------------------------------------------- item 11: the model


@pytest.fixture
def model_loads(monkeypatch) -> list[tuple[float, float]]:
    """Record (start, end) of every model load: the torch model or the ONNX Runtime one.

    The encoder may serve small calls from ONNX Runtime without loading torch
    (``binsearch.encoder``); either load makes it able to encode.
    """
    loads: list[tuple[float, float]] = []
    Encoder = binsearch.encoder.Encoder
    torch_model, onnx_encoder = Encoder.model, getattr(Encoder, "onnx_encoder", None)

    def model(self):
        if self._model is not None:
            return self._model
        started = time.monotonic()
        loaded = torch_model.fget(self)
        loads.append((started, time.monotonic()))
        return loaded

    def onnx(self):
        if self._onnx is not None or self._onnx_off:
            return onnx_encoder(self)
        started = time.monotonic()
        loaded = onnx_encoder(self)
        if loaded is not None:
            loads.append((started, time.monotonic()))
        return loaded

    monkeypatch.setattr(Encoder, "model", property(model))
    if onnx_encoder is not None:
        monkeypatch.setattr(Encoder, "onnx_encoder", onnx)
    return loads


def test_ready_waits_for_the_model_and_without_warm_up_the_first_query_pays(tmp_path, model_loads):
    directory = tmp_path / "c"
    model_collection(directory, n=5)
    # The encoder's export on disk, as `binsearch index` leaves it (a machine's very
    # first start exports it after /ready instead: test_server_first_start.py).
    binsearch.encoder.Encoder().onnx_encoder()
    # warm_model on: /ready is polled while the real model loads.
    app = create_app(Settings(collection_dir=directory, warm_model=True))
    polls: list[tuple[float, int]] = []
    with TestClient(app) as client:
        deadline = time.monotonic() + 180
        while not polls or polls[-1][1] != 200:
            assert time.monotonic() < deadline, "never ready"
            status = client.get("/ready").status_code
            polls.append((time.monotonic(), status))
        assert client.get("/ready").json()["model_loaded"] is True
    at_start = len(model_loads)
    assert at_start >= 1, "the start-up loaded no model"
    loaded = max(end for _, end in model_loads)
    # The load's end is noted before the start-up goes on to readiness, so a
    # 200 answered before that note would have been ready without the model.
    assert all(answered > loaded for answered, status in polls if status == 200)
    assert any(status == 503 for _, status in polls)
    # warm_model off: ready without the model; the first text query loads it.
    app = create_app(Settings(collection_dir=directory, warm_model=False))
    with TestClient(app) as client:
        while client.get("/ready").status_code != 200:
            time.sleep(0.02)
        assert len(model_loads) == at_start  # not loaded by the start-up
        sent = time.monotonic()
        first = client.post("/search", json={"query": "the text of doc-3", "k": 1}).json()
        second = client.post("/search", json={"query": "the text of doc-2", "k": 1}).json()
    loads = model_loads[at_start:]
    assert loads, "the first text query loaded no model"
    started, done = min(s for s, _ in loads), max(e for _, e in loads)
    assert sent <= started
    assert first["timings"]["encode_ms"] >= (done - started) * 1e3
    assert second["timings"]["encode_ms"] < first["timings"]["encode_ms"]
