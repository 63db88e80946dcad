"""Scan speed of the varwidth codes against today's equal-width grid shapes, at equal stored bits.

For each width the grid's shape (planes x dims, its 8-plane queries) and the
varwidth code (one plane of concatenated planes, its 16-plane queries) are
scanned over the same number of documents with random codes of the right
shape (speed depends on the shape only), through the path eval and the
collection use (``CodedIndex.topk``: for the grid, query codes and
``index.search(method="fast")``; for varwidth, float queries by fast-scan
nibble tables with exact re-scoring). The varwidth codes' previous path (16
query planes by popcount, ``varwidth-16pl``) and two outside baselines run in
the same process: faiss ``IndexBinaryFlat`` (Hamming, the same stored bits) and
numpy float32 exact search (``x @ q``, then ``argpartition``). Queries are
SciFact's judged queries. Medians of repeated runs, compile and kernel-choice
measurements kept out.

Run: ``flock /tmp/binsearch-bench.lock python benchmarks/varwidth_scan.py``;
writes ``results/quality/varwidth/scan.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from common import cpu_name, median, random_codes, timed

from binsearch.codes.grid import GridCodec
from binsearch.codes.varwidth import VarWidthCodec
from binsearch.collection.coded_index import CodedIndex
from binsearch.eval.quality import load_embeddings
from index import BinaryIndex

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
# Today's grid shapes (results/quality/report.md) and the varwidth budget at those bits.
SHAPES = [
    (1, 2, 192, True, 448),  # bits/dim, grid planes, grid dims, centred (2 scales), varwidth bits
    (2, 4, 192, False, 768),
    (4, 6, 256, False, 1536),
]


def grid_index(codec: GridCodec, n: int, rng: np.random.Generator) -> BinaryIndex:
    index = BinaryIndex(codec.m, codec.planes, codec.scaling, codec.metric)
    codes = random_codes(rng, n, codec.planes, -(-codec.m // 64))
    scales = None
    if codec.scaling == "per_document":
        scales = rng.uniform(0.5, 1.5, (n, codec.planes)).astype(np.float32)
    index.add(codes, np.arange(n, dtype=np.int64), scales)
    return index


def baselines(
    x: np.ndarray, q: np.ndarray, bits: int, rng: np.random.Generator
) -> dict[str, tuple[Any, Any]]:
    """faiss binary flat at ``bits`` stored bits and numpy float32 exact search: (fn, arg)."""
    import faiss

    flat = faiss.IndexBinaryFlat(bits)
    flat.add(rng.integers(0, 256, (x.shape[0], bits // 8), dtype=np.uint8))
    qb = rng.integers(0, 256, (q.shape[0], bits // 8), dtype=np.uint8)

    def numpy_topk(qq: np.ndarray) -> np.ndarray:
        s = qq @ x.T
        return np.argpartition(-s, 10, axis=1)[:, :10]

    return {
        "faiss-binary-flat": (lambda a: flat.search(a, 10), qb),
        "numpy-float32": (numpy_topk, q),
    }


def time_call(fn: Any, arg: Any, repeats: int) -> float:
    for _ in range(3):  # compile, kernel choice, warm caches
        fn(arg)
    return median(timed(fn, arg) for _ in range(repeats))


def row(bits: int, name: str, shape: str, codec: Any, index: Any, batch: int, secs: float) -> dict:
    return {
        "bits_per_dim": bits,
        "codec": name,
        "shape": shape,
        "query_planes": "float" if name == "varwidth" else codec.query_planes,
        "bits_per_vector": index.bits_per_vector,
        "batch": batch,
        "ms_per_query": 1000 * secs / batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(REPO / "results" / "quality" / "varwidth"))
    args = parser.parse_args()
    data = load_embeddings(DATA / "scifact", DATA / "scifact" / "embeddings" / "all-MiniLM-L6-v2")
    rng = np.random.default_rng(0)
    d = data.corpus.shape[1]
    rows = []
    load_start = os.getloadavg()
    x = rng.standard_normal((args.docs, d)).astype(np.float32)
    for bits, planes, m, centred, budget in SHAPES:
        rot = np.linalg.qr(rng.standard_normal((d, d)))[0][:, :m].astype(np.float32)
        grid = GridCodec(rot, planes, center=data.corpus.mean(0) if centred else None)
        vw = VarWidthCodec.fit(data.corpus, budget, max_rows=3000)
        runs = [("grid", grid, grid_index(grid, args.docs, rng))]
        vw_index = grid_index(vw, args.docs, rng)
        runs += [("varwidth", vw, vw_index), ("varwidth-16pl", vw, vw_index)]
        for name, codec, index in runs:
            coded = CodedIndex(codec, index)
            for batch in (1, 64):
                q = data.queries[:batch]
                if name == "varwidth-16pl":  # the previous path: 16 query planes by popcount

                    def fn(qq: np.ndarray, coded: CodedIndex = coded) -> Any:
                        words, weights = coded.query_codes(qq)
                        return coded.index.search(words, 10, weights, method="fast")
                else:
                    fn = functools.partial(coded.topk, k=10)
                secs = time_call(fn, q, args.repeats)
                rows.append(row(bits, name, f"{codec.planes}x{codec.m}", codec, index, batch, secs))
                print(rows[-1], flush=True)
        for name, (fn, arg) in baselines(x, data.queries[:64], vw.m, rng).items():
            for batch in (1, 64):
                secs = time_call(fn, arg[:batch], args.repeats)
                shape = f"{vw.m} bits" if name.startswith("faiss") else f"{d} floats"
                rows.append(
                    {
                        "bits_per_dim": bits,
                        "codec": name,
                        "shape": shape,
                        "query_planes": 0,
                        "bits_per_vector": vw.m if name.startswith("faiss") else 32 * d,
                        "batch": batch,
                        "ms_per_query": 1000 * secs / batch,
                    }
                )
                print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    meta = {
        "docs": args.docs,
        "cpu": cpu_name(),
        "loadavg_start": load_start,
        "loadavg": load,
        "repeats": args.repeats,
    }
    (out / "scan.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"Scan of {args.docs:,} documents, k=10, `CodedIndex.topk` (method fast), "
        f"median of {args.repeats}; CPU {meta['cpu']} (avx2 avx512f/bw/vl avx512_vpopcntdq), "
        f"load average at the start {load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f}, "
        f"at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}. Command: "
        "`flock /tmp/binsearch-bench.lock python benchmarks/varwidth_scan.py`.\n",
        "| bits/dim | codec | shape | query planes | bits/vector | batch | ms/query | speed vs grid |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = next(
            g["ms_per_query"]
            for g in rows
            if g["codec"] == "grid"
            and g["bits_per_dim"] == r["bits_per_dim"]
            and g["batch"] == r["batch"]
        )
        speed = f"{ref / r['ms_per_query']:.2f}x" if r["codec"] != "grid" else ""
        lines.append(
            f"| {r['bits_per_dim']} | {r['codec']} | {r['shape']} | {r['query_planes']} | "
            f"{r['bits_per_vector']:,} | {r['batch']} | {r['ms_per_query']:.3f} | {speed} |"
        )
    (out / "scan.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
