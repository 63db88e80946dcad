"""Load test of the search service: a real uvicorn process on loopback, 1M synthetic codes.

Builds (once, cached in --workdir) an index of ``--docs`` random 384-d vectors
binarized by the residual codec at 2 bits per dimension (768 code bits per
document, the MiniLM width, so text queries go through the real model), starts
``binsearch serve`` on a free loopback port, and drives it from separate
processes: an asyncio load generator (keep-alive HTTP/1.1 connections, one
per client; cheaper per request than httpx, so the client's CPU is not
measured as server latency) with 1, 8 and 32 concurrent clients,
for vector and text queries, without and with a writer adding 100 documents/s.
Every run is bounded by ``--duration`` seconds and ``--max-requests`` requests.

Writes ``results.json`` and ``report.md`` to ``--out`` (default results/serve).

    python benchmarks/serve.py                      # full run, ~5 minutes after the build
    python benchmarks/serve.py --docs 20000 --duration 3 --out serve-smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import cpu_name

REPO = Path(__file__).resolve().parents[1]
QUERIES = REPO / "binsearch" / "data" / "cranfield" / "queries.jsonl"
DIM = 384
BITS = 2
WRITER_BATCH = 10  # documents per write; 10 writes/s make 100 documents/s


# ---------------------------------------------------------------------- index
def build_index(folder: Path, n: int, seed: int = 0) -> None:
    """A servable collection of ``n`` synthetic documents at ``folder.base`` (built once)."""
    from binsearch import Collection
    from binsearch.encoder import DEFAULT_MODEL, Encoder

    base = folder.with_name(folder.name + ".base")
    marker = base / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()).get("docs") == n:
        return
    shutil.rmtree(base, ignore_errors=True)
    rng = np.random.default_rng(seed)
    step = 100_000
    started = time.perf_counter()
    collection = Collection.create(base, "residual", BITS, DEFAULT_MODEL, encoder=Encoder())
    with collection, collection.bulk():
        for start in range(0, n, step):
            m = min(step, n - start)
            x = rng.standard_normal((m, DIM), dtype=np.float32)
            keys = np.arange(start, start + m, dtype=np.int64)
            ids = [f"s{k}" for k in keys]
            docs = [{"title": f"synthetic {k}", "text": ""} for k in keys]
            collection.add(ids, x, documents=docs, keys=keys)
    marker.write_text(json.dumps({"docs": n}))
    print(f"built {n:,} synthetic documents in {time.perf_counter() - started:.1f}s", flush=True)


def reset_writes(folder: Path) -> None:
    """Start every run from the built collection: a fresh copy of ``folder.base``."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(folder.with_name(folder.name + ".base"), folder)


# ---------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "BINSEARCH_SNAPSHOT_ON_SHUTDOWN": "false",  # the next run resets the writes anyway
        "BINSEARCH_SNAPSHOT_EVERY": str(10**9),
    }
    cmd = [sys.executable, "-m", "binsearch.cli", "serve", str(folder), "--port", str(port)]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> float:
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} during start-up")
        try:
            r = httpx.get(f"{url}/ready", timeout=5)
            if r.status_code == 200 and r.json()["model_loaded"]:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not ready after {timeout}s")


# ---------------------------------------------------------------------- load
def _query_bodies(kind: str, count: int, seed: int) -> list[dict]:
    if kind in ("vector", "health"):
        rng = np.random.default_rng(seed)
        return [{"vector": v.round(5).tolist(), "k": 10} for v in rng.standard_normal((count, DIM))]
    texts = [json.loads(line)["text"] for line in QUERIES.read_text().splitlines()]
    return [{"query": texts[i % len(texts)], "k": 10} for i in range(count)]


