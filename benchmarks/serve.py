"""Load test of the search service, today's code (4f0bc37) beside the new, in one run.

Builds (once, cached in --workdir) ``--docs`` random 384-d vectors binarized by
the residual codec at 2 bits per dimension (768 code bits per document, the
MiniLM width, so text queries go through the real model): once as a
collection of this tree, once as an index of ``--old-tree`` (a git worktree of
the commit the issue was filed on, built by that tree's own code from the same
vectors). It starts both trees' ``binsearch serve`` on loopback (each with its
own PYTHONPATH, the same Python) and drives them *alternately* with the same
clients: for every query kind and client count, ``--repeats`` runs on each
server, the order swapped every repeat, so both see the same machine load.
The load generator is its own process (keep-alive HTTP/1.1 over asyncio, one
connection per client); its CPU seconds and the server's are recorded, since
all of them share the machine's cores. Rows quote medians over the repeats.

Writes ``results.json`` and ``report.md`` to ``--out`` (default results/serve).

    git worktree add /tmp/binsearch-4f0bc37 4f0bc37    # once
    flock /tmp/binsearch-bench.lock python benchmarks/serve.py          # ~8 minutes
    python benchmarks/serve.py --docs 20000 --duration 2 --repeats 1 --out serve-smoke
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
from common import cpu_name, median
from serve_report import report

REPO = Path(__file__).resolve().parents[1]
QUERIES = REPO / "binsearch" / "data" / "cranfield" / "queries.jsonl"
DIM = 384
BITS = 2
WRITER_BATCH = 10  # documents per write; 10 writes/s make 100 documents/s
OLD_COMMIT = "4f0bc37"


# ---------------------------------------------------------------------- index
def build_index(folder: Path, n: int, seed: int = 0) -> None:
    """A servable collection of ``n`` synthetic documents at ``folder.base`` (built once)."""
    from binsearch import Collection
    from binsearch.encoder.model import DEFAULT_MODEL, Encoder

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


# The old tree builds its own layout with its own benchmark's build_index: the
# same seed and 100k steps of rng.standard_normal, so the same vectors.
OLD_BUILD = """
import sys
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[1]) / "benchmarks"))
from serve import build_index
build_index(Path(sys.argv[2]), int(sys.argv[3]))
"""


def build_old_index(tree: Path, folder: Path, n: int) -> None:
    """``n`` synthetic documents in the old tree's index layout at ``folder`` (built once)."""
    cmd = [sys.executable, "-c", OLD_BUILD, str(tree), str(folder), str(n)]
    subprocess.run(cmd, cwd="/", env=tree_env(tree), check=True)


def reset_writes(folder: Path, old: bool) -> None:
    """Start every run from the built index (no writes of earlier runs)."""
    if old:  # the old layout: a base generation, a write-ahead log, later generations
        for name in ("wal", "generations"):
            shutil.rmtree(folder / name, ignore_errors=True)
        (folder / "CURRENT.json").unlink(missing_ok=True)
        return
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(folder.with_name(folder.name + ".base"), folder)


