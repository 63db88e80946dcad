"""Issue 10's targets for ``binsearch.Collection``, measured beside today's (old) code in one run.

On a synthetic collection (``--docs`` documents: 384-d unit embeddings, ~600-byte
texts, residual codec with 2 planes) this measures, for the new layout
(SQLite document store + segments) and for the old one (``documents.jsonl``
read into memory, JSON write-ahead log, whole-generation snapshots) built
from the commit before the collection work (``--old-tree``, a git worktree):

* building: ``binsearch index --embeddings`` (new) vs ``build_index(embeddings=)`` (old);
* ``binsearch serve``: open to ready (spawn to ``/ready`` 200, and to the model
  loaded), server RSS once ready, the first write after ready, single-document
  write latency (fsync on), ``POST /snapshot`` after those writes (seconds and
  bytes written), single-query vector search latency;
* the Python API in its own process: ``Collection.open/add/search/snapshot``
  vs the old ``server.store.Store`` (the old code's only write API), with the
  new write split into encode / SQLite commit / index add.

Synthetic data are generated once into ``--workdir`` (reused). Every server
measurement is repeated ``--repeats`` times after one unmeasured warm-up start
(numba caches, kernel choice); medians are quoted. Writes
``results.json`` and ``report.md`` to ``--out``.

    python benchmarks/collection.py                 # 1M documents (the note's figures)
    python benchmarks/collection.py --quick         # 100k, a few minutes, smoke run
    python benchmarks/collection.py --docs 10000000 --no-old
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from collection_report import write_report
from collection_serve import (
    Server,
    dir_state,
    drive,
    env_for,
    first_write,
    io_bytes,
    rss_mb,
    summary,
    unit_vectors,
    write_body,
    written,
)
from common import cpu_name

REPO = Path(__file__).resolve().parents[1]
DIM, PLANES = 384, 2
TEXT_WORDS = 80  # ~600 bytes of text per document (mean word 6.5 letters + space)
MODEL = "all-MiniLM-L6-v2"


# ---------------------------------------------------------------------- data
def make_data(folder: Path, n: int, seed: int = 0) -> Path:
    """BEIR-style ``corpus.jsonl`` + ``embeddings/{corpus.npy,ids.json}`` of ``n`` docs (cached)."""
    done = folder / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("docs") == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "embeddings").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, rng.integers(3, 11))) for _ in range(5000)])
    vectors = np.lib.format.open_memmap(
        folder / "embeddings" / "corpus.npy", "w+", np.float32, (n, DIM)
    )
    started, step = time.perf_counter(), 20_000
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for start in range(0, n, step):
            stop = min(start + step, n)
            words = vocab[rng.integers(0, len(vocab), (stop - start, TEXT_WORDS))]
            lines = [
                f'{{"_id": "d{start + i}", "title": "synthetic document {start + i}", '
                f'"text": "{" ".join(row)}"}}\n'
                for i, row in enumerate(words.tolist())
            ]
            f.writelines(lines)
            x = rng.standard_normal((stop - start, DIM), dtype=np.float32)
            vectors[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
            print(f"\rdata: {stop:,}/{n:,}", end="", flush=True)
    vectors.flush()
    del vectors
    ids = {"corpus_ids": [f"d{i}" for i in range(n)], "model": MODEL, "dim": DIM}
    (folder / "embeddings" / "ids.json").write_text(json.dumps(ids))
    done.write_text(json.dumps({"docs": n}))
    print(f"\rdata: {n:,} documents in {time.perf_counter() - started:.0f}s", flush=True)
    return folder


# ---------------------------------------------------------------------- processes
def run_child(cmd: list[str], tree: Path, log: Path) -> dict[str, Any]:
    """Run ``cmd`` (cwd outside any tree); wall seconds, peak RSS, and its last stdout line."""
    started = time.perf_counter()
    with open(log, "w") as err, open(log.with_suffix(".out"), "w") as out:
        proc = subprocess.Popen(cmd, cwd="/", env=env_for(tree), stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{tail}")
    lines = log.with_suffix(".out").read_text().strip().splitlines()
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "last_line": lines[-1] if lines else "",
    }


# Run in a checkout of an older tree (before collections): its own module paths.
OLD_BUILD = """
import json, sys, time
import numpy as np
from binsearch.corpus import read_corpus
from binsearch.encoder import Encoder
from binsearch.pipeline import build_index
t0 = time.perf_counter()
docs = read_corpus(sys.argv[1])
emb = np.load(sys.argv[2])
build_index(docs, sys.argv[3], Encoder(), embeddings=emb, progress=False)
print(json.dumps({"inner_seconds": time.perf_counter() - t0}))
"""


def build(kind: str, data: Path, out: Path, tree: Path, logs: Path) -> dict[str, Any]:
    """Index ``data`` into ``out`` with the new CLI or the old ``build_index``."""
    shutil.rmtree(out, ignore_errors=True)
    py = sys.executable
    if kind == "new":
        cmd = [py, "-m", "binsearch.cli", "index", str(data / "corpus.jsonl"), "--out", str(out)]
        cmd += ["--embeddings", str(data / "embeddings")]
    else:
        cmd = [py, "-c", OLD_BUILD, str(data / "corpus.jsonl")]
        cmd += [str(data / "embeddings" / "corpus.npy"), str(out)]
    result = run_child(cmd, tree, logs / f"build-{kind}.log")
    result["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if kind == "old":
        result["inner_seconds"] = json.loads(result["last_line"])["inner_seconds"]
    result.pop("last_line")
    print(f"build {kind}: {result['seconds']:.1f}s, {result['bytes'] / 1e9:.2f} GB", flush=True)
    return result


def direct_worker(folder: Path, n: int) -> None:
    """Bulk-load ``n`` synthetic documents straight through ``Collection.bulk`` (no corpus file).

    For sizes whose corpus.jsonl + corpus.npy would cost more disk and time than
    the collection itself (10M: 22 GB): the same documents ``make_data`` writes,
    generated batch by batch. Not ``binsearch index``: no JSON parsing, no lookup by id.
    """
    from binsearch import Collection

    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, rng.integers(3, 11))) for _ in range(5000)])
    c = Collection.create(folder, "residual", PLANES, MODEL)
    step = 20_000
    with c.bulk():
        for start in range(0, n, step):
            stop = min(start + step, n)
            words = vocab[rng.integers(0, len(vocab), (stop - start, TEXT_WORDS))]
            docs = [
                {"title": f"synthetic document {start + i}", "text": " ".join(row)}
                for i, row in enumerate(words.tolist())
            ]
            x = rng.standard_normal((stop - start, DIM), dtype=np.float32)
            ids = [f"d{i}" for i in range(start, stop)]
            c.add(ids, x, documents=docs, keys=np.arange(start, stop, dtype=np.int64))
            print(f"\rbulk: {stop:,}/{n:,}", end="", file=sys.stderr, flush=True)
    c.close()


def segments_worker(folder: Path, result: Path, n_queries: int = 50, rounds: int = 3) -> None:
    """Single-query scan of the collection's segmented index vs one segment of the same rows.

    Alternates the two ``rounds`` times in one process (the same load for both);
    ``index.search(method="fast")`` as ``Collection.search`` calls it.
    """
    from binsearch import Collection
    from index import BinaryIndex

    c = Collection.open(folder, readonly=True)
    segmented = c.index
    codes, scales = segmented.get(c.store.all_keys())
    built = BinaryIndex(segmented.m, segmented.planes, "per_document", "cosine")
    built.add(codes, c.store.all_keys(), scales, stored_scales=True)
    # Saved and memory-mapped again, as the collection's own segments are.
    where = folder.parent / f".{folder.name}-one-segment"
    shutil.rmtree(where, ignore_errors=True)
    built.save(where)
    del built, codes, scales
    one = BinaryIndex.load(where, mmap=True)
    words, weights = c.coded.query_codes(unit_vectors(n_queries + 10, 3))
    out: dict[str, Any] = {
        "segments": [segmented.segment_count, one.segment_count],
        "rows": len(one),
    }
    for _ in range(rounds):
        for name, index in (("segmented", segmented), ("one_segment", one)):
            ms = []
            for i in range(n_queries + 10):
                t = time.perf_counter()
                index.search(words[i : i + 1], 10, weights[i : i + 1], method="fast")
                if i >= 10:
                    ms.append((time.perf_counter() - t) * 1e3)
            out.setdefault(name, []).append(summary(ms))
    c.close()
    del one
    shutil.rmtree(where, ignore_errors=True)
    result.write_text(json.dumps(out))


# ---------------------------------------------------------------------- Python API
def api_worker(kind: str, folder: Path, writes: int, n_queries: int, result: Path) -> None:
    """In-process writes, searches and a snapshot (runs in its own process per tree)."""
    queries = unit_vectors(n_queries + 20, 7)
    vectors = unit_vectors(writes + 200, 99)
    doc = write_body("x", None)
    doc.pop("vector")
    out: dict[str, Any] = {}
    started = time.perf_counter()
    if kind == "new":
        from binsearch import Collection

        c = Collection.open(folder)
        out["open_s"] = time.perf_counter() - started
        search = lambda q: c.search(embeddings=q[None], k=10)  # noqa: E731
        write = lambda i, v: c.add([f"api-{i}"], v[None], documents=[dict(doc)])  # noqa: E731
        snapshot = c.snapshot
    else:
        from server.settings import Settings
        from server.store import Store

        store = Store(Settings(collection_dir=folder, warm_model=False))
        store.load()
        out["open_s"] = time.perf_counter() - started
        search = lambda q: store.search(q[None], 10)  # noqa: E731
        write = lambda i, v: store.upsert([{"id": f"api-{i}", **doc}], v[None])  # noqa: E731
        snapshot = store.snapshot
    if n_queries:
        out["search_ms"] = summary(timings(search, list(queries), skip=20))
    out["write_ms"] = summary(timings(lambda a: write(*a), list(enumerate(vectors[:writes]))))
    if kind == "new":
        out["write_parts_ms"] = write_parts(c, vectors[writes:], doc)
    files, io, t = dir_state(folder), io_bytes(os.getpid()), time.perf_counter()
    info = snapshot()
    seconds = time.perf_counter() - t
    out["snapshot"] = {"client_s": seconds, **info, **written(folder, files, os.getpid(), io)}
    if n_queries:
        out["search_after_writes_ms"] = summary(timings(search, list(queries), skip=20))
    if kind == "new":
        c.close()
    else:
        store.close(snapshot=False)
    result.write_text(json.dumps(out))


def anatomy_worker(folder: Path, result: Path) -> None:
    """Where a server start goes: seconds and RSS after each step a ready server has done."""
    steps: list[dict[str, Any]] = []
    last = time.perf_counter()

    def step(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        steps.append({"step": name, "seconds": now - last, **rss_mb(os.getpid())})
        last = now

    step("interpreter, numpy, this script")
    import server.app  # noqa: F401 -- what `binsearch serve` imports before the app starts

    step("import server.app (FastAPI, binsearch, index, numba)")
    from binsearch import Collection
    from binsearch.encoder.model import Encoder

    encoder = Encoder()  # the server's encoder: ONNX Runtime for calls of up to 32 texts
    assert encoder.dim == DIM
    step("load the model as the server does (encoder.dim)")
    c = Collection.open(folder, readonly=True, encoder=encoder)
    step("Collection.open (verify CRC-32 of index files, replay)")
    q = unit_vectors(2, 5)
    for nq in (1, 2):  # what the server's warm-up does
        c.search_vectors(q[:nq], 1)
    step("warm-up scans (numba cache load, kernel choice)")
    c.encoder.encode(["warm the model up"])
    step("first encode of one text")
    import sentence_transformers  # noqa: F401
    import torch  # noqa: F401

    import binsearch.encoder.model as encoder_module

    limit = getattr(encoder_module, "ONNX_MAX_TEXTS", "?")
    step(f"not before ready: import torch + sentence_transformers (an encode of > {limit} texts)")
    c.close()
    result.write_text(json.dumps(steps))


def timings(fn: Any, args: list[Any], skip: int = 0) -> list[float]:
    out = []
    for i, a in enumerate(args):
        t = time.perf_counter()
        fn(a)
        if i >= skip:
            out.append((time.perf_counter() - t) * 1e3)
    return out


def write_parts(c: Any, vectors: np.ndarray, doc: dict[str, Any]) -> dict[str, Any]:
    """Collection.add's steps one by one: codec encode, SQLite transaction, index add."""
    parts: dict[str, list[float]] = {"encode": [], "sqlite_commit": [], "index_add": []}
    for i, v in enumerate(vectors):
        t0 = time.perf_counter()
        codes = c.codec.encode(v[None])
        t1 = time.perf_counter()
        keys, _ = c.store.upsert([f"parts-{i}"], [dict(doc)], codes.words, codes.scales)
        t2 = time.perf_counter()
        c.index.add(codes.words, keys, codes.scales)
        t3 = time.perf_counter()
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            parts[name].append(dt * 1e3)
    return {name: summary(ms) for name, ms in parts.items()}


