"""Batch and single-query scans against faiss and against today's kernels, in one run.

    python benchmarks/scan.py --batch            # or: python benchmarks/scan_batch.py
    python benchmarks/scan_batch.py --n 200000   # a quicker, smaller run
    python benchmarks/scan_batch.py --avx2       # our kernels compiled for an AVX2-only CPU

Rows (issue 14, targets rows 1-3), 1M random codes by default:

* 1 plane at 256 / 512 / 1024 bits: a single query and a batch of 100, ours
  (``method="exact"``: the kernel the index's chooser measured fastest; and
  each kernel by name) against ``faiss.IndexBinaryFlat`` at its best setting
  (1 or 2 threads, ``use_heap`` on or off, ``query_batch_size`` 32 or 128,
  picked per width on the warm-up and then timed with the rest);
* 2 x 384 bits with per-document scales, cosine, a batch of 100 with BEBR's
  query weights ``2**-p``: ours against today's kernels (``popcount`` and
  fast-scan ``sdc``, unchanged, run in the same process; today's ``auto``
  picked one of the two).

``--avx2`` re-runs this script with numba targeting Haswell (AVX2, no AVX-512;
``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES``), so our popcounts take the
``vpshufb`` path on this machine: the AVX2 figures where no AVX2-only machine
is at hand (faiss's wheel is one generic build, the same on both). Output:
``batch-avx2.json`` / ``.md``.

Every figure is the median of ``--reps`` repetitions, all compared figures
interleaved inside each repetition. Writes ``results/scan/batch.json`` and
``results/scan/batch.md`` with the CPU, its SIMD flags and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

# Idle OpenMP threads (faiss's libgomp) must sleep, not spin (see scan.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
from common import cpu_name, median, random_codes, timed  # noqa: E402

from index import BinaryIndex, KernelChooser  # noqa: E402
from index.impl.batch_kernels import LANES, POPCOUNT_PATH  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: LLVM features of an AVX2-only x86-64 target (Haswell), for ``--avx2``.
HASWELL = (
    "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+lzcnt,+mmx,+movbe,+popcnt,+sse,"
    "+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,-avx512f,-avx512vpopcntdq,-avx512bw,"
    "-avx512vl,-avx512dq"
)
FAISS_SETTINGS = [
    (threads, heap, qbs) for threads in (1, 2) for heap in (True, False) for qbs in (32, 128)
]


def cpu_flags() -> list[str]:
    """The AVX2 / AVX-512 flags of /proc/cpuinfo (the popcount paths depend on them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"\bavx512[a-z_]*|\bavx2\b", text)))


def load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


#: CPU seconds (all threads of this process) of the last :func:`clocked` call.
LAST_CPU: list[float] = [0.0]


def clocked(fn, *args, **kwargs) -> float:
    """Wall seconds of one call; its CPU seconds (every thread) go to :data:`LAST_CPU`.

    On a loaded machine wall times include waiting for a core; CPU time is the
    work itself, so the two ratios bracket what an idle machine would show.
    """
    cpu = time.process_time()
    wall = timed(fn, *args, **kwargs)
    LAST_CPU[0] = time.process_time() - cpu
    return wall


def faiss_run(flat, queries: np.ndarray, setting: tuple[int, bool, int]) -> float:
    threads, heap, qbs = setting
    faiss.omp_set_num_threads(threads)
    flat.use_heap = heap
    flat.query_batch_size = qbs
    return clocked(flat.search, queries, 10)


