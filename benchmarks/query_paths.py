"""Query-sized encoder calls: ONNX Runtime against torch, per batch size, in one run.

The service coalesces concurrent text queries into one encoder call (at most
``ONNX_MAX_TEXTS`` texts today, all on ONNX Runtime fp32). This measures what a
call of ``n`` query texts costs on each path -- ONNX Runtime fp32, ONNX Runtime
fp32 on one thread (two such callers side by side would serve twice its
texts/s), ONNX Runtime fp32 in lanes (the call split across threads, one
single-threaded run each), torch fp32, torch bf16 -- for several ``n``, interleaved (order alternating per round), so
that the crossover batch size is a measurement of this machine, not a guess.
Texts: the bundled Cranfield queries, cycled.

    flock /tmp/binsearch-bench.lock python benchmarks/query_paths.py

Writes ``results/encode/query_paths/{query_paths.json,report.md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import cpu_name, median  # noqa: E402

from binsearch.encoder import Encoder  # noqa: E402
from binsearch.encoder import precision as P  # noqa: E402

QUERIES = REPO / "binsearch" / "data" / "cranfield" / "queries.jsonl"
OUT = REPO / "results" / "encode" / "query_paths"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,4,8,16,32", help="texts per call")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--calls", type=int, default=6, help="calls per path per round (6)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ORT threads (2)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    texts = [json.loads(x)["text"] for x in QUERIES.read_text().splitlines()]
    enc = Encoder(backend="torch", precision="fp32")
    onnx = Encoder(backend="onnx").onnx_encoder()
    from binsearch.encoder.onnx_runtime import OnnxEncoder

    one = OnnxEncoder(onnx.directory, threads=1)
    lanes = OnnxEncoder(onnx.directory, threads=args.threads, lanes=args.threads)
    onnx = OnnxEncoder(onnx.directory, threads=args.threads)
    bf16 = P.to_precision(enc.model, "bf16")
    paths = {
        "onnx-fp32": lambda t: onnx.encode(t, batch_size=len(t)),
        "onnx-fp32-1thread": lambda t: one.encode(t, batch_size=len(t)),
        "onnx-fp32-lanes": lambda t: lanes.encode(t, batch_size=len(t)),
        "torch-fp32": lambda t: P.encode_normalized(enc.model, t, len(t)),
        "torch-bf16": lambda t: P.encode_normalized(bf16, t, len(t)),
    }
    sizes = [int(x) for x in args.sizes.split(",")]
    load_before = os.getloadavg()
    times: dict[tuple[str, int], list[float]] = {}
    start_text = 0
    for fn in paths.values():  # warm-up
        fn(texts[:8])
    for r in range(args.rounds):
        for n in sizes:
            names = list(paths) if r % 2 == 0 else list(paths)[::-1]
            for name in names:
                for _ in range(args.calls):
                    batch = [texts[(start_text + i) % len(texts)] for i in range(n)]
                    start_text += n
                    t0 = time.perf_counter()
                    paths[name](batch)
                    times.setdefault((name, n), []).append(time.perf_counter() - t0)
    rows = []
    for n in sizes:
        row = {"texts": n}
        for name in paths:
            ms = 1000 * median(times[(name, n)])
            row[name] = {"ms_per_call": ms, "texts_per_s": n / (ms / 1000)}
        row["fastest"] = min(paths, key=lambda p: row[p]["ms_per_call"])
        rows.append(row)
    result = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "torch": torch.__version__,
        "rows": rows,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "query_paths.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Query-sized encoder calls: ONNX Runtime vs torch, per batch size",
        "",
        f"{result['cpu']}, {args.threads} threads, torch {torch.__version__}. Load average "
        f"before {'/'.join(f'{x:.1f}' for x in load_before)}, after "
        f"{'/'.join(f'{x:.1f}' for x in result['load_after'])}. Median ms per call over "
        f"{args.rounds} rounds x {args.calls} calls, paths interleaved.",
        "",
        "| texts per call | " + " | ".join(f"{p} ms (texts/s)" for p in paths) + " | fastest |",
        "|---:|" + "---:|" * len(paths) + "---|",
    ]
    for row in rows:
        cells = [f"{row[p]['ms_per_call']:.1f} ({row[p]['texts_per_s']:.0f})" for p in paths]
        lines.append(f"| {row['texts']} | " + " | ".join(cells) + f" | {row['fastest']} |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
