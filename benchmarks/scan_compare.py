"""Two trees' ``scan.py --quick`` runs side by side: the headline figures, runs and ratio of medians.

    python benchmarks/scan_compare.py BEFORE.json [BEFORE2.json ...] -- AFTER.json [AFTER2.json ...]

Every figure is a ratio measured within its own run (ours against faiss or the
machine's read of the same bytes), so runs at different loads compare better
than raw milliseconds would; still, quote the load of each run beside them.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def headline(path: Path) -> dict[str, float]:
    """The figures of one ``scan.py --quick`` JSON, by name."""
    d = json.loads(path.read_text())
    out: dict[str, float] = {}
    for r in d["one_plane"]:
        name = f"1-plane {r['m']} bits"
        out[f"{name}, single query: ratio to faiss best"] = r["ratio_to_faiss_best"]
        out[f"{name}, single query: ratio to 2-thread read"] = r["ratio_best_to_bandwidth_2t"]
        out[f"{name}, batch of 100: faiss / ours"] = r["batch"]["ratio_to_faiss_best"]
        out[f"{name}, float query: speed / symmetric"] = r["asymmetric_speed_vs_symmetric"][
            "fastscan"
        ]
    for r in d["multi_plane"]:
        name = f"{r['planes']} x {r['m']}, single query"
        out[f"{name}: fast-scan speed / popcount"] = r["sdc_exact_speed_vs_popcount"]
        out[f"{name}: fast-scan ratio to 2-thread read"] = r["sdc_exact_ratio_to_bandwidth_2t"]
    return out


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit(__doc__)
    cut = argv.index("--")
    before = [headline(Path(p)) for p in argv[:cut]]
    after = [headline(Path(p)) for p in argv[cut + 1 :]]
    print("| figure | before (runs) | after (runs) | after / before (medians) |")
    print("|---|---|---|---|")
    for name in before[0]:
        b = [r[name] for r in before if name in r]
        a = [r[name] for r in after if name in r]
        ratio = statistics.median(a) / statistics.median(b)
        runs_b = " / ".join(f"{x:.2f}" for x in b)
        runs_a = " / ".join(f"{x:.2f}" for x in a)
        print(f"| {name} | {runs_b} | {runs_a} | {ratio:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