def bench_width(rng, n: int, m: int, reps: int, n_single: int, batch: int) -> dict:
    """One plane of ``m`` bits: single queries and a batch, ours and faiss at its best."""
    words = m // 64
    codes = random_codes(rng, n, 1, words)
    index = BinaryIndex(m, 1, "fixed", "ip", kernels=KernelChooser())
    index.add(codes, np.arange(n, dtype=np.int64))
    index.compact()  # one sealed segment, as after a load
    flat = faiss.IndexBinaryFlat(m)
    flat.add(codes.reshape(n, -1).view(np.uint8))
    del codes
    queries = random_codes(rng, max(batch, n_single), 1, words)
    fq = queries.reshape(len(queries), -1).view(np.uint8)
    single = [queries[j : j + 1] for j in range(n_single)]
    # warm-up: compile, measure the kernel choice, fault pages in; pick faiss's best
    index.search(single[0], 10)
    index.search(queries[:batch], 10)
    for method in ("popcount", "batch"):
        index.search(queries[:batch], 10, method=method)
        index.search(single[0], 10, method=method)
    best_single = min(
        FAISS_SETTINGS, key=lambda s: median(faiss_run(flat, fq[:1], s) for _ in range(3))
    )
    best_batch = min(FAISS_SETTINGS, key=lambda s: faiss_run(flat, fq[:batch], s))
    keys = ("batch_ours", "batch_popcount", "batch_batch", "batch_faiss")
    rows: dict[str, list[float]] = {k: [] for k in ("single_ours", "single_faiss", *keys)}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    single_cpu: dict[str, list[float]] = {
        "single_ours": [],
        "single_faiss": [],
        "single_popcount": [],
    }
    rows["single_popcount"] = []
    for _ in range(reps):
        for key, call in (
            ("single_ours", lambda j: clocked(index.search, single[j], 10)),
            ("single_popcount", lambda j: clocked(index.search, single[j], 10, method="popcount")),
            ("single_faiss", lambda j: faiss_run(flat, fq[j : j + 1], best_single)),
        ):
            walls, cpus = [], []
            for j in range(n_single):
                walls.append(call(j))
                cpus.append(LAST_CPU[0])
            rows[key].append(median(walls))
            single_cpu[key].append(median(cpus))
        for key, method in (
            ("batch_ours", "exact"),
            ("batch_popcount", "popcount"),
            ("batch_batch", "batch"),
        ):
            rows[key].append(clocked(index.search, queries[:batch], 10, method=method))
            cpu[key].append(LAST_CPU[0])
        rows["batch_faiss"].append(faiss_run(flat, fq[:batch], best_batch))
        cpu["batch_faiss"].append(LAST_CPU[0])
    faiss.omp_set_num_threads(numba.config.NUMBA_NUM_THREADS)
    ms = {k: 1e3 * median(v) for k, v in rows.items()}
    cpu_ms = {k: 1e3 * median(v) for k, v in (cpu | single_cpu).items()}
    chosen = index.kernels.measured
    return {
        "n": n,
        "m": m,
        "batch": batch,
        "ms": ms,
        "cpu_ms": cpu_ms,
        "batch_cpu_ratio_to_faiss": cpu_ms["batch_faiss"] / cpu_ms["batch_ours"],
        "faiss_best_single": best_single,
        "faiss_best_batch": best_batch,
        "kernel_choice": {json.dumps(list(k)): v for k, v in chosen.items()},
        "single_ratio_to_faiss": ms["single_faiss"] / ms["single_ours"],
        "single_cpu_ratio_to_faiss": cpu_ms["single_faiss"] / cpu_ms["single_ours"],
        "batch_ratio_to_faiss": ms["batch_faiss"] / ms["batch_ours"],
        "batch_speedup_vs_popcount": ms["batch_popcount"] / ms["batch_ours"],
        # pair popcounts per second: n * batch * words 64-bit popcounts
        "batch_Gwords_per_s": n * batch * words / (ms["batch_ours"] / 1e3) / 1e9,
    }


