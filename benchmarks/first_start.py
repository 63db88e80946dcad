"""First start of a 1M-document collection on a machine that never ran binsearch, and a second one.

Builds (outside the timing lock, or reuses ``--dir``) a collection of ``--n``
random 384-d documents made for all-MiniLM-L6-v2, then, holding
``/tmp/binsearch-bench.lock``, starts ``binsearch serve`` on it:

1. **first start**: ``BINSEARCH_CACHE``, ``HOME``, ``XDG_CACHE_HOME``,
   ``HF_HOME`` and ``TORCH_HOME`` point into a new empty directory, so no
   encoder export, kernel choice or precision choice is cached;
2. **second start**: the same directories, as the first start left them;
3. with ``--fresh-numba`` also a first start with an empty ``NUMBA_CACHE_DIR``
   (the scan kernels compile: what a fresh install costs before any command).

Each start is timed to the first 200 of ``GET /ready``; the server's resident
memory (``VmRSS``) is read at ready and after the encoder is ready, and its peak
(``VmHWM``, the kernel's high-water mark) before it stops. A vector query is
sent right after /ready and a text query once ``/stats`` says the encoder is
ready. Writes ``results/search/first_start.json`` and ``first_start.md``.

    python benchmarks/first_start.py --n 1000000
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_latency import DIM, LOCK, build  # noqa: E402

MODEL = "all-MiniLM-L6-v2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of a process, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = round(int(value.split()[0]) / 1024, 1)
    return out


def call(url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None
    except OSError:
        return 0, None


def start(directory: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    """One ``binsearch serve``: time to /ready, memory, a vector and a text query."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "binsearch.cli", "serve", str(directory), "--port", str(port)]
    started = time.perf_counter()
    with open(log, "ab") as err:
        server = subprocess.Popen(command, env=env, stdout=err, stderr=err)
    try:
        while call(f"{base}/ready", timeout=2)[0] != 200:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}; see {log}")
            time.sleep(0.02)
        out: dict[str, Any] = {"ready_s": round(time.perf_counter() - started, 3)}
        out["rss_at_ready_mb"] = memory_mb(server.pid)["VmRSS"]
        vector = [1.0] + [0.0] * (DIM - 1)
        t = time.perf_counter()
        status, _ = call(f"{base}/search", {"vector": vector, "k": 10})
        out["vector_query_after_ready"] = {
            "status": status,
            "ms": round(1e3 * (time.perf_counter() - t), 1),
        }
        stats: dict[str, Any] = {}
        while True:
            stats = call(f"{base}/stats")[1] or {}
            if stats.get("startup", {}).get("encoder_state") in ("ready", "failed", "none"):
                break
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}; see {log}")
            time.sleep(0.1)
        out["encoder_ready_s"] = round(time.perf_counter() - started, 3)
        out["startup"] = stats.get("startup")
        t = time.perf_counter()
        status, _ = call(f"{base}/search", {"query": "vitamin d and bone density", "k": 10})
        out["text_query"] = {"status": status, "ms": round(1e3 * (time.perf_counter() - t), 1)}
        memory = memory_mb(server.pid)
        out["rss_after_encoder_ready_mb"] = memory["VmRSS"]
        out["rss_peak_mb"] = memory["VmHWM"]
        return out
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def fresh_env(root: Path, numba: bool) -> dict[str, str]:
    """The environment of a user who never ran binsearch (caches under ``root``)."""
    env = dict(os.environ)
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        BINSEARCH_CACHE=str(root / "binsearch-cache"),
        XDG_CACHE_HOME=str(root / "xdg-cache"),
        HF_HOME=str(root / "hf"),
        TORCH_HOME=str(root / "torch"),
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    if numba:
        env["NUMBA_CACHE_DIR"] = str(root / "numba-cache")
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="documents (default 1,000,000)")
    ap.add_argument("--dir", default=None, help="reuse (or build once into) this collection")
    ap.add_argument("--fresh-numba", action="store_true", help="also a start with no numba cache")
    ap.add_argument("--out", default="results/search")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="first-start-"))
    try:
        directory = Path(args.dir) if args.dir else work / "c"
        if not (directory / "manifest.json").exists() and not any(directory.glob("*")):
            started = time.perf_counter()
            build(directory, args.n, model=MODEL).close()
            print(f"built in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        log = work / "server.log"
        runs: dict[str, Any] = {}
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            env = fresh_env(work / "machine", numba=False)
            runs["first_start"] = start(directory, env, log)
            runs["second_start"] = start(directory, env, log)
            if args.fresh_numba:
                runs["first_start_fresh_numba"] = start(
                    directory, fresh_env(work / "machine2", numba=True), log
                )
        results = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load": load,
            "documents": args.n,
            "command": f"python benchmarks/first_start.py --n {args.n}"
            + (" --dir DIR" if args.dir else "")
            + (" --fresh-numba" if args.fresh_numba else ""),
            **runs,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write(results, Path(args.out))


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "first_start.json").write_text(json.dumps(results, indent=1) + "\n")
    runs = [k for k in results if k.endswith("start") or k.endswith("numba")]
    rows = [
        ("ready (s)", "ready_s"),
        ("RSS at ready (MB)", "rss_at_ready_mb"),
        ("vector query right after ready", "vector_query_after_ready"),
        ("encoder ready (s)", "encoder_ready_s"),
        ("text query once the encoder is ready", "text_query"),
        ("RSS after the encoder is ready (MB)", "rss_after_encoder_ready_mb"),
        ("peak RSS (MB)", "rss_peak_mb"),
    ]

    def cell(value: Any) -> str:
        if isinstance(value, dict):
            return f"{value['status']}, {value['ms']} ms"
        return str(value)

    lines = [
        f"# First start of a {results['documents']:,}-document collection",
        "",
        f"Machine: {results['machine']}; load average {results['load']} (taken under the lock).",
        "",
        "| measure | " + " | ".join(r.replace("_", " ") for r in runs) + " |",
        "|---|" + "---:|" * len(runs),
        *[
            f"| {label} | " + " | ".join(cell(results[r].get(key)) for r in runs) + " |"
            for label, key in rows
        ],
        "",
        "Startup as /stats reports it: "
        + "; ".join(f"{r}: `{json.dumps(results[r].get('startup'))}`" for r in runs),
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    (out / "first_start.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