# ---------------------------------------------------------------------- server
def tree_env(tree: Path) -> dict[str, str]:
    """Environment in which ``tree``'s packages win over the editable install."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("BINSEARCH_COLLECTION_DIR", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Today's code ran under uvicorn's pure-Python defaults (h11, asyncio): the
# packages this issue added are hidden from it, so its rows are today's service.
OLD_SERVE = """
import runpy, sys
sys.modules.update(httptools=None, uvloop=None, orjson=None)
sys.argv = ["binsearch", *sys.argv[1:]]
runpy.run_module("binsearch.cli", run_name="__main__")
"""


def start_server(tree: Path, folder: Path, port: int, log: Path, old: bool) -> subprocess.Popen:
    env = {
        **tree_env(tree),
        "BINSEARCH_SNAPSHOT_ON_SHUTDOWN": "false",  # the next run resets the writes anyway
        "BINSEARCH_SNAPSHOT_EVERY": str(10**9),
    }
    args = ["serve", str(folder), "--port", str(port)]
    cmd = [sys.executable, "-c", OLD_SERVE, *args] if old else [sys.executable, "-m"]
    if not old:
        cmd += ["binsearch.cli", *args]
    return subprocess.Popen(cmd, cwd="/", env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 900) -> float:
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with {proc.returncode} during start-up")
        try:
            r = httpx.get(f"{url}/ready", timeout=5)
            if r.status_code == 200 and r.json()["model_loaded"]:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"error: server not ready after {timeout}s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    queue_ms: list[float] = []
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
            t = json.loads(body).get("timings", {}) if kind != "health" else {}
            encode_ms.append(t.get("encode_ms", 0.0))
            search_ms.append(t.get("search_ms", 0.0))
            queue_ms.append(t.get("queue_ms", 0.0))

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    for conn in connections:
        conn.close()
    return {
        "latencies": latencies,
        "encode_ms": encode_ms,
        "search_ms": search_ms,
        "queue_ms": queue_ms,
        "errors": errors,
        "wall_s": wall,
        "client_cpu_s": cpu,
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
        "queue_ms": [],
        "errors": ["load process died"],
        "wall_s": 0.0,
        "client_cpu_s": 0.0,
    }


def summarize(raw: dict, server_cpu_s: float, cores: int) -> dict:
    """One run's figures: throughput, client latency percentiles, server timings, CPU."""
    lat = np.array(raw["latencies"]) * 1e3
    wall = raw["wall_s"]
    out = {
        "requests": int(lat.size),
        "errors": len(raw["errors"]),
        "error_kinds": sorted(set(raw["errors"])),
        "wall_s": round(wall, 2),
        "rps": round(lat.size / wall, 1) if wall else 0.0,
        "server_cpu_ms_per_req": round(server_cpu_s * 1e3 / max(lat.size, 1), 3),
        "client_cpu_ms_per_req": round(raw["client_cpu_s"] * 1e3 / max(lat.size, 1), 3),
        # of the machine's cores over the run: the server's, the load generator's
        "server_share": round(server_cpu_s / (wall * cores), 3) if wall else 0.0,
        "client_share": round(raw["client_cpu_s"] / (wall * cores), 3) if wall else 0.0,
    }
    if lat.size:
        out.update(
            p50_ms=round(float(np.percentile(lat, 50)), 2),
            p90_ms=round(float(np.percentile(lat, 90)), 2),
            p99_ms=round(float(np.percentile(lat, 99)), 2),
            encode_ms_mean=round(float(np.mean(raw["encode_ms"])), 2),
            search_ms_mean=round(float(np.mean(raw["search_ms"])), 2),
            queue_ms_mean=round(float(np.mean(raw["queue_ms"])), 2),
            latency_ms_mean=round(float(np.mean(lat)), 2),
        )
        # what the client waited beyond the server's own timings: HTTP, JSON, the
        # event loop, the thread hops (and, on a busy machine, waiting for a core)
        server = out["encode_ms_mean"] + out["search_ms_mean"] + out["queue_ms_mean"]
        out["outside_ms_mean"] = round(out["latency_ms_mean"] - server, 2)
    return out


def combine(rows: list[dict]) -> dict:
    """Medians over the repeats of one (tree, kind, clients) point; errors summed."""
    out = {k: rows[0][k] for k in ("tree", "kind", "clients")}
    out["repeats"] = len(rows)
    out["errors"] = sum(r["errors"] for r in rows)
    out["requests"] = sum(r["requests"] for r in rows)
    skip = {"tree", "kind", "clients", "errors", "requests", "error_kinds", "repeat"}
    for key in rows[0]:
        if key not in skip and all(isinstance(r.get(key), int | float) for r in rows):
            out[key] = round(median(r[key] for r in rows), 3)
    return out


def cpu_flags() -> list[str]:
    """The SIMD flags of this CPU that the scan kernels and the encoder care about."""
    wanted = ("popcnt", "avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512_vnni")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def machine() -> dict:
    mem = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu_name(),
        "flags": cpu_flags(),
        "cores": os.cpu_count(),
        "ram_gib": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def git_head() -> str:
    cmd = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()


