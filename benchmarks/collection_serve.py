"""``binsearch serve`` under measurement, for ``benchmarks/collection.py``.

A server is started, timed to ready, given its first write, and then driven
together with the other layout's server: every query and every write goes to
one server and then the same to the other, so both see the same machine load
(this machine is shared; the load drifts over minutes).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import median


def env_for(tree: Path) -> dict[str, str]:
    """Environment that makes ``tree``'s packages win over the editable install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env.pop("BINSEARCH_COLLECTION_DIR", None)
    return env


def unit_vectors(n: int, seed: int, dim: int = 384) -> np.ndarray:
    """float32 ``(n, dim)`` random unit vectors."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_body(doc_id: str, vector: Any) -> dict[str, Any]:
    """A ~600-byte document with a precomputed vector (what a write sends)."""
    text = ("lorem ipsum dolor sit amet consectetur " * 16)[:600]
    return {"id": doc_id, "title": f"new {doc_id}", "text": text, "vector": vector}


# ---------------------------------------------------------------------- measuring helpers
def summary(ms: list[float]) -> dict[str, float]:
    """n, p50, p99, mean, max of latencies in milliseconds."""
    a = np.asarray(ms, dtype=np.float64)
    return {
        "n": len(ms),
        "p50": median(a),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "max": float(a.max()),
    }


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and its anonymous / file-backed parts of ``pid``, in MB (10^6 bytes)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024 / 1e6
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def io_bytes(pid: int) -> int:
    """Bytes ``pid`` has sent to storage so far (``write_bytes`` of /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def dir_state(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``folder``."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def written(folder: Path, before: dict[str, tuple[int, int]], pid: int, io: int) -> dict:
    """What a snapshot wrote: bytes the process sent to storage (the SQLite
    checkpoint included), and the size of the files it created or rewrote other
    than the database (whose checkpoint rewrites pages, not the whole file)."""
    after = dir_state(folder)
    files = sum(
        size
        for name, (size, mtime) in after.items()
        if before.get(name) != (size, mtime) and not name.startswith("documents.db")
    )
    return {"storage_bytes": io_bytes(pid) - io, "file_bytes": files}


def loaded_seconds(log: Path) -> float | None:
    """The server's own ``index_loaded`` seconds from its JSON log."""
    for line in log.read_text().splitlines():
        if '"index_loaded"' in line:
            try:
                record = json.loads(line)
                inner = record.get("message", record)
                if isinstance(inner, str):
                    inner = json.loads(inner)
                return float(inner["seconds"])
            except (ValueError, KeyError, TypeError):
                pass
    return None


# ---------------------------------------------------------------------- one server
class Client:
    """One keep-alive HTTP/1.1 connection (cheap per request, so the client adds little)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any, float]:
        """``(status, decoded JSON, seconds)`` of one request.

        A connection the server closed while idle (uvicorn's keep-alive timeout,
        e.g. while the other server started) is reopened and the request sent
        again (writes are upserts: idempotent); only the answered try is timed.
        """
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):
            started = time.perf_counter()
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                if attempt:
                    raise
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                continue
            seconds = time.perf_counter() - started
            return response.status, json.loads(data) if data else None, seconds
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``binsearch serve FOLDER`` of one tree, started and timed to ready.

    ``out`` collects the measurements (seconds, milliseconds, MB). With
    ``warm_model`` off readiness does not wait for the model: what opening the
    collection alone costs.
    """

    def __init__(
        self, kind: str, folder: Path, tree: Path, log: Path, run: int, warm_model: bool = True
    ) -> None:
        self.kind, self.folder, self.log = kind, folder, log
        self.port = _free_port()
        cmd = [
            sys.executable,
            "-m",
            "binsearch.cli",
            "serve",
            str(folder),
            "--port",
            str(self.port),
        ]
        env = env_for(tree)
        env["BINSEARCH_LOG_REQUESTS"] = "false"  # the same for both: no log line per request
        env["BINSEARCH_WARM_MODEL"] = "true" if warm_model else "false"
        self.out: dict[str, Any] = {"run": run}
        with open(log, "w") as err:
            started = time.perf_counter()
            self.proc = subprocess.Popen(cmd, cwd="/", env=env, stdout=err, stderr=err)
        try:
            self._wait_ready(started, warm_model)
        except BaseException:
            self.stop()
            raise
        self.client = Client(self.port)

    def _wait_ready(self, started: float, warm_model: bool) -> None:
        ready_s = model_s = None
        while model_s is None and (warm_model or ready_s is None):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited: {self.log.read_text()[-1500:]}")
            if time.perf_counter() - started > 900:
                raise RuntimeError(f"{self.kind} server not ready after 900 s")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/ready")
                response = conn.getresponse()
                body = json.loads(response.read() or b"{}")
                conn.close()
            except (OSError, http.client.HTTPException):
                time.sleep(0.01)
                continue
            now = time.perf_counter() - started
            if response.status == 200 and ready_s is None:
                ready_s = now
                self.out["ready_cpu_s"] = cpu_seconds(self.proc.pid)
            if response.status == 200 and body.get("model_loaded"):
                model_s = now
                self.out["model_loaded_cpu_s"] = cpu_seconds(self.proc.pid)
            else:
                time.sleep(0.01)
        self.out["ready_s"], self.out["model_loaded_s"] = ready_s, model_s
        self.out["rss_after_ready"] = rss_mb(self.proc.pid)

    def call(self, method: str, path: str, body: bytes) -> tuple[Any, float]:
        status, data, seconds = self.client.call(method, path, body)
        if status != 200:
            raise RuntimeError(f"{self.kind}: {method} {path} answered {status}: {data}")
        return data, seconds

    def snapshot(self) -> None:
        files, io = dir_state(self.folder), io_bytes(self.proc.pid)
        info, seconds = self.call("POST", "/snapshot", b"{}")
        self.out["snapshot"] = {
            "client_s": seconds,
            **info,
            **written(self.folder, files, self.proc.pid, io),
        }

    def stop(self) -> None:
        """SIGTERM (graceful shutdown), then wait; killed after 300 s."""
        if getattr(self, "client", None) is not None:
            self.out["rss_end"] = rss_mb(self.proc.pid)
            self.client.close()
            self.client = None
        stopped = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out["stop_s"] = time.perf_counter() - stopped
        self.out["server_log_load_s"] = loaded_seconds(self.log)


# ---------------------------------------------------------------------- both together
def first_write(server: Server) -> None:
    """The first write, straight after ready."""
    vector = np.round(unit_vectors(1, 500 + server.out["run"]), 6)[0].tolist()
    body = json.dumps({"documents": [write_body(f"{server.kind}-first", vector)]})
    _, seconds = server.call("POST", "/documents", body.encode())
    server.out["first_write_ms"] = seconds * 1e3


def _queries(n: int) -> list[bytes]:
    vectors = np.round(unit_vectors(n + 20, 7), 6).tolist()
    return [json.dumps({"vector": v, "k": 10}).encode() for v in vectors]


def _search(servers: list[Server], queries: list[bytes], key: str) -> None:
    times: dict[str, list[float]] = {s.kind: [] for s in servers}
    for i, body in enumerate(queries):
        for s in servers:
            _, seconds = s.call("POST", "/search", body)
            if i >= 20:  # the first 20 warm caches up and are not counted
                times[s.kind].append(seconds * 1e3)
    for s in servers:
        s.out[key] = summary(times[s.kind])


def drive(servers: list[Server], writes: int, n_queries: int) -> None:
    """Queries, ``writes`` single-document writes, a snapshot each, queries again.

    Each request goes to every server in turn before the next one is sent.
    """
    queries = _queries(n_queries) if n_queries else []  # 0: no searches at all
    if queries:
        _search(servers, queries, "search_ms")
    run = servers[0].out["run"]
    vectors = np.round(unit_vectors(writes, 1000 + run), 6).tolist()
    times: dict[str, list[float]] = {s.kind: [] for s in servers}
    for i, v in enumerate(vectors):
        for s in servers:
            body = json.dumps({"documents": [write_body(f"{s.kind}-r{run}-w{i}", v)]})
            _, seconds = s.call("POST", "/documents", body.encode())
            times[s.kind].append(seconds * 1e3)
    for s in servers:
        s.out["write_ms"] = summary(times[s.kind])
    for s in servers:
        s.snapshot()
    if queries:
        _search(servers, queries, "search_after_writes_ms")
