"""A sharded collection on a local Ray against one in-process Collection with the same codes.

    python benchmarks/shards.py                 # 10M documents x 768-bit codes, 1, 2 and 4 shards
    python benchmarks/shards.py --quick         # 1M documents, fewer queries

Builds, for each shard count, a sharded collection of ``--docs`` documents
with random 2-plane codes of 384 dimensions (768 bits per vector, residual
codec with per-document scales: the layout ``binsearch index`` writes). Every
configuration holds the same codes under the same global keys, so every
configuration must return identical top-k lists, which is checked.

Then measures, one configuration at a time on a warm page cache:

- the baseline: one ``Collection`` opened in this process, on the 1-shard
  directory, searched with all the machine's threads;
- ``ShardedCollection`` with 1, 2 and 4 shards (``threads_per_shard`` = cores /
  shards, at least 1: the same total threads where the division works);
- single queries (latency p50/p95 over ``--single`` queries, and q/s) and
  batches of 32 (q/s over ``--batches`` batches), k=10;
- the fan-out/merge overhead of a sharded search, two ways: the sharded
  1-shard median minus the in-process median, and (robust to machine load)
  each call's wall time minus the slowest shard's own search time, which the
  shard measures around its ``Collection.search`` (``last_shard_seconds``).

Writes ``results/shards/shards.json`` and ``shards.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import cpu_name, median
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "shards"
DIM, PLANES = 384, 2
WORDS = DIM // 64
CHUNK = 250_000


def cpu_flags() -> list[str]:
    """The SIMD flags of this CPU that the scan kernels can use."""
    wanted = {"avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512vl", "popcnt", "bmi2"}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return sorted(wanted & set(line.split(":", 1)[1].split()))
    return []


def chunk_codes(seed: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random codes and stored scales of documents ``start..start+n`` (the same in every layout)."""
    rng = np.random.default_rng([seed, start])
    codes = rng.integers(0, 2**64, size=(n, PLANES, WORDS), dtype=np.uint64, endpoint=False)
    # Residual-like plane scales (1, ~1/2), as stored for cosine: divided by the code norm.
    scales = np.empty((n, PLANES), np.float32)
    scales[:, 0] = 1.0
    scales[:, 1] = rng.uniform(0.35, 0.65, n).astype(np.float32)
    scales /= np.sqrt(DIM * (scales**2).sum(axis=1, keepdims=True))
    return codes, scales


def build(path: Path, docs: int, shards: int, seed: int) -> float:
    """A sharded collection of ``docs`` random documents (keys 0..docs-1, ids ``d<key>``)."""
    from binsearch.distributed import ShardedCollection, route

    started = time.perf_counter()
    sc = ShardedCollection.create(
        path, shards, codec="residual", bits=PLANES, model=None, dim=DIM, timeout=600
    )
    sc._call_all("begin_bulk", [() for _ in range(shards)])
    for start in tqdm(range(0, docs, CHUNK), desc=f"build {shards} shards", unit="chunk"):
        n = min(CHUNK, docs - start)
        codes, scales = chunk_codes(seed, start, n)
        keys = np.arange(start, start + n, dtype=np.int64)
        ids = [f"d{k}" for k in range(start, start + n)]
        owners = route(ids, shards)
        calls = {}
        for s in range(shards):
            sel = np.flatnonzero(owners == s)
            calls[s] = (
                [ids[j] for j in sel],
                [{}] * len(sel),
                np.ascontiguousarray(codes[sel]),
                np.ascontiguousarray(scales[sel]),
                keys[sel],
            )
        sc._call("add_codes", calls)
    sc._call_all("end_bulk", [() for _ in range(shards)])
    sc._reserve_given(np.array([docs - 1]))
    sc.close()
    return time.perf_counter() - started


def measure(search: Any, queries: np.ndarray, single: int, batches: int, shard_time: Any) -> dict:
    """Single-query latencies and batch-of-32 throughput of ``search(embeddings, k)``."""
    for i in range(3):  # warm-up: kernel choice, fast-scan layouts, page cache
        search(queries[i : i + 1])
        search(queries[:32])
    lat, overhead = [], []
    for i in range(single):
        t = time.perf_counter()
        search(queries[i : i + 1])
        wall = time.perf_counter() - t
        lat.append(wall)
        if shard_time is not None:
            overhead.append(wall - shard_time())
    batch_times, batch_overhead = [], []
    for b in range(batches):
        q = queries[single + 32 * b : single + 32 * (b + 1)]
        t = time.perf_counter()
        search(q)
        wall = time.perf_counter() - t
        batch_times.append(wall)
        if shard_time is not None:
            batch_overhead.append(wall - shard_time())
    out = {
        "single_p50_ms": median(lat) * 1e3,
        "single_p95_ms": float(np.percentile(lat, 95)) * 1e3,
        "single_qps": single / sum(lat),
        "batch32_median_ms": median(batch_times) * 1e3,
        "batch32_qps": 32 / median(batch_times),
    }
    if shard_time is not None:
        out["overhead_single_p50_ms"] = median(overhead) * 1e3
        out["overhead_batch32_median_ms"] = median(batch_overhead) * 1e3
    return out


