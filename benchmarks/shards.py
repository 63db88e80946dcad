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

# As the service and the shard actors do: idle OpenMP threads (numba's threading layer)
# sleep instead of spinning, so the in-process baseline is not penalised against them.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from common import cpu_name, median  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

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


def measure(
    searches: dict[str, Any],
    shard_times: dict[str, Any],
    queries: np.ndarray,
    single: int,
    batches: int,
) -> dict[str, dict]:
    """Single-query latencies and batch-of-32 times of several ``search(embeddings)``, interleaved.

    The calls alternate (and alternate their order), so a load that drifts
    during the run weighs on every configuration alike. ``shard_times[name]``,
    where given, returns the slowest shard's own search time of the last call.
    """
    for fn in searches.values():
        for i in range(3):  # warm-up: kernel choice, fast-scan layouts, page cache
            fn(queries[i : i + 1])
            fn(queries[:32])
    names = list(searches)
    lat: dict[str, list] = {n: [] for n in names}
    over: dict[str, list] = {n: [] for n in names}
    batch: dict[str, list] = {n: [] for n in names}
    batch_over: dict[str, list] = {n: [] for n in names}
    calls = [("single", i, queries[i : i + 1]) for i in range(single)]
    calls += [
        ("batch", b, queries[single + 32 * b : single + 32 * (b + 1)]) for b in range(batches)
    ]
    for kind, i, q in calls:
        for name in names if i % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            searches[name](q)
            wall = time.perf_counter() - t
            (lat if kind == "single" else batch)[name].append(wall)
            if shard_times.get(name) is not None:
                (over if kind == "single" else batch_over)[name].append(wall - shard_times[name]())
    out = {}
    for n in names:
        out[n] = {
            "single_p50_ms": median(lat[n]) * 1e3,
            "single_p95_ms": float(np.percentile(lat[n], 95)) * 1e3,
            "single_qps": single / sum(lat[n]),
            "batch32_median_ms": median(batch[n]) * 1e3,
            "batch32_qps": 32 / median(batch[n]),
        }
        if over[n]:
            out[n]["overhead_single_p50_ms"] = median(over[n]) * 1e3
            out[n]["overhead_batch32_median_ms"] = median(batch_over[n]) * 1e3
    return out


def top_lists(results: list) -> list[tuple[list[str], list[int]]]:
    return [(list(r.ids), np.asarray(r.keys).tolist()) for r in results]


def bench_fanout(work: Path, counts: list[int], reps: int) -> dict[str, Any]:
    """Wall time of one single-query search over ``n`` tiny shards (2,000 documents each).

    The scans are negligible, so this is the fan-out itself: submitting one Ray
    call per shard, the shards' answers, the merge. Its growth with ``n`` is the
    coordinator's per-shard cost, the figure that bounds a wide cluster.
    """
    from binsearch.distributed import ShardedCollection

    out: dict[str, Any] = {}
    rng = np.random.default_rng(5)
    q = rng.standard_normal((reps, DIM)).astype(np.float32)
    for n in counts:
        sc = ShardedCollection.create(
            work / f"fan{n}", n, codec="residual", bits=PLANES, model=None, dim=DIM,
            threads_per_shard=1, timeout=120,
        )  # fmt: skip
        x = rng.standard_normal((2000 * n, DIM)).astype(np.float32)
        sc.add([f"f{i}" for i in range(len(x))], embeddings=x)
        for i in range(5):
            sc.search(embeddings=q[i : i + 1], k=10)
        walls, own = [], []
        cpu = time.process_time()  # this process: the coordinator, with Ray's core-worker threads
        for i in range(reps):
            t = time.perf_counter()
            sc.search(embeddings=q[i : i + 1], k=10)
            walls.append(time.perf_counter() - t)
            own.append(sc.last_shard_seconds)
        cpu = time.process_time() - cpu
        sc.close()
        out[n] = {
            "wall_p50_ms": median(walls) * 1e3,
            "wall_p95_ms": float(np.percentile(walls, 95)) * 1e3,
            "slowest_shard_p50_ms": median(own) * 1e3,
            "coordinator_cpu_ms_per_query": cpu / reps * 1e3,
        }
        print(f"fan-out {n} shards", out[n], flush=True)
    return out