def bench_multi_plane(rng, n: int, reps: int, batch: int, m: int = 384, planes: int = 2) -> dict:
    """2 x 384 bits, per-document scales, cosine: a batch with weights ``2**-p``."""
    words = (m + 63) // 64
    codes = random_codes(rng, n, planes, words)
    scales = (rng.random((n, planes)) * 0.5 + 0.5).astype(np.float32)
    scales[:, 0] += 2
    index = BinaryIndex(m, planes, "per_document", "cosine", kernels=KernelChooser())
    index.add(codes, np.arange(n, dtype=np.int64), scales)
    index.compact()
    del codes, scales
    queries = random_codes(rng, batch, planes, words)
    methods = ("exact", "fast", "popcount", "sdc", "batch")
    for method in methods:
        index.search(queries, 10, method=method)
    got = {method: index.search(queries, 10, method=method) for method in methods}
    for method in ("exact", "batch"):
        assert np.array_equal(got[method][1], got["popcount"][1]), method
    rows: dict[str, list[float]] = {method: [] for method in methods}
    cpu: dict[str, list[float]] = {method: [] for method in methods}
    for _ in range(reps):
        for method in methods:
            rows[method].append(clocked(index.search, queries, 10, method=method))
            cpu[method].append(LAST_CPU[0])
    ms = {k: 1e3 * median(v) for k, v in rows.items()}
    cpu_ms = {k: 1e3 * median(v) for k, v in cpu.items()}
    today = min(ms["popcount"], ms["sdc"])
    return {
        "n": n,
        "m": m,
        "planes": planes,
        "batch": batch,
        "ms": ms,
        "cpu_ms": cpu_ms,
        "cpu_speedup_vs_today": min(cpu_ms["popcount"], cpu_ms["sdc"]) / cpu_ms["exact"],
        "today_ms": today,
        "speedup_vs_today": today / ms["exact"],
        "speedup_vs_popcount": ms["popcount"] / ms["exact"],
        "speedup_vs_sdc": ms["sdc"] / ms["exact"],
        "kernel_choice": {json.dumps(list(k)): v for k, v in index.kernels.measured.items()},
    }


