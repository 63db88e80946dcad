"""Filtered-search latency at scale, and the cost of the keyword index on a write, in one run.

Builds (outside the timing lock) a collection of ``--n`` random 384-d documents
with metadata ``{"group": i % 100, "year": 2000 + i % 25}`` and a short text, then,
holding ``/tmp/binsearch-bench.lock``, times single queries (k = 10):

* unfiltered;
* ``where={"group": 7}`` (1 % of documents) on an undeclared field (every row's
  metadata is read; also on one core, without the key-range split), then with
  ``index_fields(["group"])`` (the declared field's index; the 10,000 matching
  rows are scored alone), and the same allow-list by the masked full scan
  (gathering off), checking that both give the same results;
* a one-document add with fsync on, with the keyword (FTS5) triggers, with a
  declared field too, and, as the baseline in the same run, on a copy whose
  keyword triggers were dropped.

Writes ``results/search/latency.json`` and ``latency.md``.

    python benchmarks/search_latency.py --n 1000000
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from binsearch.collection import searching
from binsearch.collection.collection import Collection
from index.impl import gather

DIM = 384
LOCK = "/tmp/binsearch-bench.lock"


def build(path: Path, n: int, seed: int = 0, model: str | None = None) -> Collection:
    """``n`` random unit-free 384-d documents with group/year metadata and a short text
    (``model``: the collection's model name; its embeddings are random all the same)."""
    dims = {"dim": DIM} if model is None else {}
    c = Collection.create(path, codec="residual", bits=2, model=model, **dims)
    rng = np.random.default_rng(seed)
    batch = 50_000
    with c.bulk():
        for start in tqdm(range(0, n, batch), desc="building", unit="batch"):
            stop = min(start + batch, n)
            i = np.arange(start, stop)
            x = rng.standard_normal((stop - start, DIM)).astype(np.float32)
            docs = [
                {
                    "text": f"document {j} word{j % 997} term{j % 89}",
                    "metadata": {"group": int(j % 100), "year": int(2000 + j % 25)},
                }
                for j in i.tolist()
            ]
            c.add([f"d{j}" for j in i.tolist()], embeddings=x, documents=docs, keys=i)
    return c


def timed(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return round(float(np.median(times)), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="documents (default 1,000,000)")
    ap.add_argument("--reps", type=int, default=30, help="timed queries per measure")
    ap.add_argument("--out", default="results/search")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="search-latency-"))
    try:
        started = time.perf_counter()
        c = build(work / "c", args.n)
        build_s = time.perf_counter() - started
        small = build(work / "w", 2000, seed=1)
        small.close()
        shutil.copytree(work / "w", work / "w-nofts")
        db = sqlite3.connect(work / "w-nofts" / "documents.db")
        db.executescript(
            "DROP TRIGGER keyword_insert; DROP TRIGGER keyword_delete; DROP TRIGGER keyword_update;"
        )
        db.close()
        shutil.copytree(work / "w", work / "w-declared")
        declared = Collection.open(work / "w-declared")
        declared.index_fields(["group"])
        declared.close()
        parts, fraction = searching.MAX_SCAN_PARTS, gather.GATHER_FRACTION
        qs = np.random.default_rng(9).standard_normal((args.reps, DIM)).astype(np.float32)
        where = {"group": 7}
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            c.warm()
            c.search(embeddings=qs[0], k=10, where=where)  # first read of the rows
            it = iter(range(10**9))
            res: dict[str, Any] = {}

            def query(**kw: Any) -> Any:
                return lambda: c.search(embeddings=qs[next(it) % args.reps], k=10, **kw)

            res["unfiltered_ms_p50"] = timed(query(), args.reps)
            res["filtered_rows_scan_ms_p50"] = timed(query(where=where), args.reps)
            res["filter_rows_scan_sql_ms"] = c.last_filter["filter_ms"]
            searching.MAX_SCAN_PARTS = 1  # the same on one core (no key-range split)
            res["filtered_rows_scan_one_core_ms_p50"] = timed(query(where=where), 5)
            searching.MAX_SCAN_PARTS = parts
            started = time.perf_counter()
            c.index_fields(["group"])
            res["declare_field_seconds"] = round(time.perf_counter() - started, 2)
            c.search(embeddings=qs[0], k=10, where=where)
            res["filtered_indexed_ms_p50"] = timed(query(where=where), args.reps)
            res["filter_indexed_sql_ms"] = c.last_filter["filter_ms"]
            res["matched"] = c.last_filter["matched"]
            gather.GATHER_FRACTION = 0.0  # the same allow-list by the masked full scan
            res["filtered_indexed_masked_scan_ms_p50"] = timed(query(where=where), args.reps)
            masked = [c.search(embeddings=q, k=10, where=where)[0].ids for q in qs[:10]]
            gather.GATHER_FRACTION = fraction
            gathered = [c.search(embeddings=q, k=10, where=where)[0].ids for q in qs[:10]]
            res["gathered_equals_masked_scan"] = gathered == masked
            x = np.random.default_rng(3).standard_normal((1, DIM)).astype(np.float32)
            for name in ("w", "w-nofts", "w-declared"):
                w = Collection.open(work / name)
                n = iter(range(10**9))
                label = {"w": "fts", "w-nofts": "no_fts", "w-declared": "fts_declared_group"}[name]
                res[f"write_ms_p50_{label}"] = timed(
                    lambda w=w, n=n: w.add(
                        [f"new{next(n)}"],
                        embeddings=x,
                        documents=[
                            {"text": "a new document about flutter", "metadata": {"group": 1}}
                        ],
                    ),
                    200,
                )
                w.close()
        results = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load": load,
            "documents": args.n,
            "build_seconds": round(build_s, 1),
            "command": f"python benchmarks/search_latency.py --n {args.n} --reps {args.reps}",
            **res,
        }
        c.close(snapshot=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        f"# Filtered search and write latency ({args.n:,} documents, 384-d, residual 2-bit)",
        "",
        f"Machine: {results['machine']}; load average {results['load']} (taken under the lock).",
        "",
        "| measure | value |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in results.items() if k not in ("machine", "load", "command")],
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    (out / "latency.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