def bench_scan_rate(work: Path, docs: int, single: int, batches: int, seed: int) -> dict[str, Any]:
    """Scan cost of one in-process Collection in wall time and in CPU time (all its threads).

    On a shared, loaded machine the wall time measures the other jobs too; the
    CPU seconds a search burns are what a node of dedicated cores would spend,
    so the cost model takes its per-core rate from them.
    """
    from binsearch.collection.collection import Collection

    c = Collection.create(work / "scan", codec="residual", bits=PLANES, model=None, dim=DIM)
    with c.bulk():
        for start in range(0, docs, CHUNK):
            n = min(CHUNK, docs - start)
            codes, scales = chunk_codes(seed, start, n)
            keys = np.arange(start, start + n, dtype=np.int64)
            c.store.bulk_insert([(int(k), f"d{k}", {}) for k in keys])
            c.index.add(codes, keys, scales, stored_scales=True)
    c.close()
    c = Collection.open(work / "scan", mmap=True)
    rng = np.random.default_rng(seed + 3)
    q = rng.standard_normal((single + 32 * batches, DIM)).astype(np.float32)
    for i in range(3):
        c.search(embeddings=q[i : i + 1], k=10)
        c.search(embeddings=q[:32], k=10)
    out: dict[str, Any] = {"docs": docs, "bytes_per_document": c.stats()["index_bytes"] / docs}
    for label, n_calls, size in (("single", single, 1), ("batch32", batches, 32)):
        walls, cpus = [], []
        for i in range(n_calls):
            qq = q[single + 32 * i : single + 32 * (i + 1)] if size == 32 else q[i : i + 1]
            t, cpu = time.perf_counter(), time.process_time()
            c.search(embeddings=qq, k=10)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - cpu)
        out[f"{label}_wall_p50_ms"] = median(walls) * 1e3
        out[f"{label}_cpu_p50_ms"] = median(cpus) * 1e3
        scanned = docs * out["bytes_per_document"] * size
        out[f"{label}_gb_s_per_core_cpu"] = scanned / median(cpus) / 1e9
    c.close()
    return out


def bench_merge(counts: list[int], k: int = 10, nq: int = 1, reps: int = 50) -> dict[str, float]:
    """Milliseconds :func:`merge_packed` takes for ``nq`` queries from ``n`` shards' top-``k`` lists."""
    from binsearch.distributed.merge import merge_packed

    rng = np.random.default_rng(2)
    out = {}
    for n in counts:
        packed = []
        for s in range(n):
            keys = np.arange(s, s + n * k * nq, n, dtype=np.int64)[: k * nq]
            packed.append(
                {
                    "counts": np.full(nq, k, np.int64),
                    "scores": np.sort(rng.random(k * nq).astype(np.float32))[::-1].copy(),
                    "keys": keys,
                    "ids": [f"d{x}" for x in keys],
                    "rows": None,
                }
            )
        out[n] = median(timed_call(merge_packed, packed, nq, k) for _ in range(reps)) * 1e3
    return out