def markdown(res: dict) -> str:
    out = [
        "# Batch scans: ours vs faiss IndexBinaryFlat and vs today's kernels",
        "",
        f"CPU: {res['cpu']}; flags: {', '.join(res['flags']) or 'none'}; popcount path: "
        f"`{res['popcount_path']}`, {res['lanes']} queries per SIMD group; faiss SIMD level "
        f"`{res['faiss_simd_level']}`; "
        f"{res['threads']} threads; load {res['load_before']} before, {res['load_after']} after.",
        f"Command: `{res['command']}`; medians of {res['reps']} repetitions.",
        "",
        "| 1 plane, n = {:,} | 256 bits | 512 bits | 1024 bits |".format(res["n"]),
        "|---|---|---|---|",
    ]
    widths = res["one_plane"]

    def row(label: str, fn) -> str:
        return f"| {label} | " + " | ".join(fn(w) for w in widths) + " |"

    out += [
        row(
            "single query: ours ms / faiss best ms",
            lambda w: "{:.2f} / {:.2f}".format(w["ms"]["single_ours"], w["ms"]["single_faiss"]),
        ),
        row(
            "single query: speed vs faiss best (target >= 1.3x)",
            lambda w: f"{w['single_ratio_to_faiss']:.2f}x",
        ),
        row(
            "single query: today's popcount kernel ms (CPU ms)",
            lambda w: "{:.2f} ({:.2f})".format(
                w["ms"]["single_popcount"], w["cpu_ms"]["single_popcount"]
            ),
        ),
        row(
            "single query: CPU ms ours / faiss",
            lambda w: "{:.2f} / {:.2f}".format(
                w["cpu_ms"]["single_ours"], w["cpu_ms"]["single_faiss"]
            ),
        ),
        row(
            "single query: CPU-time ratio faiss / ours",
            lambda w: f"{w['single_cpu_ratio_to_faiss']:.2f}x",
        ),
        row(
            f"batch of {widths[0]['batch']}: ours ms / faiss best ms",
            lambda w: "{:.1f} / {:.1f}".format(w["ms"]["batch_ours"], w["ms"]["batch_faiss"]),
        ),
        row(
            "batch: speed vs faiss best (target >= 2x)",
            lambda w: f"{w['batch_ratio_to_faiss']:.2f}x",
        ),
        row(
            "batch: CPU ms (all threads) ours / faiss",
            lambda w: "{:.1f} / {:.1f}".format(
                w["cpu_ms"]["batch_ours"], w["cpu_ms"]["batch_faiss"]
            ),
        ),
        row(
            "batch: CPU-time ratio faiss / ours", lambda w: f"{w['batch_cpu_ratio_to_faiss']:.2f}x"
        ),
        row("batch: today's popcount kernel ms", lambda w: f"{w['ms']['batch_popcount']:.1f}"),
        row("batch: speed vs today's popcount", lambda w: f"{w['batch_speedup_vs_popcount']:.2f}x"),
        row("batch: 64-bit word popcounts / s (G)", lambda w: f"{w['batch_Gwords_per_s']:.1f}"),
    ]
    mp = res["multi_plane"]
    out += [
        "",
        f"| {mp['planes']} x {mp['m']} bits, per-document scales, cosine, batch of {mp['batch']} "
        f"| ms | CPU ms |",
        "|---|---|---|",
    ]
    for method in ("exact", "batch", "fast", "popcount", "sdc"):
        out.append(f'| `method="{method}"` | {mp["ms"][method]:.1f} | {mp["cpu_ms"][method]:.1f} |')
    out += [
        "",
        f"Speed vs today's best of popcount and fast-scan (today's `auto` picked one of "
        f"them): **{mp['speedup_vs_today']:.2f}x** (target >= 3x); vs popcount "
        f"{mp['speedup_vs_popcount']:.2f}x, vs sdc {mp['speedup_vs_sdc']:.2f}x; in CPU time "
        f"{mp['cpu_speedup_vs_today']:.2f}x.",
        "",
        "faiss settings (threads, use_heap, query_batch_size) picked on the warm-up: "
        + "; ".join(
            f"{w['m']} bits single {tuple(w['faiss_best_single'])}, batch "
            f"{tuple(w['faiss_best_batch'])}"
            for w in widths
        ),
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="codes per index (default 1M)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per figure (>= 3)")
    parser.add_argument("--single", type=int, default=20, help="single queries per repetition")
    parser.add_argument("--batch", type=int, default=100, help="queries per batch")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "scan")
    parser.add_argument(
        "--avx2", action="store_true", help="compile our kernels for an AVX2-only CPU (Haswell)"
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.avx2 and os.environ.get("NUMBA_CPU_FEATURES") != HASWELL:
        # numba reads its target when imported: start again with the Haswell target
        # and faiss's dynamic dispatch at its AVX2 level (faiss/utils/simd_levels.cpp reads
        # FAISS_SIMD_LEVEL at import), so both sides run AVX2 code
        env = {
            **os.environ,
            "NUMBA_CPU_NAME": "haswell",
            "NUMBA_CPU_FEATURES": HASWELL,
            "FAISS_SIMD_LEVEL": "AVX2",
        }
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], env)
    if args.reps < 3 or args.n < 1000 or args.batch < 2 or args.single < 1:
        parser.error("need --reps >= 3, --n >= 1000, --batch >= 2, --single >= 1")
    rng = np.random.default_rng(0)
    res = {
        "cpu": cpu_name(),
        "flags": cpu_flags(),
        "popcount_path": POPCOUNT_PATH or "none",
        "faiss_simd_level": faiss.SIMDConfig.get_level_name(),
        "lanes": LANES,
        "threads": int(numba.config.NUMBA_NUM_THREADS),
        "n": args.n,
        "reps": args.reps,
        "command": "python benchmarks/scan_batch.py " + " ".join(argv),
        "load_before": load(),
    }
    res["one_plane"] = []
    for m in (256, 512, 1024):
        res["one_plane"].append(bench_width(rng, args.n, m, args.reps, args.single, args.batch))
        print(json.dumps(res["one_plane"][-1]["ms"]), flush=True)
    res["multi_plane"] = bench_multi_plane(rng, args.n, args.reps, args.batch)
    print(json.dumps(res["multi_plane"]["ms"]), flush=True)
    res["load_after"] = load()
    args.out.mkdir(parents=True, exist_ok=True)
    name = "batch-avx2" if args.avx2 else "batch"
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
