"""``report.md`` of ``benchmarks/collection.py``: issue 10's targets table from ``results.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import median

MB = 1e6


def _med(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for name in path:
            value = None if value is None else value.get(name)
        if value is not None:
            values.append(float(value))
    return median(values) if values else None


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def _yes(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _pq(s: dict[str, float] | None) -> str:
    return "n/a" if not s else f"{s['p50']:.2f} / {s['p99']:.2f}"


def _segments(rows: list[int] | None) -> str:
    if not rows:
        return "n/a"
    big = [r for r in rows if r >= 100_000]
    small = len(rows) - len(big)
    text = " + ".join(f"{r / 1e3:.0f}k" for r in big)
    return f"{len(rows)}: {text}" + (f" + {small} small" if small else "")


def payload_mb(n: int, dim: int, planes: int) -> dict[str, float]:
    """Bytes the index must hold for ``n`` documents: codes, int64 ids, float32 scales (MB)."""
    words = -(-dim // 64)
    return {
        "codes": n * planes * words * 8 / MB,
        "ids": n * 8 / MB,
        "scales": n * planes * 4 / MB,
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what, target, new (median), old (median), met."""
    n = results["docs"]
    big = n >= 10_000_000
    serve = {k: [r for r in v if r["run"] > 0] for k, v in results.get("serve", {}).items()}
    api = results.get("api", {})
    new, old = serve.get("new", []), serve.get("old", [])
    pay = payload_mb(n, results["dim"], results["planes"])
    rss_limit = 2500.0 if big else sum(pay.values()) + 350
    rows = []

    def row(what: str, target: str, new_v: float | None, old_v: float | None, ok: Any) -> None:
        rows.append({"what": what, "target": target, "new": new_v, "old": old_v, "met": ok})

    rss_new, rss_old = _med(new, "rss_after_ready", "VmRSS"), _med(old, "rss_after_ready", "VmRSS")
    row(
        "server RSS once ready, model loaded (MB)",
        f"<= {rss_limit:,.0f}"
        + (
            ""
            if big
            else f" (codes {pay['codes']:.0f} + ids {pay['ids']:.0f} + scales "
            f"{pay['scales']:.0f} + 350)"
        ),
        rss_new,
        rss_old,
        None if rss_new is None else rss_new <= rss_limit,
    )
    limit = 10.0 if big else 2.0
    ready_new, ready_old = _med(new, "model_loaded_s"), _med(old, "model_loaded_s")
    row(
        "open to ready: spawn of `binsearch serve` to /ready 200 with the model (s)",
        f"<= {limit:g}",
        ready_new,
        ready_old,
        None if ready_new is None else ready_new <= limit,
    )
    row(
        "  of which the server's own load (index_loaded event, s)",
        "",
        _med(new, "server_log_load_s"),
        _med(old, "server_log_load_s"),
        None,
    )
    bare = results.get("serve_without_model", {})
    row(
        "  without the model (BINSEARCH_WARM_MODEL=false): spawn to /ready 200 (s)",
        "",
        _med(bare.get("new", []), "ready_s"),
        _med(bare.get("old", []), "ready_s"),
        None,
    )
    row(
        "  without the model: server RSS once ready (MB)",
        "",
        _med(bare.get("new", []), "rss_after_ready", "VmRSS"),
        _med(bare.get("old", []), "rss_after_ready", "VmRSS"),
        None,
    )
    row(
        "  CPU seconds the server used up to then (load-independent)",
        "",
        _med(new, "model_loaded_cpu_s"),
        _med(old, "model_loaded_cpu_s"),
        None,
    )
    first_new = _med(new, "first_write_ms")
    row(
        "first write after ready (HTTP, ms)",
        "<= 100",
        first_new,
        _med(old, "first_write_ms"),
        None if first_new is None else first_new <= 100,
    )
    snap_limit = 1.0 if big else 0.5
    snap_new = _med(new, "snapshot", "client_s")
    bytes_new = _med(new, "snapshot", "storage_bytes")
    ok = None if snap_new is None else snap_new <= snap_limit
    if big and ok is not None and bytes_new is not None:
        ok = ok and bytes_new <= 10 * MB
    row(
        f"POST /snapshot after {results['writes']:,} single-document writes (s)",
        f"<= {snap_limit:g}" + (", writing <= 10 MB" if big else ""),
        snap_new,
        _med(old, "snapshot", "client_s"),
        ok,
    )
    for key, what in (
        ("storage_bytes", "  bytes the snapshot sent to storage (/proc/PID/io write_bytes, MB)"),
        ("file_bytes", "  size of files it created or rewrote, database aside (MB)"),
    ):
        a, b = _med(new, "snapshot", key), _med(old, "snapshot", key)
        row(
            what,
            "<= 10" if big and key == "storage_bytes" else "",
            None if a is None else a / MB,
            None if b is None else b / MB,
            None,
        )
    for where, runs_new, runs_old in (
        ("HTTP", new, old),
        ("Python API", api.get("new", []), api.get("old", [])),
    ):
        for q, limit_ms in (("p50", 15.0), ("p99", 50.0)):
            value = _med(runs_new, "write_ms", q)
            row(
                f"1-document write {q}, fsync on, {where} (ms)",
                f"<= {limit_ms:g}",
                value,
                _med(runs_old, "write_ms", q),
                None if value is None else value <= limit_ms,
            )
    how = results.get("build", {}).get("new", {}).get("how")
    build_new = results.get("build", {}).get("new", {}).get("seconds")
    build_old = results.get("build", {}).get("old", {}).get("seconds")
    row(
        f"build: {how}, wall (s)"
        if how
        else "`binsearch index --embeddings` (old: `build_index(embeddings=)`), wall (s)",
        "report it" if big else "<= 60",
        build_new,
        build_old,
        None if build_new is None or big or how else build_new <= 60,
    )
    for where, runs_new, runs_old, key in (
        ("HTTP, on the opened collection", new, old, "search_ms"),
        ("HTTP, after the writes + snapshot", new, old, "search_after_writes_ms"),
        (
            "Collection.search (old: Store.search)",
            api.get("new", []),
            api.get("old", []),
            "search_ms",
        ),
    ):
        for q in ("p50", "p99"):
            a, b = _med(runs_new, key, q), _med(runs_old, key, q)
            row(
                f"single vector query {q}, k=10, {where} (ms)",
                "not worse than old",
                a,
                b,
                None if a is None or b is None else a <= b * 1.10,  # 10 %: the noise of a busy box
            )
    return rows