def timed_call(fn: Any, *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000_000, help="documents (default 10M)")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--single", type=int, default=40, help="single queries per configuration")
    parser.add_argument("--batches", type=int, default=8, help="batches of 32 per configuration")
    parser.add_argument("--quick", action="store_true", help="1M documents, 20 queries, 4 batches")
    parser.add_argument(
        "--workdir",
        default=None,
        help="where to build (default: a temp dir, removed after); an existing build of the "
        "same --docs there is reused",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fanout",
        action="store_true",
        help="instead: fan-out cost over 1-16 tiny shards and merge cost up to 1000 shards "
        "(writes fanout.json / fanout.md; quick)",
    )
    parser.add_argument(
        "--scan-rate",
        action="store_true",
        help="instead: one in-process collection's scan cost in wall and CPU time "
        "(writes scan_rate.json; use with --docs 2000000)",
    )
    parser.add_argument(
        "--cost-model",
        action="store_true",
        help="instead: the cost model from shards.json and fanout.json (writes cost_model.md)",
    )
    args = parser.parse_args()
    if args.fanout:
        return main_fanout(args)
    if args.cost_model:
        return main_cost_model()
    if args.scan_rate:
        work = Path(args.workdir or tempfile.mkdtemp(prefix="scan-rate-"))
        try:
            rate = bench_scan_rate(work, args.docs, args.single, args.batches, args.seed)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rate.update(cpu=cpu_name(), load_average=[round(x, 2) for x in os.getloadavg()])
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "scan_rate.json").write_text(json.dumps(rate, indent=2) + "\n")
        print(json.dumps(rate, indent=2))
        return
    if args.quick:
        args.docs, args.single, args.batches = 1_000_000, 20, 4
    if 1 not in args.shards:
        parser.error("--shards must include 1 (the baseline opens the 1-shard directory)")

    import ray

    from binsearch.collection.collection import Collection
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
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        for n in args.shards:
            if args.workdir and (work / f"s{n}" / "shards.json").is_file():
                print(f"reusing {work / f's{n}'}", flush=True)  # built by an earlier run
                continue
            res["build_seconds"][n] = round(build(work / f"s{n}", args.docs, n, args.seed), 1)
            print(f"built {n} shards in {res['build_seconds'][n]} s", flush=True)
        # Baseline: one Collection in this process on a copy of the 1-shard directory
        # (a copy: the shard actor holds the original's lock while they alternate).
        baseline = work / "baseline"
        if not baseline.is_dir():
            shutil.copytree(work / "s1" / "shard-000", baseline)
        c = Collection.open(baseline, mmap=True)
        res["bytes_per_document"] = round(c.stats()["index_bytes"] / args.docs, 2)
        reference = top_lists(c.search(embeddings=queries[:64], k=10))
        for n in args.shards:
            sc = ShardedCollection.open(
                work / f"s{n}", threads_per_shard=max(1, cores // n), timeout=600
            )
            same = top_lists(sc.search(embeddings=queries[:64], k=10)) == reference
            rows = measure(
                {
                    "in-process": lambda q: c.search(embeddings=q, k=10),
                    "sharded": lambda q, sc=sc: sc.search(embeddings=q, k=10),
                },
                {"sharded": lambda sc=sc: sc.last_shard_seconds},
                queries,
                args.single,
                args.batches,
            )
            rows["sharded"]["identical_top10_to_in_process"] = same
            rows["sharded"]["threads_per_shard"] = max(1, cores // n)
            rows["added_single_p50_ms"] = (
                rows["sharded"]["single_p50_ms"] - rows["in-process"]["single_p50_ms"]
            )
            rows["batch32_throughput_ratio"] = (
                rows["sharded"]["batch32_qps"] / rows["in-process"]["batch32_qps"]
            )
            res["configs"][f"{n} shards"] = rows
            sc.close()
            print(f"{n} shards", rows, flush=True)
        c.close()
    finally:
        ray.shutdown()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "shards.json").write_text(json.dumps(res, indent=2) + "\n")
    (OUT / "shards.md").write_text(markdown(res))
    print(markdown(res))


def main_fanout(args: argparse.Namespace) -> None:
    import ray

    cores = os.cpu_count() or 1
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fanout-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": cores,
        "ray": ray.__version__,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        res["fanout"] = bench_fanout(work, [1, 2, 4, 8, 16], reps=60)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    res["merge_ms_1_query"] = bench_merge([1, 4, 16, 100, 1000], nq=1)
    res["merge_ms_32_queries"] = bench_merge([1, 4, 16, 100], nq=32, reps=10)
    f = res["fanout"]
    # The coordinator's per-shard cost: least-squares slope of (wall - slowest shard's own
    # search) over the shard count, up to 8 shards (beyond, the shard processes starve each
    # other of this machine's cores and the figure measures the machine, not the fan-out).
    ns = np.array([n for n in sorted(f) if n <= 8], dtype=np.float64)
    over = np.array([f[int(n)]["wall_p50_ms"] - f[int(n)]["slowest_shard_p50_ms"] for n in ns])
    slope, intercept = np.polyfit(ns, over, 1)
    res["fanout_fit_ms"] = {"per_shard": float(slope), "fixed": float(intercept)}
    # The coordinator's own CPU per query and per shard (same 1-8 shards): what one
    # coordinator core spends to fan a query out, whatever the shards' machines do.
    cpu = np.array([f[int(n)]["coordinator_cpu_ms_per_query"] for n in ns])
    cpu_slope, cpu_fixed = np.polyfit(ns, cpu, 1)
    res["coordinator_cpu_fit_ms"] = {"per_shard": float(cpu_slope), "fixed": float(cpu_fixed)}
    res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fanout.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# Fan-out and merge cost of a sharded search",
        "",
        f"{res['cpu']} ({cores} cores), Ray {res['ray']}, load average "
        f"{res['load_average_start']} -> {res['load_average_end']}. Tiny shards "
        "(2,000 documents each), single queries, k=10, medians of 60.",
        "",
        "| shards | wall p50 ms | wall p95 ms | slowest shard's own search p50 ms "
        "| fan-out + merge ms | coordinator CPU ms per query |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in f.items():
        lines.append(
            f"| {n} | {r['wall_p50_ms']:.2f} | {r['wall_p95_ms']:.2f} "
            f"| {r['slowest_shard_p50_ms']:.2f} | {r['wall_p50_ms'] - r['slowest_shard_p50_ms']:.2f} "
            f"| {r['coordinator_cpu_ms_per_query']:.2f} |"
        )
    lines += [
        "",
        f"Fan-out + merge, linear fit over 1-8 shards: {slope:.3f} ms per shard + "
        f"{intercept:.2f} ms ({cores} cores shared by all actors and the caller; at 16 "
        "shards the actors starve each other and the shards' own times grow too). "
        f"Coordinator CPU per query: {cpu_slope:.3f} ms per shard + {cpu_fixed:.2f} ms.",
        "",
        "Merge (numpy, one process): "
        + ", ".join(f"{n} shards {v:.3f} ms" for n, v in res["merge_ms_1_query"].items())
        + " for one query; "
        + ", ".join(f"{n} shards {v:.2f} ms" for n, v in res["merge_ms_32_queries"].items())
        + " for 32 queries.",
        "",
    ]
    (OUT / "fanout.md").write_text("\n".join(lines))
    print("\n".join(lines))


#: The node the cost model sizes a cluster with (assumptions, not measurements).
NODE = {"cores": 32, "ram_gb": 256, "usable_ram": 0.8, "memory_bandwidth_gbs": 100.0}
TARGET_P50_MS = 100.0
TARGET_QPS = 1000.0


def bytes_per_document(bits: int, dim: int = DIM) -> float:
    """Index bytes per document: codes (dim*bits/8) + int64 key + one float32 scale per plane."""
    return dim * bits / 8 + 8 + 4 * bits


def _count(n: float) -> str:
    return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"


def main_cost_model() -> None:
    """Size clusters for 100M and 1B documents at 1, 2 and 4 bits per dimension from measured rates."""
    bench = json.loads((OUT / "shards.json").read_text())
    fan = json.loads((OUT / "fanout.json").read_text())
    base = bench["configs"]["1 shards"]["in-process"]
    docs, cores = bench["docs"], bench["cores"]
    b2 = bench.get("bytes_per_document") or bytes_per_document(2)
    # Scan rates per core: from CPU time (scan_rate.json) where measured, which a loaded
    # machine does not inflate; else from the 10M in-process wall times.
    single_bw_core = docs * b2 / (base["single_p50_ms"] / 1e3) / cores  # bytes/s/core, 1 query
    batch_bw_core = docs * b2 * 32 / (base["batch32_median_ms"] / 1e3) / cores  # x queries
    rate_source = "wall time of the 10M in-process runs"
    if (OUT / "scan_rate.json").is_file():
        rate = json.loads((OUT / "scan_rate.json").read_text())
        single_bw_core = rate["single_gb_s_per_core_cpu"] * 1e9
        batch_bw_core = rate["batch32_gb_s_per_core_cpu"] * 1e9
        rate_source = f"CPU time of one in-process collection of {rate['docs']:,} documents"
    # Fixed cost of a fan-out: the 1-shard overhead measured at 10M (the larger, loaded figure).
    over = bench["configs"]["1 shards"]["sharded"]["overhead_single_p50_ms"]
    # Per shard: the coordinator's own CPU (it submits and receives one call per shard in
    # turn); the shards run on their own nodes, so their CPU does not add up on a cluster.
    cpu_fit = fan["coordinator_cpu_fit_ms"]
    merge = {int(k): v for k, v in fan["merge_ms_1_query"].items()}

    def merge_ms(shards: int) -> float:
        xs = sorted(merge)
        return float(np.interp(shards, xs, [merge[x] for x in xs]))

    def fanout_ms(shards: int) -> float:
        return over + max(cpu_fit["per_shard"], 0.0) * shards

    def coordinator_qps(shards: int) -> float:
        return 1e3 / (max(cpu_fit["fixed"], 0.0) + max(cpu_fit["per_shard"], 0.0) * shards)

    node_ram = NODE["ram_gb"] * 1e9 * NODE["usable_ram"]
    node_bw = min(NODE["cores"] * single_bw_core, NODE["memory_bandwidth_gbs"] * 1e9)
    node_batch_bw = min(NODE["cores"] * batch_bw_core, 32 * NODE["memory_bandwidth_gbs"] * 1e9)
    rows = []
    for n in (100_000_000, 1_000_000_000):
        for bits in (1, 2, 4):
            bpd = bytes_per_document(bits)
            total = n * bpd
            by_ram = int(np.ceil(total / node_ram))
            # The fewest nodes whose scan + fan-out + merge fits the p50 target (or,
            # if none does, the node count with the lowest p50).
            best = None
            for nodes in range(by_ram, 5001):
                scan_s = total / nodes / node_bw
                p50_ms = scan_s * 1e3 + fanout_ms(nodes) + merge_ms(nodes)
                if best is None or p50_ms < best[1]:
                    best = (nodes, p50_ms, scan_s)
                if p50_ms <= TARGET_P50_MS:
                    break
            nodes, p50_ms, scan_s = best
            batch_qps = 32 / (
                total / nodes / node_batch_bw + (fanout_ms(nodes) + merge_ms(nodes)) / 1e3
            )
            replicas = int(np.ceil(TARGET_QPS / batch_qps))
            rows.append(
                {
                    "documents": n,
                    "bits_per_dim": bits,
                    "bytes_per_document": bpd,
                    "total_gb": total / 1e9,
                    "nodes_for_ram": by_ram,
                    "nodes_for_p50": nodes,
                    "p50_ms": p50_ms,
                    "scan_ms": scan_s * 1e3,
                    "fanout_ms": fanout_ms(nodes),
                    "merge_ms": merge_ms(nodes),
                    "batch32_qps_per_replica": batch_qps,
                    "coordinator_qps": coordinator_qps(nodes),
                    "replicas_for_target_qps": replicas,
                }
            )
    # A 100-node cluster: capacity by RAM and by the latency budget, at 2 bits.
    cluster = {}
    for bits in (1, 2, 4):
        bpd = bytes_per_document(bits)
        by_ram = 100 * node_ram / bpd
        scan_budget = (TARGET_P50_MS - fanout_ms(100) - merge_ms(100)) / 1e3
        by_latency = 100 * max(scan_budget, 0) * node_bw / bpd
        served = min(by_ram, by_latency)
        qps = 32 / (served / 100 * bpd / node_batch_bw + (fanout_ms(100) + merge_ms(100)) / 1e3)
        cluster[bits] = {
            "docs_by_ram": by_ram,
            "docs_at_p50_target": by_latency,
            "batch32_qps": qps,
        }
    res = {
        "node": NODE,
        "target_p50_ms": TARGET_P50_MS,
        "target_qps": TARGET_QPS,
        "measured": {
            "cpu": bench["cpu"],
            "bytes_per_document_2bit": b2,
            "scan_rate_source": rate_source,
            "single_query_scan_gb_s_per_core": single_bw_core / 1e9,
            "batch32_scan_gb_s_per_core_x_queries": batch_bw_core / 1e9,
            "fanout_overhead_1_shard_ms": over,
            "fanout_fit_ms_2_cores": fan["fanout_fit_ms"],
            "coordinator_cpu_fit_ms": cpu_fit,
            "merge_ms_1_query": merge,
        },
        "node_scan_gb_s": node_bw / 1e9,
        "rows": rows,
        "cluster_100_nodes": cluster,
        "coordinator_qps_at_100_shards": coordinator_qps(100),
    }
    (OUT / "cost_model.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "| documents | bits/dim | bytes/doc | total GB | nodes (RAM) | nodes (p50 <= "
        f"{TARGET_P50_MS:.0f} ms) | p50 ms (scan + fan-out + merge) | batch-32 q/s per replica "
        f"| replicas for {TARGET_QPS:.0f} q/s | single q/s one coordinator core |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {_count(r['documents'])} | {r['bits_per_dim']} | {r['bytes_per_document']:.0f} "
            f"| {r['total_gb']:,.1f} | {r['nodes_for_ram']} | {r['nodes_for_p50']} "
            f"| {r['p50_ms']:.0f} ({r['scan_ms']:.0f} + {r['fanout_ms']:.1f} + {r['merge_ms']:.2f}) "
            f"| {r['batch32_qps_per_replica']:,.0f} | {r['replicas_for_target_qps']} "
            f"| {r['coordinator_qps']:,.0f} |"
        )
    lines += ["", "| 100 nodes, bits/dim | documents by RAM | documents at the p50 target | batch-32 q/s |",
              "|---|---|---|---|"]  # fmt: skip
    for bits, c in cluster.items():
        lines.append(
            f"| {bits} | {c['docs_by_ram'] / 1e9:,.1f}B | {c['docs_at_p50_target'] / 1e9:,.1f}B "
            f"| {c['batch32_qps']:,.0f} |"
        )
    text = "\n".join(lines) + "\n"
    (OUT / "cost_model.md").write_text(text)
    print(json.dumps(res["measured"], indent=2))
    print(
        f"node scan {node_bw / 1e9:.1f} GB/s; one coordinator core: "
        f"{coordinator_qps(100):.0f} single queries/s at 100 shards"
    )
    print(text)


def markdown(res: dict) -> str:
    lines = [
        "# Sharded collection on a local Ray vs one in-process Collection",
        "",
        f"{res['docs']:,} documents x {res['bits_per_vector_codes']}-bit codes "
        f"({res.get('bytes_per_document', '?')} index bytes per document), k={res['k']}; "
        f"{res['cpu']} ({res['cores']} cores; {', '.join(res['cpu_flags'])}); Ray {res['ray']}; "
        f"load average {res['load_average_start']} at start, {res['load_average_end']} at end.",
        "",
        "Each configuration is measured interleaved with the in-process baseline (one "
        "Collection in the benchmark's process, all cores, on a copy of the same codes): "
        f"{res['single_queries']} single queries and {res['batches_of_32']} batches of 32, "
        "medians. Overhead = the sharded call's wall time minus the slowest shard's own "
        "search time (measured inside the shard).",
        "",
        "| shards | threads/shard | single p50 ms (in-process) | single p50 ms (sharded) "
        "| added ms | overhead single ms | batch-32 ms (in-process) | batch-32 ms (sharded) "
        "| batch throughput ratio | overhead batch ms | identical top-10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["configs"].items():
        a, b = r["in-process"], r["sharded"]
        lines.append(
            f"| {name} | {b['threads_per_shard']} | {a['single_p50_ms']:.1f} "
            f"| {b['single_p50_ms']:.1f} | {r['added_single_p50_ms']:+.1f} "
            f"| {b['overhead_single_p50_ms']:.2f} | {a['batch32_median_ms']:.1f} "
            f"| {b['batch32_median_ms']:.1f} | {r['batch32_throughput_ratio']:.3f} "
            f"| {b['overhead_batch32_median_ms']:.2f} | {b['identical_top10_to_in_process']} |"
        )
    lines += [
        "",
        f"Build (bulk load of random codes): {res['build_seconds']} seconds by shard count.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
