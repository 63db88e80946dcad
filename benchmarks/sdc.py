"""SDC by fast-scan nibble tables (index.fastscan) against the popcount kernels, in one run.

    python benchmarks/sdc.py --quick      # N = 1M, 4 code shapes, batches of 20: under 2 minutes
    python benchmarks/sdc.py              # batches of 100, plus the other weighting of every shape

For each code shape (planes x bits, per-document scales or fixed weights, cosine)
at N documents and 2 threads, every repetition times, interleaved:

* popcount: ``BinaryIndex.search(method="popcount")`` (``topk_scan`` /
  ``hamming_topk_scan``), the baseline;
* SDC bytes: ``method="sdc"``, the scalar per-byte-table kernel (single query only:
  a batch would take minutes);
* fast-scan exact: :func:`index.impl.fastscan.fastscan_topk` with BEBR's fixed query
  weights ``2**-p`` (exact integer tables, same top-k as popcount);
* fast-scan quantized: query weights off the power-of-two grid, so int8-quantized
  tables, ``k * 4`` candidates re-scored by popcounts;
* float query (asymmetric): :func:`index.impl.fastscan.fastscan_topk_float` (quantized,
  ``k * 4`` re-scored exactly) against ``search_float(method="slices")`` (4-bit query).

Single query (median over ``--queries`` different queries per repetition) and a
batch of ``--batch`` queries. Figures are medians of ``--reps`` (>= 5); ratios
are speeds (fast-scan speed / popcount speed > 1 means fast-scan is faster).
First calls (numba compilation) happen before any timing. Recall@k of the
approximate paths against the exact ranking is measured on the same data.

Writes ``results/scan/sdc.json`` and ``results/scan/sdc.md`` (the command is recorded inside).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np
from common import cpu_name, median, random_codes, timed

from index import BinaryIndex, fixed_plane_weights, pack_codes
from index.impl.fastscan import HAS_AVX2, FastScanCodes, fastscan_topk, fastscan_topk_float

REPO = Path(__file__).resolve().parents[1]
K = 10
RESCORE = 4


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


def bench_shape(rng, n: int, planes: int, m: int, weights: str, args) -> dict:
    """Time every method on one code shape; return medians, ratios and recalls."""
    n_words = m // 64
    codes = random_codes(rng, n, planes, n_words)
    scales = None
    if weights == "per_document":
        # residual-like scales: plane p around 2**-p
        scales = (fixed_plane_weights(planes) * rng.uniform(0.7, 1.3, (n, planes))).astype(
            np.float32
        )
    index = BinaryIndex(m, planes, weights, "cosine")
    index.add(codes, np.arange(n, dtype=np.int64), scales)
    del codes
    t = time.perf_counter()
    layout = FastScanCodes.from_codes(
        index.codes, index.scales if weights == "per_document" else index.plane_weights, m
    )
    convert_s = time.perf_counter() - t
    norms = index.norms if index.norms.shape[0] else None
    nq_all = max(args.queries, args.batch)
    queries = pack_codes(rng.choice([-1, 1], size=(nq_all, planes, m)))
    fixed_w = np.tile(fixed_plane_weights(planes), (nq_all, 1))
    # learned-looking weights: off the power-of-two grid, so the tables are quantized
    float_w = (fixed_w * rng.uniform(0.8, 1.2, fixed_w.shape)).astype(np.float32)
    x = rng.standard_normal((nq_all, m)).astype(np.float32)
    th = args.threads

    def popcount(q, w):
        return index.search(q, K, w, method="popcount", threads=th, batch_size=len(q))

    def sdc_bytes(q, w):
        return index.search(q, K, w, method="sdc", threads=th)

    def fs_exact(q, w):
        return fastscan_topk(layout, q, w, K, index.keys, norms, threads=th)

    def fs_quant(q, w):
        return fastscan_topk(layout, q, w, K, index.keys, norms, threads=th, rescore_factor=RESCORE)

    def float_fs(xq):
        return fastscan_topk_float(
            layout, xq, K, index.keys, norms, threads=th, rescore_factor=RESCORE
        )

    def float_slices(xq):
        return index.search_float(xq, K, method="slices", bits=4, threads=th, batch_size=len(xq))

    single = {
        "popcount": lambda j: popcount(queries[j : j + 1], fixed_w[j : j + 1]),
        "sdc_bytes": lambda j: sdc_bytes(queries[j : j + 1], fixed_w[j : j + 1]),
        "fastscan_exact": lambda j: fs_exact(queries[j : j + 1], fixed_w[j : j + 1]),
        "popcount_float_weights": lambda j: popcount(queries[j : j + 1], float_w[j : j + 1]),
        "fastscan_quantized": lambda j: fs_quant(queries[j : j + 1], float_w[j : j + 1]),
        "float_slices": lambda j: float_slices(x[j : j + 1]),
        "float_fastscan": lambda j: float_fs(x[j : j + 1]),
    }
    b = args.batch
    batch = {
        "popcount": lambda: popcount(queries[:b], fixed_w[:b]),
        "fastscan_exact": lambda: fs_exact(queries[:b], fixed_w[:b]),
        "popcount_float_weights": lambda: popcount(queries[:b], float_w[:b]),
        "fastscan_quantized": lambda: fs_quant(queries[:b], float_w[:b]),
        "float_slices": lambda: float_slices(x[:b]),
        "float_fastscan": lambda: float_fs(x[:b]),
    }
    # Warm-up: compile every kernel specialisation before timing; check exactness.
    for fn in single.values():
        fn(0)
    s_pop, i_pop = popcount(queries[:2], fixed_w[:2])
    s_fs, r_fs = fs_exact(queries[:2], fixed_w[:2])
    assert np.array_equal(index.keys[r_fs], i_pop), "fast-scan exact differs from popcount"
    assert np.allclose(s_fs, s_pop, rtol=1e-6, atol=1e-6)
    if b:
        for fn in batch.values():
            fn()
    single_t: dict[str, list[float]] = {name: [] for name in single}
    batch_t: dict[str, list[float]] = {name: [] for name in batch}
    for _ in range(args.reps):
        per_query: dict[str, list[float]] = {name: [] for name in single}
        for j in range(args.queries):
            for name, fn in single.items():
                per_query[name].append(timed(lambda fn=fn, j=j: fn(j)))
        for name in single:
            single_t[name].append(median(per_query[name]))
        if b:
            for name, fn in batch.items():
                batch_t[name].append(timed(fn))
    res = {
        "n": n,
        "planes": planes,
        "m": m,
        "weights": weights,
        "layout_convert_s": convert_s,
        "single_ms": {name: 1e3 * median(t) for name, t in single_t.items()},
        "batch": b,
        "batch_ms": {name: 1e3 * median(t) for name, t in batch_t.items()} if b else None,
    }
    # Speed ratios from the per-repetition times (interleaved), then their median.
    pairs = {
        "fastscan_exact/popcount": ("fastscan_exact", "popcount"),
        "sdc_bytes/popcount": ("sdc_bytes", "popcount"),
        "fastscan_quantized/popcount": ("fastscan_quantized", "popcount_float_weights"),
        "float_fastscan/float_slices": ("float_fastscan", "float_slices"),
        "float_fastscan/popcount": ("float_fastscan", "popcount"),
    }
    res["single_speed_ratio"] = {
        label: median(np.asarray(single_t[base]) / np.asarray(single_t[new]))
        for label, (new, base) in pairs.items()
    }
    if b:
        res["batch_speed_ratio"] = {
            label: median(np.asarray(batch_t[base]) / np.asarray(batch_t[new]))
            for label, (new, base) in pairs.items()
            if new in batch_t and base in batch_t
        }
    # Recall@K of the approximate paths (over the batch queries, or --queries).
    nr = max(b, args.queries)
    _, want = popcount(queries[:nr], float_w[:nr])
    res["recall"] = {}
    for c in (1, 2, RESCORE):
        _, rows = fastscan_topk(
            layout, queries[:nr], float_w[:nr], K, index.keys, norms, threads=th, rescore_factor=c
        )
        res["recall"][f"quantized_c{c}"] = recall(index.keys[rows], want)
    nf = min(nr, args.float_recall_queries)
    _, want_f = index.search_float(x[:nf], K, method="tables", threads=th)
    _, got = index.search_float(x[:nf], K, method="slices", bits=4, threads=th)
    res["recall"]["float_slices_4bit"] = recall(got, want_f)
    for c in (1, 2, RESCORE):
        _, rows = fastscan_topk_float(
            layout, x[:nf], K, index.keys, norms, threads=th, rescore_factor=c
        )
        res["recall"][f"float_fastscan_c{c}"] = recall(index.keys[rows], want_f)
    return res


def machine() -> dict:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "avx2_kernel": HAS_AVX2,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "load_average_start": os.getloadavg(),
    }


def markdown(res: dict) -> str:
    mach = res["machine"]
    lines = [
        "# SDC: fast-scan nibble tables vs the popcount kernel",
        "",
        f"`{res['command']}` — {res['date']}, median of {res['reps']} repetitions "
        f"(single query: median of {res['queries']} queries per repetition), k = {K}, "
        f"{res['threads']} threads, cosine.",
        "",
        f"Machine: {mach['cpu']} ({mach['cores']} cores), AVX2 fast-scan kernel: "
        f"{mach['avx2_kernel']}, numba {mach['numba']}. Load average at start "
        f"{', '.join(f'{v:.1f}' for v in mach['load_average_start'])}, at end "
        f"{', '.join(f'{v:.1f}' for v in res['load_average_end'])} (other jobs share the cores).",
        "",
        "Speed ratio = time of the baseline / time of the new path, per repetition "
        "(interleaved), median: > 1 means the new path is faster. `fs exact` uses "
        "fixed query weights 2^-p (exact tables: the same top-k and scores as popcount); "
        f"`fs quant` uses weights off the power-of-two grid (int8 tables, k x {RESCORE} "
        "re-scored by popcounts) and is compared with popcount at those weights; "
        f"`float fs` scores a float query by quantized tables (k x {RESCORE} re-scored "
        "exactly) and is compared with the 4-bit sliced query (`slices`).",
        "",
        "## Single query (ms)",
        "",
        "| N | shape | weights | popcount | SDC bytes | fs exact | fs quant | slices | float fs "
        "| **fs exact / popcount** | SDC bytes / popcount | fs quant / popcount | float fs / slices "
        "| float fs / popcount |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["shapes"]:
        s, q = r["single_ms"], r["single_speed_ratio"]
        lines.append(
            f"| {r['n']:,} | {r['planes']} x {r['m']} | {r['weights']} | {s['popcount']:.2f} "
            f"| {s['sdc_bytes']:.2f} | {s['fastscan_exact']:.2f} | {s['fastscan_quantized']:.2f} "
            f"| {s['float_slices']:.2f} | {s['float_fastscan']:.2f} "
            f"| **{q['fastscan_exact/popcount']:.2f}** | {q['sdc_bytes/popcount']:.2f} "
            f"| {q['fastscan_quantized/popcount']:.2f} | {q['float_fastscan/float_slices']:.2f} "
            f"| {q['float_fastscan/popcount']:.2f} |"
        )
    if any(r["batch"] for r in res["shapes"]):
        lines += [
            "",
            f"## Batch of {res['shapes'][0]['batch']} queries (ms per batch)",
            "",
            "| N | shape | weights | popcount | fs exact | fs quant | slices | float fs "
            "| **fs exact / popcount** | fs quant / popcount | float fs / slices | float fs / popcount |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["shapes"]:
            s, q = r["batch_ms"], r["batch_speed_ratio"]
            lines.append(
                f"| {r['n']:,} | {r['planes']} x {r['m']} | {r['weights']} | {s['popcount']:.1f} "
                f"| {s['fastscan_exact']:.1f} | {s['fastscan_quantized']:.1f} "
                f"| {s['float_slices']:.1f} | {s['float_fastscan']:.1f} "
                f"| **{q['fastscan_exact/popcount']:.2f}** "
                f"| {q['fastscan_quantized/popcount']:.2f} | {q['float_fastscan/float_slices']:.2f} "
                f"| {q['float_fastscan/popcount']:.2f} |"
            )
    lines += [
        "",
        f"## Recall@{K} of the approximate paths (random codes and queries)",
        "",
        "Quantized code queries against the exact popcount ranking at the same weights; "
        'float queries against the exact float ranking (`search_float(method="tables")`). '
        "`cC` = C x k candidates re-scored exactly (c1: the quantized ranking itself, re-scored).",
        "",
        "| shape | weights | quant c1 | quant c2 | quant c4 | slices 4-bit | float fs c1 | float fs c2 | float fs c4 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["shapes"]:
        c = r["recall"]
        lines.append(
            f"| {r['planes']} x {r['m']} | {r['weights']} | {c['quantized_c1']:.3f} "
            f"| {c['quantized_c2']:.3f} | {c['quantized_c4']:.3f} | {c['float_slices_4bit']:.3f} "
            f"| {c['float_fastscan_c1']:.3f} | {c['float_fastscan_c2']:.3f} "
            f"| {c['float_fastscan_c4']:.3f} |"
        )
    lines += [
        "",
        "Layout conversion (packed codes to fast-scan blocks, numpy): "
        + ", ".join(
            f"{r['planes']} x {r['m']} {r['layout_convert_s']:.2f} s" for r in res["shapes"]
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 shapes at N = 1M (under 2 minutes)")
    parser.add_argument("--n", type=int, default=1_000_000, help="documents")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (>= 5)")
    parser.add_argument("--queries", type=int, default=3, help="single queries per repetition")
    parser.add_argument(
        "--batch", type=int, default=None, help="batch size (default 100, 20 with --quick; 0: none)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--float-recall-queries", type=int, default=10, help="float queries for the recall check"
    )
    parser.add_argument("--out", type=Path, default=REPO / "results" / "scan")
    args = parser.parse_args()
    args.reps = args.reps or 5
    if args.batch is None:
        args.batch = 20 if args.quick else 100
    if args.reps < 5:
        parser.error("--reps must be at least 5: figures are medians of >= 5 runs")
    if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
        parser.error(f"--threads must be in 1..{numba.config.NUMBA_NUM_THREADS}")
    rng = np.random.default_rng(0)
    started = time.time()
    command = "python benchmarks/sdc.py" + (" --quick" if args.quick else "")
    res: dict = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "reps": args.reps,
        "queries": args.queries,
        "threads": args.threads,
        "machine": machine(),
        "shapes": [],
    }
    shapes = [(1, 256), (1, 512), (2, 384), (4, 512)]
    runs = [(p, m, "fixed" if p == 1 else "per_document") for p, m in shapes]
    if not args.quick:
        runs += [(p, m, "per_document" if p == 1 else "fixed") for p, m in shapes]
    for planes, m, weights in runs:
        print(f"{planes} x {m} {weights}", flush=True)
        res["shapes"].append(bench_shape(rng, args.n, planes, m, weights, args))
        print(json.dumps(res["shapes"][-1]["single_speed_ratio"]), flush=True)
        gc.collect()
    res["load_average_end"] = os.getloadavg()
    res["seconds"] = time.time() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "sdc"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))
    print(f"{res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
