"""Two trees' ``serve.py --no-old`` runs side by side: requests per second and latency by point.

    python benchmarks/serve_compare.py BEFORE.json [...] -- AFTER.json [...]

Each file is one ``results.json`` of ``benchmarks/serve.py --no-old`` run in one tree;
alternate the trees' runs under one lock so both see the same load.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def points(path: Path) -> dict[tuple[str, int], dict]:
    """``(kind, clients) -> row`` of one run."""
    return {(r["kind"], r["clients"]): r for r in json.loads(path.read_text())["rows"]}


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit(__doc__)
    cut = argv.index("--")
    before = [points(Path(p)) for p in argv[:cut]]
    after = [points(Path(p)) for p in argv[cut + 1 :]]
    print(
        "| query | clients | before req/s (runs) | after req/s (runs) | after / before | ", end=""
    )
    print("before p50 / p99 ms | after p50 / p99 ms |")
    print("|---|---:|---|---|---:|---|---|")
    for key in before[0]:
        b, a = [r[key] for r in before if key in r], [r[key] for r in after if key in r]
        rb, ra = [r["rps"] for r in b], [r["rps"] for r in a]
        ratio = statistics.median(ra) / statistics.median(rb)

        def lat(rows: list[dict]) -> str:
            p50 = statistics.median(r["p50_ms"] for r in rows)
            return f"{p50:.1f} / {statistics.median(r['p99_ms'] for r in rows):.1f}"

        runs_b = " / ".join(f"{x:.0f}" for x in rb)
        runs_a = " / ".join(f"{x:.0f}" for x in ra)
        print(f"| {key[0]} | {key[1]} | {runs_b} | {runs_a} | {ratio:.2f} | {lat(b)} | {lat(a)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