class _Connection:
    """One keep-alive HTTP/1.1 connection over asyncio streams.

    httpx spends milliseconds of CPU per request; on a 2-core machine that
    shares its cores with the server, the client's own cost would be measured
    as server latency. This client only writes prepared bytes and reads the
    status line, headers and a Content-Length body.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _raw_request(host: str, port: int, kind: str, body: dict) -> bytes:
    if kind == "health":  # the floor: HTTP and the framework, no work
        return f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    payload = json.dumps(body).encode()
    head = (
        f"POST /search HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _load(url: str, kind: str, clients: int, duration: float, max_requests: int) -> dict:
    host, port = url.removeprefix("http://").split(":")
    requests = [_raw_request(host, int(port), kind, b) for b in _query_bodies(kind, 512, clients)]
    latencies: list[float] = []
    encode_ms: list[float] = []
    search_ms: list[float] = []
    errors: list[str] = []
    issued = 0
    connections = [_Connection(host, int(port)) for _ in range(clients)]
    for conn in connections:  # open every connection and warm the server's caches
        try:
            await conn.request(requests[0])
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            errors.append(f"warm-up {type(exc).__name__}")
            conn.close()
    deadline = time.perf_counter() + duration

    async def one_client(c: int) -> None:
        nonlocal issued
        conn = connections[c]
        while time.perf_counter() < deadline and issued < max_requests:
            raw = requests[(issued * 7 + c) % len(requests)]
            issued += 1
            started = time.perf_counter()
            try:
                status, body = await conn.request(raw)
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
                errors.append(type(exc).__name__)
                conn.close()
                continue
            elapsed = time.perf_counter() - started
            if status != 200:
                errors.append(str(status))
                continue
            latencies.append(elapsed)
            t = json.loads(body).get("timings", {"encode_ms": 0.0, "search_ms": 0.0})
            encode_ms.append(t["encode_ms"])
            search_ms.append(t["search_ms"])

    started = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    wall = time.perf_counter() - started
    for conn in connections:
        conn.close()
    return {
        "latencies": latencies,
        "encode_ms": encode_ms,
        "search_ms": search_ms,
        "errors": errors,
        "wall_s": wall,
    }


def load_process(url: str, kind: str, clients: int, duration: float, limit: int, out) -> None:
    """The load generator's own process (its event loop does not share the server's cores' GIL)."""
    out.put(asyncio.run(_load(url, kind, clients, duration, limit)))


def writer_process(url: str, stop, out) -> None:
    """Add WRITER_BATCH documents every WRITER_BATCH/100 s until ``stop`` (bounded to 10 min)."""
    import httpx

    rng = np.random.default_rng(99)
    acked, errors, latencies = 0, [], []
    period = WRITER_BATCH / 100.0
    next_at = time.perf_counter()
    give_up = time.perf_counter() + 600
    with httpx.Client(base_url=url, timeout=30) as client:
        n = 0
        while not stop.is_set() and time.perf_counter() < give_up:
            docs = [
                {"id": f"w{n + j}", "title": f"written {n + j}", "vector": v.round(5).tolist()}
                for j, v in enumerate(rng.standard_normal((WRITER_BATCH, DIM)))
            ]
            n += WRITER_BATCH
            started = time.perf_counter()
            try:
                r = client.post("/documents", json={"documents": docs})
                if r.status_code == 200:
                    acked += WRITER_BATCH
                    latencies.append(time.perf_counter() - started)
                else:
                    errors.append(str(r.status_code))
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            next_at += period
            time.sleep(max(0.0, next_at - time.perf_counter()))
    elapsed = time.perf_counter() - (give_up - 600)
    out.put({"acked": acked, "errors": errors, "latencies": latencies, "elapsed_s": elapsed})


def collect(out, proc, timeout: float) -> dict:
    """The load process's result; a process that died counts as one failed run, not a hang."""
    import queue

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            raw = out.get(timeout=1.0)
            proc.join(30)
            return raw
        except queue.Empty:
            if not proc.is_alive():
                break
    proc.kill()
    return {
        "latencies": [],
        "encode_ms": [],
        "search_ms": [],
        "errors": ["load process died"],
        "wall_s": 0.0,
    }


def summarize(raw: dict) -> dict:
    lat = np.array(raw["latencies"]) * 1e3
    out = {
        "requests": int(lat.size),
        "errors": len(raw["errors"]),
        "error_kinds": sorted(set(raw["errors"])),
        "wall_s": round(raw["wall_s"], 2),
        "rps": round(lat.size / raw["wall_s"], 1) if raw["wall_s"] else 0.0,
    }
    if lat.size:
        out.update(
            p50_ms=round(float(np.percentile(lat, 50)), 2),
            p90_ms=round(float(np.percentile(lat, 90)), 2),
            p99_ms=round(float(np.percentile(lat, 99)), 2),
            encode_ms_mean=round(float(np.mean(raw["encode_ms"])), 2),
            search_ms_mean=round(float(np.mean(raw["search_ms"])), 2),
        )
        server = out["encode_ms_mean"] + out["search_ms_mean"]
        out["encode_share"] = round(out["encode_ms_mean"] / server, 3) if server else 0.0
    return out


