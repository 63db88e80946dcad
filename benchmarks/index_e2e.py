"""``binsearch index`` end to end on SciFact: a baseline checkout against this one.

Runs the command line as a user does (a fresh process per run, model load,
encoding, coding, SQLite, the serving preparation), alternating the two sides
per round so load drift hits both alike, and reports each run's wall time and
the per-round ratio. The baseline is another checkout of the project (e.g. the
integrator's main) run with ``--baseline-precision`` (default fp32: what
``binsearch index`` ran before precisions); this checkout runs ``--precision``
(default auto). One untimed warm-up run per side first fills the per-machine
caches (precision choice, ONNX export, scan kernels) that every later run reads.

Timed figures on a shared machine under the bench lock::

    flock /tmp/binsearch-bench.lock python benchmarks/index_e2e.py --baseline-src ../main --docs 1000

Writes ``results/encode/index_e2e/{index_e2e.json,report.md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import cpu_name, median  # noqa: E402

DATA = Path(os.environ.get("BINSEARCH_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "results" / "encode" / "index_e2e"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return [f for f in FLAGS if f in have]


def run_index(src: Path, corpus: Path, precision: str, work: Path) -> tuple[float, float, str]:
    """Wall and CPU seconds of one ``binsearch index`` run from checkout ``src``, and
    its last line."""
    out = work / "collection"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "binsearch.cli", "index", str(corpus), "--out", str(out)]
    cmd += ["--precision", precision]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=src, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"index failed ({src}): {proc.stderr[-2000:]}")
    lines = [x for x in proc.stderr.splitlines() if x.startswith("indexed ")]
    last = lines[-1].replace(str(out), "<out>") if lines else ""
    return wall, cpu, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True, help="baseline checkout")
    parser.add_argument("--baseline-precision", default="fp32", help="baseline --precision")
    parser.add_argument("--precision", default="auto", help="this checkout's --precision")
    parser.add_argument("--docs", type=int, default=0, help="first N abstracts (0: all 5,183)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    args = parser.parse_args()
    lines = (DATA / "scifact" / "corpus.jsonl").read_text().splitlines()
    lines = lines[: args.docs] if args.docs else lines
    sides = {
        "baseline": (args.baseline_src.resolve(), args.baseline_precision),
        "this": (REPO, args.precision),
    }
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "corpus.jsonl"
        corpus.write_text("\n".join(lines[:64]) + "\n")
        for src, precision in sides.values():  # warm-up: caches filled, not timed
            run_index(src, corpus, precision, work)
        corpus.write_text("\n".join(lines) + "\n")
        load_before = os.getloadavg()
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for side in order:
                src, precision = sides[side]
                wall, cpu, last = run_index(src, corpus, precision, work)
                runs.append({"round": r, "side": side, "wall_s": wall, "cpu_s": cpu, "line": last})
                print(f"round {r} {side} ({precision}): {wall:.1f} s, CPU {cpu:.1f} s", flush=True)
        load_after = os.getloadavg()
    ratios, cpu_ratios = [], []
    for r in range(args.rounds):
        by = {x["side"]: x for x in runs if x["round"] == r}
        ratios.append(by["this"]["wall_s"] / by["baseline"]["wall_s"])
        cpu_ratios.append(by["this"]["cpu_s"] / by["baseline"]["cpu_s"])
    result = {
        "cpu": cpu_name(),
        "flags": flags(),
        "cores": os.cpu_count(),
        "documents": len(lines),
        "baseline": {"precision": args.baseline_precision},
        "this": {"precision": args.precision},
        "runs": runs,
        "ratios": ratios,
        "median_ratio": median(ratios),
        "cpu_ratios": cpu_ratios,
        "median_cpu_ratio": median(cpu_ratios),
        "load_before": load_before,
        "load_after": load_after,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index_e2e.json").write_text(json.dumps(result, indent=1))
    (args.out / "report.md").write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    rows = [
        f"| {x['round'] + 1} | {x['side']} | {x['wall_s']:.1f} | {x['cpu_s']:.1f} | "
        f"{x['line'].split(' into ')[0]} {x['line'].split(' with ')[-1]} |"
        for x in r["runs"]
    ]
    load = "/".join(f"{v:.1f}" for v in r["load_before"])
    load2 = "/".join(f"{v:.1f}" for v in r["load_after"])
    return "\n".join(
        [
            "# `binsearch index` end to end on SciFact",
            "",
            f"{r['cpu']}, {r['cores']} cores, flags {' '.join(r['flags'])}. "
            f"{r['documents']:,} abstracts. Baseline `--precision {r['baseline']['precision']}`"
            f" against this checkout's `--precision {r['this']['precision']}`, alternating. "
            f"Load average (1/5/15 min) before {load}, after {load2}.",
            "",
            "| round | side | wall s | CPU s | the command's last line |",
            "|---:|---|---:|---:|---|",
            *rows,
            "",
            "Per-round ratio (this / baseline): "
            + ", ".join(f"{x:.3f}" for x in r["ratios"])
            + f"; median **{r['median_ratio']:.3f}**. CPU seconds (this / baseline): "
            + ", ".join(f"{x:.3f}" for x in r["cpu_ratios"])
            + f"; median {r['median_cpu_ratio']:.3f}.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
