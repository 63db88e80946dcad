"""Updates to a segmented BinaryIndex: add, remove, compaction, incremental saves, mmap.

    python benchmarks/updates.py --quick        # N = 1M, under 2 minutes
    python benchmarks/updates.py                # N = 1M for adds, 10M for saves and search
    python benchmarks/updates.py --big 13       # also: a 13 GB index on disk, opened by mmap

Measures, on random 1-plane codes (``--m`` bits, default 256):

- add throughput (documents/s) for batches of 1, 100 and 10k new ids into an
  index of N documents, and for batches of 100 that replace existing ids;
- ``get`` / ``contains`` of 100 ids (first call, which sorts the base ids once,
  and later calls);
- remove throughput and the time of ``compact()`` after 10 % of rows are deleted;
- ``save`` of the whole index into a new directory against ``save`` into the
  same directory after adding 10 documents (only the new segment is written);
- search time with the N documents split into several segments (and with
  tombstones), as a ratio to one segment: medians of ``--reps`` repetitions,
  measured interleaved;
- with ``--big GB``: an index of that size written to disk segment by segment
  (never all in memory), opened with ``load(mmap=True)`` and searched, with the
  process's resident memory (anonymous and file-backed) before and after.

Writes ``results/updates/updates.json`` and ``updates.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np
from common import median, random_codes, timed

import index.segments
from index import BinaryIndex

REPO = Path(__file__).resolve().parents[1]


def rss() -> dict[str, float]:
    """Resident memory of this process in GiB: total, anonymous, file-backed (/proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 2**20
    return out


def make_index(n: int, m: int, rng: np.random.Generator) -> BinaryIndex:
    """An index of ``n`` random documents, ids a random permutation (one sealed segment)."""
    idx = BinaryIndex(m, 1, "fixed", "ip", compaction="off")
    idx.add(random_codes(rng, n, 1, m // 64), rng.permutation(n).astype(np.int64))
    return idx


def bench_adds(n: int, m: int, rng: np.random.Generator, budget: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    w = m // 64
    for batch, label in ((1, "new, batch 1"), (100, "new, batch 100"), (10_000, "new, batch 10k")):
        idx = make_index(n, m, rng)
        total, elapsed, next_id = 0, 0.0, n
        codes = random_codes(rng, batch, 1, w)
        while elapsed < budget:
            ids = np.arange(next_id, next_id + batch, dtype=np.int64)
            elapsed += timed(lambda i=idx, c=codes, ids=ids: i.add(c, ids))
            total += batch
            next_id += batch
        out[label] = {"docs": total, "seconds": elapsed, "docs_per_s": total / elapsed}
    idx = make_index(n, m, rng)
    idx.add(random_codes(rng, 1, 1, w), np.array([n]))  # a tail exists, the base ids are sorted
    out["get 100 ids, first call"] = {"ms": 1e3 * timed(lambda: idx.get(np.arange(100)))}
    out["get 100 ids"] = {
        "ms": 1e3 * median(timed(lambda: idx.get(rng.integers(0, n, 100))) for _ in range(20))
    }
    out["contains 100 ids"] = {
        "ms": 1e3 * median(timed(lambda: idx.contains(rng.integers(0, n, 100))) for _ in range(20))
    }
    total, elapsed = 0, 0.0
    codes = random_codes(rng, 100, 1, w)
    while elapsed < budget:
        ids = rng.choice(n, size=100, replace=False).astype(np.int64)
        elapsed += timed(lambda i=idx, c=codes, ids=ids: i.add(c, ids))
        total += 100
    out["replace, batch 100"] = {"docs": total, "seconds": elapsed, "docs_per_s": total / elapsed}
    return out


def bench_remove(n: int, m: int, rng: np.random.Generator) -> dict[str, Any]:
    idx = make_index(n, m, rng)
    doomed = rng.choice(n, size=n // 10, replace=False).astype(np.int64)
    batches = np.array_split(doomed, 100)
    elapsed = sum(timed(lambda b=b: idx.remove(b)) for b in batches)
    compact = timed(idx.compact)
    idx = make_index(n, m, rng)
    single = [timed(lambda i=i: idx.remove(np.array([i]))) for i in doomed[:200].tolist()]
    return {
        "remove 10% in batches of 1%/100": {"docs_per_s": len(doomed) / elapsed},
        "remove one id": {"ms": 1e3 * median(single)},
        "compact() after 10% deleted": {"seconds": compact},
    }


def bench_save(n: int, m: int, rng: np.random.Generator, tmp: Path) -> dict[str, Any]:
    idx = make_index(n, m, rng)
    full_dir = tmp / "save-full"
    full = timed(lambda: idx.save(full_dir))
    size = sum(f.stat().st_size for f in full_dir.iterdir())
    before = {f.name for f in full_dir.iterdir()}
    idx.add(random_codes(rng, 10, 1, m // 64), np.arange(n, n + 10))
    incremental = timed(lambda: idx.save(full_dir))
    new = [f for f in full_dir.iterdir() if f.name not in before or f.name == "manifest.json"]
    written = sum(f.stat().st_size for f in new)
    # the old way: everything rewritten (a save into a fresh directory)
    rewrite = timed(lambda: idx.save(tmp / "save-rewrite"))
    reload = timed(lambda: BinaryIndex.load(full_dir, mmap=True, verify=False))
    shutil.rmtree(full_dir)
    shutil.rmtree(tmp / "save-rewrite")
    return {
        "n": n,
        "index bytes": size,
        "save, fresh directory (s)": full,
        "save after adding 10 (s)": incremental,
        "bytes written after adding 10": written,
        "full rewrite after adding 10 (s)": rewrite,
        "speed-up": rewrite / incremental,
        "load(mmap=True, verify=False) (s)": reload,
    }


def split_index(idx: BinaryIndex, parts: int, dead: float, rng: np.random.Generator) -> BinaryIndex:
    """The documents of ``idx`` as ``parts`` sealed segments, ``dead`` of the rows tombstoned."""
    codes, ids = idx.codes, idx.keys
    n = len(ids)
    saved = index.segments.SEGMENT_ROWS, index.segments.MAX_SEGMENTS
    index.segments.SEGMENT_ROWS, index.segments.MAX_SEGMENTS = max(1, n // parts), parts + 1
    try:
        out = BinaryIndex(idx.m, 1, "fixed", "ip", compaction="off")
        for chunk in np.array_split(np.arange(n), parts):
            out.add(codes[chunk], ids[chunk])
    finally:
        index.segments.SEGMENT_ROWS, index.segments.MAX_SEGMENTS = saved
    if dead:
        out.remove(rng.choice(ids, size=int(dead * n), replace=False))
    return out


def bench_search(n: int, m: int, rng: np.random.Generator, reps: int) -> dict[str, Any]:
    base = make_index(n, m, rng)
    variants = {
        "1 segment": base,
        "4 segments": split_index(base, 4, 0.0, rng),
        "16 segments": split_index(base, 16, 0.0, rng),
        "4 segments, 10% dead": split_index(base, 4, 0.1, rng),
        "1 segment + tail of 1000": split_index(base, 1, 0.0, rng),
    }
    tail = variants["1 segment + tail of 1000"]
    tail.add(random_codes(rng, 1000, 1, m // 64), np.arange(n, n + 1000))
    out: dict[str, Any] = {}
    for nq in (1, 100):
        queries = random_codes(rng, nq, 1, m // 64)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for idx in variants.values():  # warm-up: compile, fault pages in
            idx.search(queries, 10)
        for _ in range(reps):
            for name, idx in variants.items():
                times[name].append(timed(lambda i=idx, q=queries: i.search(q, 10)))
        ref = times["1 segment"]
        out[f"nq={nq}"] = {
            name: {
                "segments": variants[name].segment_count,
                "ms": 1e3 * median(t),
                "ratio_to_1_segment": median(a / b for a, b in zip(t, ref, strict=True)),
            }
            for name, t in times.items()
        }
    return out


def bench_big(gb: float, m: int, rng: np.random.Generator, folder: Path, reps: int) -> dict:
    """Write ~``gb`` GB of index to ``folder`` one segment at a time, then mmap and search it."""
    w = m // 64
    per_doc = 8 * w + 8  # codes + id
    n_total = int(gb * 1e9 / per_doc)
    chunk = min(n_total, int(1e9 / per_doc))  # ~1 GB in memory at a time
    start = time.perf_counter()
    written = 0
    idx = BinaryIndex(m, 1, "fixed", "ip", compaction="off")
    while written < n_total:
        size = min(chunk, n_total - written)
        idx.add(random_codes(rng, size, 1, w), np.arange(written, written + size, dtype=np.int64))
        idx.save(folder)  # writes only the new segment
        written += size
        del idx
        gc.collect()
        idx = BinaryIndex.load(folder, mmap=True, verify=False)  # drop it from memory
    del idx
    gc.collect()
    build = time.perf_counter() - start
    disk = sum(f.stat().st_size for f in folder.iterdir())
    for file in folder.iterdir():  # evict our (clean, fsynced) pages: the first query is cold
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    memory = {"before load": rss()}
    opened = time.perf_counter()
    idx = BinaryIndex.load(folder, mmap=True, verify=False)
    opened = time.perf_counter() - opened
    memory["after load"] = rss()
    queries = random_codes(rng, 1, 1, w)
    first = timed(lambda: idx.search(queries, 10))
    memory["after first search"] = rss()
    times = [timed(lambda: idx.search(queries, 10)) for _ in range(reps)]
    memory["after searches"] = rss()
    more = timed(lambda: idx.add(random_codes(rng, 100, 1, w), np.arange(n_total, n_total + 100)))
    save = timed(lambda: idx.save(folder))
    memory["after add 100 + save"] = rss()
    return {
        "documents": n_total,
        "bytes on disk": disk,
        "segments": idx.segment_count,
        "build seconds": build,
        "load(mmap=True, verify=False) seconds": opened,
        "first query seconds (cold: pages evicted)": first,
        "query seconds (median)": median(times),
        "scan GB/s (median query)": disk / median(times) / 1e9,
        "add 100 then save seconds": more + save,
        "memory GiB": memory,
        "machine RAM GB": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Updates to a segmented index",
        "",
        f"`{res['command']}` on {res['date']} ({res['minutes']:.1f} minutes), "
        f"{res['machine']}, numba {res['numba']}, {res['threads']} threads. "
        f"Load average at start {res['load_average_start']}, at end {res['load_average_end']} "
        "(the machine is shared: absolute times are noisy, ratios less so). "
        f"1-plane {res['m']}-bit codes, `ip` metric.",
        "",
        f"## Adds into an index of {res['n']:,} documents",
        "",
        "| operation | documents/s or time |",
        "|---|---|",
    ]
    for name, v in res["adds"].items():
        value = f"{v['docs_per_s']:,.0f} docs/s" if "docs_per_s" in v else f"{v['ms']:.3f} ms"
        lines.append(f"| {name} | {value} |")
    lines += ["", "## Removes and compaction", "", "| operation | result |", "|---|---|"]
    for name, v in res["remove"].items():
        if "docs_per_s" in v:
            lines.append(f"| {name} | {v['docs_per_s']:,.0f} docs/s |")
        elif "ms" in v:
            lines.append(f"| {name} | {v['ms']:.3f} ms |")
        else:
            lines.append(f"| {name} | {v['seconds']:.3f} s |")
    s = res["save"]
    lines += [
        "",
        f"## Saving {s['n']:,} documents ({s['index bytes'] / 1e6:.0f} MB)",
        "",
        "| save | seconds | bytes written |",
        "|---|---|---|",
        f"| fresh directory (everything) | {s['save, fresh directory (s)']:.3f} | "
        f"{s['index bytes']:,} |",
        f"| same directory after adding 10 (new segment only) | "
        f"{s['save after adding 10 (s)']:.4f} | {s['bytes written after adding 10']:,} |",
        f"| full rewrite after adding 10 | {s['full rewrite after adding 10 (s)']:.3f} | "
        f"{s['index bytes']:,} |",
        "",
        f"Incremental save {s['speed-up']:.0f}x faster than a full rewrite; "
        f"`load(mmap=True, verify=False)` {s['load(mmap=True, verify=False) (s)'] * 1e3:.1f} ms.",
        "",
        f"## Search over several segments ({res['search_n']:,} documents, k = 10, "
        f"medians of {res['reps']})",
        "",
        "| layout | segments | single query ms | ratio | 100 queries ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    one, hundred = res["search"]["nq=1"], res["search"]["nq=100"]
    for name in one:
        a, b = one[name], hundred[name]
        lines.append(
            f"| {name} | {a['segments']} | {a['ms']:.2f} | {a['ratio_to_1_segment']:.2f} | "
            f"{b['ms']:.1f} | {b['ratio_to_1_segment']:.2f} |"
        )
    if "big" in res:
        b = res["big"]
        mem = b["memory GiB"]
        lines += [
            "",
            f"## A {b['bytes on disk'] / 1e9:.1f} GB index opened with `load(mmap=True)`",
            "",
            f"{b['documents']:,} documents in {b['segments']} segments, written one segment "
            f"at a time in {b['build seconds']:.0f} s; machine RAM {b['machine RAM GB']:.1f} GB. "
            f"Open {b['load(mmap=True, verify=False) seconds'] * 1e3:.1f} ms; first query "
            f"{b['first query seconds (cold: pages evicted)']:.2f} s (its pages evicted from "
            "the page cache first: read from disk); then "
            f"{b['query seconds (median)']:.2f} s per query "
            f"({b['scan GB/s (median query)']:.1f} GB/s); add 100 + save "
            f"{b['add 100 then save seconds']:.2f} s.",
            "",
            "| moment | VmRSS GiB | anonymous GiB | file-backed GiB |",
            "|---|---|---|---|",
        ]
        for moment, v in mem.items():
            lines.append(
                f"| {moment} | {v['VmRSS']:.2f} | {v['RssAnon']:.2f} | {v['RssFile']:.2f} |"
            )
        lines += [
            "",
            "File-backed pages are the OS page cache mapped into the process: the kernel",
            "drops them under memory pressure; anonymous memory is what the index holds.",
            "The first add reads every segment's ids once (to find a replaced id; the ids",
            "here are ascending, so no sort order is built).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1M everywhere (< 2 minutes)")
    parser.add_argument("--n", type=int, default=1_000_000, help="documents for the add figures")
    parser.add_argument("--m", type=int, default=256, help="bits per code (multiple of 64)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per search figure (>= 5)")
    parser.add_argument("--big", type=float, default=0.0, help="GB of index for the mmap test")
    parser.add_argument("--tmp", type=Path, default=None, help="scratch directory (default: temp)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "updates")
    args = parser.parse_args()
    if args.reps < 5:
        parser.error("--reps must be at least 5")
    if args.m % 64:
        parser.error("--m must be a multiple of 64")
    big_n = args.n if args.quick else 10 * args.n
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    res: dict[str, Any] = {
        "command": "python benchmarks/updates.py "
        + " ".join(
            a
            for a in (
                "--quick" if args.quick else "",
                f"--big {args.big:g}" if args.big else "",
            )
            if a
        ),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "numba": numba.__version__,
        "threads": numba.config.NUMBA_NUM_THREADS,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "n": args.n,
        "search_n": big_n,
        "m": args.m,
        "reps": args.reps,
    }
    budget = 1.0 if args.quick else 3.0
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.big:  # first, so that the memory figures start from a small process
            print(f"big index of {args.big} GB ...", flush=True)
            folder = Path(tmp) / "big"
            try:
                res["big"] = bench_big(args.big, 1024, rng, folder, args.reps)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            gc.collect()
        print("adds ...", flush=True)
        res["adds"] = bench_adds(args.n, args.m, rng, budget)
        print("removes ...", flush=True)
        res["remove"] = bench_remove(args.n, args.m, rng)
        print("saves ...", flush=True)
        res["save"] = bench_save(big_n, args.m, rng, Path(tmp))
        gc.collect()
        print("search ...", flush=True)
        res["search"] = bench_search(big_n, args.m, rng, args.reps)
        gc.collect()
    res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    res["minutes"] = (time.perf_counter() - began) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "updates.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "updates.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
