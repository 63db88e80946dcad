"""Scan speed of the varwidth codes against today's equal-width grid shapes, at equal stored bits.

For each width the grid's shape (planes x dims, its 8-plane queries) and the
varwidth code (one plane of concatenated planes, its 16-plane queries) are
scanned over the same number of documents with random codes of the right
shape (speed depends on the shape only), through the path eval and the
collection use (``CodedIndex.topk``: query codes, then ``index.search``
with ``method="fast"``). Queries are SciFact's judged queries. Medians of
repeated runs, compile and kernel-choice measurements kept out.

Run: ``flock /tmp/binsearch-bench.lock python benchmarks/varwidth_scan.py``;
writes ``results/quality/varwidth/scan.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

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
    for bits, planes, m, centred, budget in SHAPES:
        rot = np.linalg.qr(rng.standard_normal((d, d)))[0][:, :m].astype(np.float32)
        grid = GridCodec(rot, planes, center=data.corpus.mean(0) if centred else None)
        vw = VarWidthCodec.fit(data.corpus, budget, max_rows=3000)
        for name, codec, index in (
            ("grid", grid, grid_index(grid, args.docs, rng)),
            ("varwidth", vw, grid_index(vw, args.docs, rng)),
        ):
            for batch in (1, 64):
                q = data.queries[:batch]
                coded = CodedIndex(codec, index)
                for _ in range(3):  # compile, kernel choice, warm caches
                    coded.topk(q, 10)
                secs = median(timed(coded.topk, q, 10) for _ in range(args.repeats))
                rows.append(
                    {
                        "bits_per_dim": bits,
                        "codec": name,
                        "shape": f"{codec.planes}x{codec.m}",
                        "query_planes": codec.query_planes,
                        "bits_per_vector": index.bits_per_vector,
                        "batch": batch,
                        "ms_per_query": 1000 * secs / batch,
                    }
                )
                print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    meta = {"docs": args.docs, "cpu": cpu_name(), "loadavg": load, "repeats": args.repeats}
    (out / "scan.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"Scan of {args.docs:,} documents, k=10, `CodedIndex.topk` (method fast), "
        f"median of {args.repeats}; CPU {meta['cpu']}, load average at the end "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}. Command: "
        "`flock /tmp/binsearch-bench.lock python benchmarks/varwidth_scan.py`.\n",
        "| bits/dim | codec | shape | query planes | bits/vector | batch | ms/query | varwidth vs grid |",
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
        speed = f"{ref / r['ms_per_query']:.2f}x" if r["codec"] == "varwidth" else ""
        lines.append(
            f"| {r['bits_per_dim']} | {r['codec']} | {r['shape']} | {r['query_planes']} | "
            f"{r['bits_per_vector']:,} | {r['batch']} | {r['ms_per_query']:.3f} | {speed} |"
        )
    (out / "scan.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
