"""Wall time of training on 100k embeddings (target: under 2 minutes for 4 planes on 2 cores).

Both learned codecs: the grid codec's fit (:func:`binsearch.codes.grid_fit.fit_grid`:
ITQ rotation, optimal grid, least-squares query map, candidates chosen on
held-out rows) and the recurrent binarizer's training (``--rbe``).

No 100k-row embedded corpus ships with the project, so the rows are SciFact's
MiniLM corpus embeddings repeated with small Gaussian jitter and renormalised:
the timing depends on the row count and width, not on the text. Each
configuration is timed ``--repeats`` times; the median is reported with the
time of coding all rows afterwards (``encode_documents``).

Run: ``python benchmarks/train_binarizer_time.py`` → ``results/quality/train_time.json``;
the varwidth codec's fit (:func:`binsearch.codes.varwidth.fit_varwidth`) at the
budgets of ``results/quality/varwidth``: ``--planes none --varwidth 448,768,1536
--out results/quality/varwidth/train_time.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import cpu_name

from binsearch.codes.grid_fit import fit_grid
from binsearch.codes.train_binarizer import TrainConfig, train_binarizer
from binsearch.codes.varwidth import VarWidthCodec

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "scifact" / "embeddings" / "all-MiniLM-L6-v2"


def timed_fit(
    fit: Callable[[], Any], encode: Callable[[Any], Any], repeats: int
) -> tuple[Any, dict[str, Any]]:
    """Time ``fit()`` then ``encode(model)`` ``repeats`` times: ``(last model, figures)``.

    CPU seconds beside wall seconds: on a shared machine the wall time measures
    the other jobs too.
    """
    fit_s, fit_cpu, code_s = [], [], []
    model = None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        model = fit()
        fit_s.append(time.perf_counter() - t)
        fit_cpu.append(time.process_time() - c)
        t = time.perf_counter()
        encode(model)
        code_s.append(time.perf_counter() - t)
    return model, {
        "train_seconds_median": float(np.median(fit_s)),
        "train_seconds": fit_s,
        "train_cpu_seconds_median": float(np.median(fit_cpu)),
        "encode_seconds_median": float(np.median(code_s)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--planes", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rbe", action="store_true", help="also time the recurrent binarizer")
    parser.add_argument(
        "--varwidth", default="", help="also time the varwidth fit at these bit budgets (448,768)"
    )
    parser.add_argument("--out", default=str(REPO / "results" / "quality" / "train_time.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = np.load(DATA / "corpus.npy")
    rng = np.random.default_rng(0)
    x = base[rng.integers(0, len(base), args.rows)]
    x = x + rng.normal(0, 0.02, x.shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    load_before = os.getloadavg()
    results = {"rows": args.rows, "dim": int(x.shape[1]), "threads": args.threads, "runs": []}
    grid_planes = [] if args.planes == "none" else list(map(int, args.planes.split(",")))
    for budget in [int(b) for b in args.varwidth.split(",") if b]:
        codec, row = timed_fit(
            lambda b=budget: VarWidthCodec.fit(x, b), lambda c: c.encode(x), args.repeats
        )
        row = {"codec": "varwidth", "bits_per_vector": codec.m, **row}
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
    for planes in grid_planes:
        codec, row = timed_fit(lambda p=planes: fit_grid(x, p), lambda c: c.encode(x), args.repeats)
        row = {"codec": "grid", "planes": planes, "chosen": codec.fit_report["chosen"], **row}
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
    for planes in grid_planes if args.rbe else []:
        _, row = timed_fit(
            lambda p=planes: train_binarizer(x, p, config=TrainConfig(), progress=False)[0],
            lambda model: model.encode_documents(x),
            args.repeats,
        )
        row = {"codec": "rbe", "planes": planes, **row}
        results["runs"].append(row)
        print(json.dumps(row), flush=True)
    results["cpu"] = cpu_name()
    results["load_before"] = load_before
    results["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