def write_report(results: dict[str, Any], path: Path) -> None:
    """Write the markdown report: machine, targets table, per-run figures, write breakdown."""
    m = results["machine"]
    rows = targets(results)
    n = results["docs"]
    lines = [
        f"# Collection targets (issue 10), {n:,} documents",
        "",
        f"Synthetic collection: {n:,} documents, {results['dim']}-d random unit embeddings, "
        f"residual codec x{results['planes']} planes, ~600-byte texts. New code "
        f"`{results['new_commit']}` (SQLite documents + segments) against old "
        f"`{results['old_commit']}` (documents.jsonl in memory, JSON log) in the same run.",
        "",
        f"Machine: {m['cpu']} ({m['cores']} cores, {m['cpu_flags']}), "
        f"{m['memory_gb']:.0f} GiB RAM, Python {m['python']}, numpy {m['numpy']}. "
        f"Load average at start {results['load_start']}, at end {results['load_end']} "
        "(a shared machine: other engineers' jobs ran meanwhile).",
        "",
        f"Medians over {results['repeats']} server starts (after one unmeasured warm-up start); "
        f"each start: first write (straight after ready), {results['queries']} single vector queries, "
        f"{results['writes']:,} single-document writes (fsync on), POST /snapshot, the queries "
        "again; both servers run side by side and every request goes to one, then the same "
        "to the other, so both see the same load. Python API: one process per layout and run "
        "(new, old, old, new), the same sequence. "
        "`met` for search: new <= old x 1.10.",
        "",
        "| what | target | new | old (12ffa0d) | met |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['what']} | {r['target']} | {_fmt(r['new'], digits=2)} | "
            f"{_fmt(r['old'], digits=2)} | {_yes(r['met'])} |"
        )
    lines += ["", "## Every server start", ""]
    lines += [
        "| layout | run | segments (rows) | ready s | model s | RSS MB (anon / file) | "
        "first write ms | write p50/p99 ms | snapshot s (MB) | search p50/p99 ms | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, runs in results.get("serve", {}).items():
        for r in runs:
            rss = r["rss_after_ready"]
            snap = r["snapshot"]
            written = snap.get("storage_bytes")
            lines.append(
                f"| {kind} | {r['run']}{' (warm-up)' if r['run'] == 0 else ''} | "
                f"{_segments(r.get('segments_at_start'))} | {r['ready_s']:.2f} | {r['model_loaded_s']:.2f} | {rss['VmRSS']:.0f} "
                f"({rss.get('RssAnon', 0):.0f} / {rss.get('RssFile', 0):.0f}) | "
                f"{r['first_write_ms']:.1f} | {r['write_ms']['p50']:.1f} / "
                f"{r['write_ms']['p99']:.1f} | {snap['client_s']:.3f} "
                f"({_fmt(None if written is None else written / MB, digits=1)}) | "
                f"{_pq(r.get('search_ms'))} | {r['load']} |"
            )
    api = results.get("api", {})
    if api:
        lines += ["", "## Python API (one process per layout and run: new, old, old, new)", ""]
        lines += [
            "| layout | open s | write p50/p99 ms | snapshot s | search p50/p99 ms | "
            "after writes p50/p99 ms | peak RSS MB | load |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for kind, runs in api.items():
            for a in runs:
                lines.append(
                    f"| {kind} | {a['open_s']:.2f} | {a['write_ms']['p50']:.2f} / "
                    f"{a['write_ms']['p99']:.2f} | {a['snapshot']['client_s']:.3f} | "
                    f"{_pq(a.get('search_ms'))} | {_pq(a.get('search_after_writes_ms'))} | "
                    f"{a['peak_rss_mb']:.0f} | "
                    f"{a.get('load')} |"
                )
        parts = [a["write_parts_ms"] for a in api.get("new", []) if "write_parts_ms" in a]
        if parts:
            lines += [
                "",
                "New `Collection.add` of one document, step by step (ms, "
                f"{parts[0]['encode']['n']} writes per process, median of {len(parts)} processes):",
                "",
                "| step | p50 | p99 | mean |",
                "|---|---|---|---|",
            ]
            for name in parts[0]:
                p50 = median(x[name]["p50"] for x in parts)
                p99 = median(x[name]["p99"] for x in parts)
                mean = median(x[name]["mean"] for x in parts)
                lines.append(f"| {name} | {p50:.2f} | {p99:.2f} | {mean:.2f} |")
    anatomy = results.get("start_anatomy")
    if anatomy:
        lines += [
            "",
            "## Where a start of the new server goes",
            "",
            "The steps `binsearch serve` takes before /ready, one by one in a plain process "
            f"(median of {len(anatomy)}; RSS after the step):",
            "",
            "| step | seconds | RSS MB | of which anonymous MB |",
            "|---|---|---|---|",
        ]
        for i, first in enumerate(anatomy[0]):
            secs = median(run[i]["seconds"] for run in anatomy)
            if "VmRSS" in first:
                rss = median(run[i]["VmRSS"] for run in anatomy)
                anon = median(run[i]["RssAnon"] for run in anatomy)
                lines.append(f"| {first['step']} | {secs:.2f} | {rss:.0f} | {anon:.0f} |")
            else:
                lines.append(f"| {first['step']} | {secs:.2f} | | |")
    builds = results.get("build", {})
    if builds:
        lines += ["", "## Building", ""]
        lines += [
            "| layout | wall s | CPU s (user + sys) | peak RSS MB | bytes on disk (GB) | load |",
            "|---|---|---|---|---|---|",
        ]
        for kind, b in builds.items():
            cpu = _fmt(b.get("cpu_seconds"))
            lines.append(
                f"| {kind} | {b['seconds']:.1f} | {cpu} | {_fmt(b.get('peak_rss_mb'), digits=0)} | "
                f"{_fmt(b['bytes'] / 1e9 if 'bytes' in b else None, digits=2)} | {b.get('load')} |"
            )
    lines += [
        "",
        "Reproduce: `git worktree add /tmp/binsearch-old 12ffa0d && "
        f".venv/bin/python benchmarks/collection.py {results.get('command', f'--docs {n}')}`",
        "",
    ]
    path.write_text("\n".join(lines))