def drive(url: str, pid: int, kind: str, clients: int, args, ctx) -> dict:
    """One load run against one server (with the writer beside it if asked)."""
    stop = writer = writer_out = None
    if args.writer:
        stop, writer_out = ctx.Event(), ctx.Queue()
        writer = ctx.Process(target=writer_process, args=(url, stop, writer_out))
        writer.start()
        time.sleep(1.0)
    out = ctx.Queue()
    p = ctx.Process(
        target=load_process, args=(url, kind, clients, args.duration, args.max_requests, out)
    )
    cpu = cpu_seconds(pid)
    p.start()
    raw = collect(out, p, args.duration + 300)
    row = summarize(raw, cpu_seconds(pid) - cpu, os.cpu_count() or 1)
    if writer is not None:
        stop.set()
        w = collect(writer_out, writer, 120)
        lat = np.array(w.get("latencies", [])) * 1e3
        row["writer"] = {
            "docs_per_s": round(w.get("acked", 0) / max(w.get("elapsed_s", 1.0), 1e-9), 1),
            "errors": len(w.get("errors", [])),
            "write_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        }
        row["errors"] += row["writer"]["errors"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000, help="documents (default 1M)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients per run")
    parser.add_argument(
        "--kinds", default="vector,text,health", help="vector, text, health (the HTTP floor)"
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run (bound)")
    parser.add_argument("--max-requests", type=int, default=4000, help="requests per run (bound)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tree and point")
    parser.add_argument("--writer", action="store_true", help="a writer adds 100 docs/s")
    parser.add_argument(
        "--old-tree",
        default=str(Path(tempfile.gettempdir()) / f"binsearch-{OLD_COMMIT}"),
        help=f"git worktree of today's code ({OLD_COMMIT})",
    )
    parser.add_argument("--no-old", action="store_true", help="measure this tree only")
    parser.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "binsearch-serve-bench"),
        help="where the synthetic indexes are built and kept between runs",
    )
    parser.add_argument("--out", default=str(REPO / "results" / "serve"))
    args = parser.parse_args()
    try:
        clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        raise SystemExit(
            f"error: --clients takes numbers like 1,8,32, got {args.clients!r}"
        ) from None
    kinds = args.kinds.split(",")
    if bad := set(kinds) - {"vector", "text", "health"}:
        raise SystemExit(f"error: unknown --kinds {', '.join(sorted(bad))}")
    old_tree = Path(args.old_tree)
    trees = {"new": REPO} if args.no_old else {"old": old_tree, "new": REPO}
    if "old" in trees and not (old_tree / "server" / "wal.py").is_file():
        raise SystemExit(
            f"error: {old_tree} is not a checkout of {OLD_COMMIT}; run "
            f"`git worktree add {old_tree} {OLD_COMMIT}` (or pass --no-old)"
        )

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    folders = {"new": workdir / f"index-{args.docs}", "old": workdir / f"old-index-{args.docs}"}
    build_index(folders["new"], args.docs)
    if "old" in trees:
        build_old_index(old_tree, folders["old"], args.docs)
    results: dict = {
        "machine": machine(),
        "uptime_at_start": uptime(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "docs": args.docs,
        "duration_s": args.duration,
        "max_requests": args.max_requests,
        "repeats": args.repeats,
        "old_commit": OLD_COMMIT,
        "new_commit": git_head(),
        # a shared checkout: other engineers' edits in progress are measured too
        "uncommitted_files_at_start": subprocess.run(
            ["git", "-C", str(REPO), "status", "--short", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.splitlines(),
        "command": " ".join(sys.argv[1:]),
    }
    servers: dict[str, tuple[str, subprocess.Popen]] = {}
    ctx = mp.get_context("spawn")  # no fork: the parent may hold numba/OpenMP threads
    runs: list[dict] = []
    try:
        for name, tree in trees.items():
            reset_writes(folders[name], old=name == "old")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            log = workdir / f"server-{name}.log"
            proc = start_server(tree, folders[name], port, log, old=name == "old")
            servers[name] = (url, proc)
            results[f"server_start_s_{name}"] = round(wait_ready(url, proc), 1)
            print(f"{name} server ready ({tree})", flush=True)
        import httpx

        results["bits_per_vector"] = httpx.get(f"{servers['new'][0]}/stats").json()[
            "bits_per_vector"
        ]
        for kind in kinds:
            for n in clients:
                for rep in range(args.repeats):
                    order = list(trees) if rep % 2 == 0 else list(trees)[::-1]
                    for name in order:
                        url, proc = servers[name]
                        row = {"tree": name, "kind": kind, "clients": n, "repeat": rep}
                        row.update(drive(url, proc.pid, kind, n, args, ctx))
                        runs.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        for _, proc in servers.values():
            proc.send_signal(signal.SIGTERM)
        for _, proc in servers.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    results["uptime_at_end"] = uptime()
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    points = {}
    for r in runs:
        points.setdefault((r["tree"], r["kind"], r["clients"]), []).append(r)
    results["rows"] = [combine(rows) for rows in points.values()]
    results["runs"] = runs
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    (out_dir / "report.md").write_text(text)
    print(text)
    total_errors = sum(r["errors"] for r in runs)
    if total_errors:
        raise SystemExit(f"error: {total_errors} failed requests")


if __name__ == "__main__":
    main()
