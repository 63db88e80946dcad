"""The grid codec's per-row scale search: the original sweep against ``grid_kernel``'s.

CPU time per row (``time.process_time``, one numba thread, compile and cache
loading kept out by a first call), on Gaussian rows and on SciFact's
embeddings (rotated as the codec does), at the shapes the codec picks for
384-d embeddings; checks that both give the same levels and cosines, bit for
bit. Writes ``results/eval/grid_kernel.json``.

Run: ``flock /tmp/binsearch-bench.lock python benchmarks/grid_kernel.py``
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "test_codes"))
from test_grid_kernel import original_levels  # noqa: E402  (the original, kept verbatim)

from binsearch.codes.grid import grid_levels  # noqa: E402
from binsearch.codes.grid_fit import itq_rotation, pca_basis  # noqa: E402

SHAPES = [(2, 192), (4, 192), (4, 384), (6, 256)]  # (planes, dimensions)


def cpu_per_row(fn, z: np.ndarray, planes: int, repeats: int = 3) -> float:
    fn(z[:2], planes)
    times = []
    for _ in range(repeats):
        started = time.process_time()
        fn(z, planes)
        times.append(time.process_time() - started)
    return float(np.median(times)) / len(z) * 1e6


def rows(kind: str, m: int, n: int) -> np.ndarray:
    if kind == "gaussian":
        return np.random.default_rng(m).standard_normal((n, m))
    data = Path(os.environ.get("BINSEARCH_DATA", REPO.parent / "shared" / "data"))
    x = np.load(data / "scifact" / "embeddings" / "all-MiniLM-L6-v2" / "corpus.npy")[:n]
    x = x.astype(np.float64)
    if m == x.shape[1]:
        return x @ itq_rotation(x, iters=10)
    basis = pca_basis(x, m)
    return (x @ basis) @ itq_rotation(x @ basis, iters=10)


def main() -> int:
    numba.set_num_threads(1)
    out = []
    for kind in ("gaussian", "scifact"):
        for planes, m in SHAPES:
            z = np.ascontiguousarray(rows(kind, m, 2000))
            old = cpu_per_row(original_levels, z, planes)
            new = cpu_per_row(grid_levels, z, planes)
            same = all(
                np.array_equal(a, b)
                for a, b in zip(original_levels(z, planes), grid_levels(z, planes), strict=True)
            )
            out.append(
                {"rows": kind, "planes": planes, "dims": m, "original_us": round(old, 1),
                 "fast_us": round(new, 1), "speedup": round(old / new, 2), "bit_identical": same}
            )  # fmt: skip
            print(out[-1], flush=True)
    result = {"load_at_end": os.getloadavg()[0], "threads": 1, "rows_per_case": 2000, "cases": out}
    path = REPO / "results" / "eval" / "grid_kernel.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
