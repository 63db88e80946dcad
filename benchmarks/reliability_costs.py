"""What the reliability changes of issue 23 cost: write throughput and open time.

Run by the same command on two checkouts (``--code`` puts one first on the
import path), in one process each, under the machine-wide benchmark lock::

    flock /tmp/binsearch-bench.lock python benchmarks/reliability_costs.py \
        --code . --code ../main --json results/reliability/costs.json

Measured per checkout (medians of ``--repeats``):

* ``add_1``: single-document adds (384-d, residual 2 bits), documents/s, with
  ``fsync=False`` so the figure is the CPU work of a write (journal CRC, the
  id lookups' confirmation), not the disk's fsync;
* ``add_100``: 100-document batches, documents/s, likewise;
* ``open_rw`` / ``open_ro``: seconds to open a 100,000-document collection
  (snapshotted, 1,000 single adds in its journal), writable and read-only,
  ``verify=False`` (the CRC pass over the index files is the same on both);
* ``change_crc_us``: one journal entry's CRC (one 384-d document), microseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 384


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(repeats: int, docs: int) -> dict[str, float]:
    from binsearch import Collection

    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="binsearch-costs-"))
    out: dict[str, list[float]] = {"add_1": [], "add_100": [], "open_rw": [], "open_ro": []}
    try:
        for r in range(repeats):
            c = Collection.create(root / f"w{r}", "residual", 2, model=None, dim=DIM, fsync=False)
            c.warm()
            x = unit(rng, 600)
            started = time.perf_counter()
            for i in range(300):
                c.add([f"s{i}"], embeddings=x[i : i + 1])
            out["add_1"].append(300 / (time.perf_counter() - started))
            started = time.perf_counter()
            for i in range(3):
                c.add(
                    [f"b{i}-{j}" for j in range(100)], embeddings=x[300 + 100 * i : 400 + 100 * i]
                )
            out["add_100"].append(300 / (time.perf_counter() - started))
            c.close()
        big = root / "big"
        c = Collection.create(big, "residual", 2, model=None, dim=DIM, fsync=False)
        with c.bulk():
            for start in range(0, docs, 10_000):
                n = min(10_000, docs - start)
                keys = np.arange(start, start + n, dtype=np.int64)
                c.add([f"d{k}" for k in keys], embeddings=unit(rng, n), keys=keys)
        extra = unit(rng, 1000)
        for i in range(1000):
            c.add([f"e{i}"], embeddings=extra[i : i + 1])
        c.close(snapshot=False)
        for _ in range(repeats):
            for key, readonly in (("open_ro", True), ("open_rw", False)):
                image = root / "image"
                shutil.rmtree(image, ignore_errors=True)
                shutil.copytree(big, image)
                started = time.perf_counter()
                opened = Collection.open(image, verify=False, readonly=readonly)
                out[key].append(time.perf_counter() - started)
                assert len(opened) == docs + 1000 and opened.replayed == 1000
                opened.close(snapshot=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {k: statistics.median(v) for k, v in out.items()}
    try:
        from binsearch.collection.docstore import change_crc
    except ImportError:
        result["change_crc_us"] = None
    else:
        codes = np.zeros((1, 2, DIM // 64), np.uint64).tobytes()
        scales = np.zeros((1, 2), np.float32).tobytes()
        key = np.zeros(1, np.int64).tobytes()
        started = time.perf_counter()
        for i in range(100_000):
            change_crc(i, "add", key, codes, scales)
        result["change_crc_us"] = (time.perf_counter() - started) / 100_000 * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", action="append", type=Path, help="a checkout to measure")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.repeats, args.docs)))
        return
    results = {}
    for code in args.code or [Path(".")]:
        env = {**os.environ, "PYTHONPATH": str(code.resolve())}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", "--repeats", str(args.repeats)]
            + ["--docs", str(args.docs)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=code,
        )
        results[str(code)] = json.loads(proc.stdout.strip().splitlines()[-1])
    report = {
        "results": results,
        "load_average": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "docs": args.docs,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