def top_lists(results: list) -> list[tuple[list[str], list[int]]]:
    return [(list(r.ids), np.asarray(r.keys).tolist()) for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000_000, help="documents (default 10M)")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--single", type=int, default=40, help="single queries per configuration")
    parser.add_argument("--batches", type=int, default=8, help="batches of 32 per configuration")
    parser.add_argument("--quick", action="store_true", help="1M documents, 20 queries, 4 batches")
    parser.add_argument("--workdir", default=None, help="where to build (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.docs, args.single, args.batches = 1_000_000, 20, 4
    if 1 not in args.shards:
        parser.error("--shards must include 1 (the baseline opens the 1-shard directory)")

    import ray

    from binsearch.collection import Collection
    from binsearch.distributed import ShardedCollection

    cores = os.cpu_count() or 1
    work = Path(args.workdir or tempfile.mkdtemp(prefix="shards-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cores": cores,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "docs": args.docs,
        "bits_per_vector_codes": DIM * PLANES,
        "k": 10,
        "single_queries": args.single,
        "batches_of_32": args.batches,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "build_seconds": {},
        "configs": {},
    }
    rng = np.random.default_rng(args.seed + 1)
    queries = rng.standard_normal((args.single + 32 * args.batches, DIM)).astype(np.float32)
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        for n in args.shards:
            res["build_seconds"][n] = round(build(work / f"s{n}", args.docs, n, args.seed), 1)
            print(f"built {n} shards in {res['build_seconds'][n]} s", flush=True)
        # Baseline: one Collection in this process on the 1-shard directory.
        c = Collection.open(work / "s1" / "shard-000", mmap=True)
        res["bytes_per_document"] = round(c.stats()["index_bytes"] / args.docs, 2)
        reference = top_lists(c.search(embeddings=queries[:64], k=10))
        res["configs"]["in-process"] = measure(
            lambda q: c.search(embeddings=q, k=10), queries, args.single, args.batches, None
        )
        c.close()
        print("in-process", res["configs"]["in-process"], flush=True)
        for n in args.shards:
            sc = ShardedCollection.open(
                work / f"s{n}", threads_per_shard=max(1, cores // n), timeout=600
            )
            same = top_lists(sc.search(embeddings=queries[:64], k=10)) == reference
            row = measure(
                lambda q, sc=sc: sc.search(embeddings=q, k=10),
                queries,
                args.single,
                args.batches,
                lambda sc=sc: sc.last_shard_seconds,
            )
            row["identical_top10_to_in_process"] = same
            row["threads_per_shard"] = max(1, cores // n)
            res["configs"][f"{n} shards"] = row
            sc.close()
            print(f"{n} shards", row, flush=True)
    finally:
        ray.shutdown()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    base = res["configs"]["in-process"]
    one = res["configs"]["1 shards"]
    res["overhead_1_shard_vs_in_process"] = {
        "single_p50_added_ms": one["single_p50_ms"] - base["single_p50_ms"],
        "batch32_throughput_ratio": one["batch32_qps"] / base["batch32_qps"],
    }
    res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "shards.json").write_text(json.dumps(res, indent=2) + "\n")
    (OUT / "shards.md").write_text(markdown(res))
    print(markdown(res))


def markdown(res: dict) -> str:
    lines = [
        "# Sharded collection on a local Ray vs one in-process Collection",
        "",
        f"{res['docs']:,} documents x {res['bits_per_vector_codes']}-bit codes "
        f"({res.get('bytes_per_document', '?')} index bytes per document), k={res['k']}; "
        f"{res['cpu']} ({res['cores']} cores; {', '.join(res['cpu_flags'])}); Ray {res['ray']}; "
        f"load average {res['load_average_start']} at start, {res['load_average_end']} at end.",
        "Medians; single: one query per call; batch: 32 queries per call. "
        "Overhead = wall time minus the slowest shard's own search time.",
        "",
        "| configuration | threads/shard | single p50 ms | single p95 ms | single q/s "
        "| batch-32 ms | batch q/s | overhead single ms | overhead batch ms | identical top-10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["configs"].items():
        lines.append(
            f"| {name} | {r.get('threads_per_shard', res['cores'])} | {r['single_p50_ms']:.1f} "
            f"| {r['single_p95_ms']:.1f} | {r['single_qps']:.1f} | {r['batch32_median_ms']:.1f} "
            f"| {r['batch32_qps']:.1f} | {r.get('overhead_single_p50_ms', 0):.2f} "
            f"| {r.get('overhead_batch32_median_ms', 0):.2f} "
            f"| {r.get('identical_top10_to_in_process', '-')} |"
        )
    o = res["overhead_1_shard_vs_in_process"]
    lines += [
        "",
        f"1 shard vs in-process: {o['single_p50_added_ms']:+.2f} ms per single query (p50), "
        f"batch throughput ratio {o['batch32_throughput_ratio']:.3f}.",
        f"Build (bulk load of random codes): {res['build_seconds']} seconds by shard count.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