def anatomy_run(folder: Path, logs: Path, run: int) -> list[dict[str, Any]]:
    result = logs / f"anatomy-{run}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "anatomy"]
    cmd += ["--dir", str(folder), "--result", str(result)]
    info = run_child(cmd, REPO, logs / f"anatomy-{run}.log")
    steps = json.loads(result.read_text())
    steps.append({"step": "spawn to exit (wall)", "seconds": info["seconds"]})
    return steps


def api_run(kind: str, folder: Path, tree: Path, logs: Path, opts: argparse.Namespace) -> dict:
    result = logs / f"api-{kind}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--dir", str(folder)]
    cmd += ["--writes", str(opts.writes), "--queries", str(opts.queries)]
    cmd += ["--result", str(result)]
    info = run_child(cmd, tree, logs / f"api-{kind}.log")
    out = json.loads(result.read_text())
    out["peak_rss_mb"] = info["peak_rss_mb"]
    return out


# ---------------------------------------------------------------------- driver
def machine() -> dict[str, Any]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "popcnt")
    flags = [f for f in wanted if f" {f}" in text]
    return {
        "cpu": cpu_name(),
        "cpu_flags": " ".join(flags),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
    }


def segment_rows(folder: Path) -> list[int]:
    """Rows of each index segment a server will load (new layout, or the old one's generation)."""
    manifest = folder / "index" / "manifest.json"
    if not manifest.is_file():  # the old layout: the generation CURRENT.json names
        current = folder / "CURRENT.json"
        gen = json.loads(current.read_text())["generation"] if current.is_file() else 0
        manifest = folder / (f"generations/{gen:08d}/" if gen else "") / "manifest.json"
    return [int(seg["rows"]) for seg in json.loads(manifest.read_text())["segments"]]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=1_000_000, help="documents (default 1M)")
    p.add_argument("--quick", action="store_true", help="100k documents, 2 repeats, 200 writes")
    p.add_argument("--repeats", type=int, default=3, help="measured server starts per layout")
    p.add_argument("--writes", type=int, default=1000, help="single-document writes per start")
    p.add_argument(
        "--queries", type=int, default=200, help="single vector queries measured (0: none)"
    )
    p.add_argument("--workdir", default="/tmp/binsearch-bench", help="data and collections")
    p.add_argument("--old-tree", default="/tmp/binsearch-old", help="worktree of the old commit")
    p.add_argument("--no-old", action="store_true", help="measure the new layout only")
    p.add_argument(
        "--reuse", action="store_true", help="measure the collections already in --workdir"
    )
    p.add_argument("--out", default=str(REPO / "results" / "collection"), help="output folder")
    p.add_argument(
        "--direct",
        action="store_true",
        help="new layout only, bulk-loaded through Collection.bulk without writing a corpus "
        "file (for 10M: saves 22 GB and the JSON parsing; the build figure is then not "
        "`binsearch index`'s)",
    )
    p.add_argument(
        "--worker",
        choices=("new", "old", "anatomy", "direct", "segments"),
        help=argparse.SUPPRESS,
    )
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.worker == "direct":
        direct_worker(Path(opts.dir), opts.docs)
        return 0
    if opts.worker == "segments":
        segments_worker(Path(opts.dir), Path(opts.result))
        return 0
    if opts.worker == "anatomy":
        anatomy_worker(Path(opts.dir), Path(opts.result))
        return 0
    if opts.worker:
        api_worker(opts.worker, Path(opts.dir), opts.writes, opts.queries, Path(opts.result))
        return 0
    if opts.quick:
        opts.docs, opts.repeats, opts.writes, opts.queries = 100_000, 2, 200, 100
    old_tree = Path(opts.old_tree)
    opts.no_old = opts.no_old or opts.direct
    kinds = ["new"] if opts.no_old else ["new", "old"]
    if "old" in kinds and not (old_tree / "server" / "store.py").is_file():
        print(
            f"error: {old_tree} is not a checkout of the old code; run "
            f"`git worktree add {old_tree} 12ffa0d` (or pass --no-old)",
            file=sys.stderr,
        )
        return 2
    trees = {"new": REPO, "old": old_tree}
    work = Path(opts.workdir)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "docs": opts.docs,
        "command": " ".join(sys.argv[1:] if argv is None else argv),
        "dim": DIM,
        "planes": PLANES,
        "repeats": opts.repeats,
        "writes": opts.writes,
        "queries": opts.queries,
        "machine": machine(),
        "load_start": load(),
        "uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "old_commit": "12ffa0d",
        "uncommitted_files_at_start": subprocess.run(
            ["git", "-C", str(REPO), "status", "--short", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.splitlines(),
        "new_commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    folders = {kind: work / f"{kind}-{opts.docs}" for kind in kinds}
    if opts.reuse:  # measure collections built by an earlier run, as they are
        missing = [str(f) for f in folders.values() if not f.is_dir()]
        if missing:
            print(f"error: --reuse: {', '.join(missing)} not built yet", file=sys.stderr)
            return 2
    elif opts.direct:  # the new layout only, bulk-loaded without a corpus file
        shutil.rmtree(folders["new"], ignore_errors=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "direct"]
        cmd += ["--dir", str(folders["new"]), "--docs", str(opts.docs)]
        info = run_child(cmd, REPO, logs / "build-direct.log")
        info.pop("last_line")
        info["how"] = "Collection.bulk() from generated batches (not `binsearch index`)"
        info["bytes"] = sum(p.stat().st_size for p in folders["new"].rglob("*") if p.is_file())
        results["build"] = {"new": {**info, "load": load()}}
        print(f"bulk load: {info['seconds']:.1f}s", flush=True)
    else:
        data = make_data(work / f"data-{opts.docs}", opts.docs)
        for kind in kinds:
            build_info = build(kind, data, folders[kind], trees[kind], logs)
            results.setdefault("build", {})[kind] = build_info
            results["build"][kind]["load"] = load()
    for run in range(opts.repeats + 1):  # run 0 warms caches and is not quoted
        order = kinds if run % 2 == 0 else kinds[::-1]  # neither always starts first
        servers: list[Server] = []
        try:
            for kind in order:
                log = logs / f"serve-{kind}-{run}.log"
                rows = segment_rows(folders[kind])
                servers.append(Server(kind, folders[kind], trees[kind], log, run))
                servers[-1].out["segments_at_start"] = rows
                first_write(servers[-1])
            drive(servers, opts.writes, opts.queries)
        finally:
            for server in servers:
                server.stop()
        for server in servers:
            r = server.out
            r["load"] = load()
            results.setdefault("serve", {}).setdefault(server.kind, []).append(r)
            print(
                f"serve {server.kind} #{run}: ready {r['model_loaded_s']:.2f}s, rss "
                f"{r['rss_after_ready']['VmRSS']:.0f} MB, first write {r['first_write_ms']:.0f} "
                f"ms, write p50 {r['write_ms']['p50']:.1f} ms, snapshot "
                f"{r['snapshot']['client_s']:.2f}s, search p50 "
                f"{r.get('search_ms', {}).get('p50', float('nan')):.1f} ms, "
                f"load {r['load']}",
                flush=True,
            )
    for run in range(1, opts.repeats + 1):
        for kind in kinds if run % 2 else kinds[::-1]:
            log = logs / f"serve-{kind}-nomodel-{run}.log"
            server = Server(kind, folders[kind], trees[kind], log, run, warm_model=False)
            server.stop()
            results.setdefault("serve_without_model", {}).setdefault(kind, []).append(server.out)
            print(f"serve {kind} without model #{run}: ready {server.out['ready_s']:.2f}s")
    results["start_anatomy"] = (
        []
        if not opts.queries
        else [anatomy_run(folders["new"], logs, run) for run in range(1, opts.repeats + 1)]
    )
    for run in range(2):  # new, old, old, new: the same load on average
        for kind in kinds if run % 2 == 0 else kinds[::-1]:
            api = api_run(kind, folders[kind], trees[kind], logs, opts)
            api["load"] = load()
            results.setdefault("api", {}).setdefault(kind, []).append(api)
            print(f"api {kind}: write p50 {api['write_ms']['p50']:.1f} ms", flush=True)
    results["load_end"] = load()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, out / "report.md")
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