def machine() -> dict:
    cpu = cpu_name()
    mem = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def report(results: dict) -> str:
    m = results["machine"]
    start, end = m["load_average_at_start"][0], m["load_average_at_end"][0]
    busy = start > m["cores"] / 2
    lines = [
        "# Search service under load",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}, "
        f"Python {m['python']}. Load average {start} at the start, {end} at the end, "
        f"on {m['cores']} cores"
        + (
            ": other work shared the cores, so read the figures as noisy and pessimistic."
            if busy
            else " (the benchmark's own server, clients and writer; little other work)."
        ),
        f"Index: {results['docs']:,} synthetic documents, residual codec, {DIM} dims x {BITS} "
        f"planes = {DIM * BITS} code bits ({results['bits_per_vector']} stored bits per vector "
        "with the scales); text queries encoded by all-MiniLM-L6-v2 in the server.",
        f"Each run: at most {results['duration_s']} s and {results['max_requests']:,} requests; "
        "load generator (raw keep-alive HTTP/1.1 over asyncio) and writer are separate "
        "processes on the same machine (loopback). `health` rows are GET /health: the floor "
        "that HTTP, the framework and the machine's load leave.",
        f"Server start (load index + model): {results['server_start_s']} s.",
        "",
        "| query | clients | writer | requests | req/s | p50 ms | p90 ms | p99 ms "
        "| encode ms | scan ms | encode share | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        writer = f"{r['writer']['docs_per_s']:.0f} docs/s" if r.get("writer") else "-"
        lines.append(
            f"| {r['kind']} | {r['clients']} | {writer} | {r['requests']} | {r['rps']} "
            f"| {r.get('p50_ms', '-')} | {r.get('p90_ms', '-')} | {r.get('p99_ms', '-')} "
            f"| {r.get('encode_ms_mean', '-')} | {r.get('search_ms_mean', '-')} "
            f"| {r.get('encode_share', '-')} | {r['errors']} |"
        )
    lines += [
        "",
        "encode/scan ms are the server's own per-request timings (means); the latency "
        "columns are measured by the client and include HTTP, JSON and queueing.",
        "Writer: POST /documents with 10 precomputed vectors every 0.1 s, each acknowledged "
        "only after its SQLite transaction (rows + journal) is committed with fsync; its "
        "p50/p99 write latency and errors are in "
        "results.json.",
        "",
        "Reproduce: `python benchmarks/serve.py` (add `--docs`, `--duration`, `--clients` to "
        "change the size).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument(
        "--kinds", default="vector,text,health", help="vector, text, health (the HTTP floor)"
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run (bound)")
    parser.add_argument("--max-requests", type=int, default=4000, help="requests per run (bound)")
    parser.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "binsearch-serve-bench"),
        help="where the synthetic index is built and kept between runs",
    )
    parser.add_argument("--out", default=str(REPO / "results" / "serve"))
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    kinds = args.kinds.split(",")

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    workdir = Path(args.workdir)
    folder = workdir / f"index-{args.docs}"
    build_index(folder, args.docs)
    reset_writes(folder)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(folder, port, workdir / "server.log")
    ctx = mp.get_context("spawn")  # no fork: the parent may hold numba/OpenMP threads
    runs = []
    try:
        start_s = wait_ready(url, proc)
        print(f"server ready in {start_s:.1f}s", flush=True)
        import httpx

        bits = httpx.get(f"{url}/stats").json()["bits_per_vector"]
        for with_writer in (False, True):
            writer, stop, writer_out = None, None, None
            if with_writer:
                stop, writer_out = ctx.Event(), ctx.Queue()
                writer = ctx.Process(target=writer_process, args=(url, stop, writer_out))
                writer.start()
                time.sleep(1.0)
            for kind in kinds:
                for n in clients:
                    out = ctx.Queue()
                    p = ctx.Process(
                        target=load_process,
                        args=(url, kind, n, args.duration, args.max_requests, out),
                    )
                    p.start()
                    raw = collect(out, p, args.duration + 300)
                    row = {"kind": kind, "clients": n, **summarize(raw)}
                    runs.append(row)
                    print(json.dumps(row), flush=True)
            if writer is not None:
                stop.set()
                w = collect(writer_out, writer, 120)
                w.setdefault("acked", 0)
                w.setdefault("elapsed_s", 1.0)
                lat = np.array(w["latencies"]) * 1e3
                info = {
                    "docs_acked": w["acked"],
                    "docs_per_s": round(w["acked"] / w["elapsed_s"], 1),
                    "errors": len(w["errors"]),
                    "write_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                    "write_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
                }
                for r in runs[-len(kinds) * len(clients) :]:
                    r["writer"] = info
                print(json.dumps({"writer": info}), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    results = {
        "machine": {
            **machine(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "docs": args.docs,
        "bits_per_vector": bits,
        "duration_s": args.duration,
        "max_requests": args.max_requests,
        "server_start_s": round(start_s, 1),
        "runs": runs,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "report.md").write_text(report(results))
    print(report(results))
    total_errors = sum(r["errors"] for r in runs)
    if total_errors:
        raise SystemExit(f"{total_errors} failed requests")


if __name__ == "__main__":
    main()
