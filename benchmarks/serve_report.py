"""The markdown report of ``benchmarks/serve.py``: today's rows beside the new ones."""

from __future__ import annotations

from typing import Any


def _get(rows: dict, tree: str, kind: str, clients: int) -> dict[str, Any]:
    return rows.get((tree, kind, clients), {})


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def targets(rows: dict) -> list[str]:
    """Issue 14's service targets, met or missed, from the medians of this run."""
    out = []
    v32, v8 = _get(rows, "new", "vector", 32), _get(rows, "new", "vector", 8)
    if v32:
        met = v32.get("rps", 0) >= 600 and v32.get("p99_ms", 1e9) <= 100
        out.append(
            f"- vector, 32 clients, >= 600 req/s and p99 <= 100 ms: {_f(v32.get('rps'))} req/s, "
            f"p99 {_f(v32.get('p99_ms'))} ms: **{'met' if met else 'missed'}**"
        )
    if v8:
        met = v8.get("p99_ms", 1e9) <= 20
        out.append(
            f"- vector, 8 clients, p99 <= 20 ms: p99 {_f(v8.get('p99_ms'))} ms: "
            f"**{'met' if met else 'missed'}**"
        )
    t_new, t_old = _get(rows, "new", "text", 32), _get(rows, "old", "text", 32)
    if t_new and t_old and t_old.get("rps"):
        ratio = t_new["rps"] / t_old["rps"]
        out.append(
            f"- text, 32 clients, >= 3x today's req/s: {_f(t_new['rps'])} vs {_f(t_old['rps'])} "
            f"req/s = {ratio:.2f}x: **{'met' if ratio >= 3 else 'missed'}**"
        )
    return out


def report(results: dict) -> str:
    m = results["machine"]
    rows = {(r["tree"], r["kind"], r["clients"]): r for r in results["rows"]}
    lines = [
        "# Search service under load: today's code beside the new",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, CPU flags "
        f"{' '.join(m['flags'])}; {m['os']}, Python {m['python']}.",
        f"Load: `{results['uptime_at_start']}` at the start, `{results['uptime_at_end']}` at "
        "the end (the cores are shared with other engineers' jobs: read absolute figures as "
        "pessimistic, the ratios of one run as the result).",
        f"Index: {results['docs']:,} synthetic documents, residual codec, 384 dims x 2 planes = "
        f"768 code bits ({results.get('bits_per_vector', '-')} stored bits per vector with the "
        "scales); text queries (Cranfield's) encoded by all-MiniLM-L6-v2 in the server.",
        f"Today's = {results['old_commit']} (its own index layout, built by its own code from "
        f"the same vectors; uvicorn's h11 and asyncio as then); new = {results['new_commit']}. "
        f"Each point: {results['repeats']} runs per tree, the trees alternating, each run at "
        f"most {results['duration_s']} s and {results['max_requests']:,} requests; medians.",
        "",
        "| query | clients | today req/s | new req/s | new/today | today p50 / p99 ms "
        "| new p50 / p99 ms | new encode / scan / queue / outside ms | server CPU ms/req "
        "today / new | client CPU ms/req | client share of cores | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    kinds = []
    for r in results["rows"]:
        if (r["kind"], r["clients"]) not in kinds:
            kinds.append((r["kind"], r["clients"]))
    for kind, clients in kinds:
        old, new = _get(rows, "old", kind, clients), _get(rows, "new", kind, clients)
        ratio = new["rps"] / old["rps"] if old.get("rps") and new.get("rps") else None
        lines.append(
            f"| {kind} | {clients} | {_f(old.get('rps'))} | {_f(new.get('rps'))} "
            f"| {_f(ratio, 2)}x | {_f(old.get('p50_ms'))} / {_f(old.get('p99_ms'))} "
            f"| {_f(new.get('p50_ms'))} / {_f(new.get('p99_ms'))} "
            f"| {_f(new.get('encode_ms_mean'))} / {_f(new.get('search_ms_mean'))} / "
            f"{_f(new.get('queue_ms_mean'))} / {_f(new.get('outside_ms_mean'))} "
            f"| {_f(old.get('server_cpu_ms_per_req'), 2)} / "
            f"{_f(new.get('server_cpu_ms_per_req'), 2)} "
            f"| {_f(new.get('client_cpu_ms_per_req'), 2)} | {_f(new.get('client_share'), 2)} "
            f"| {old.get('errors', '-')} / {new.get('errors', '-')} |"
        )
    lines += [
        "",
        "encode / scan / queue ms: the server's own per-request timings (means): the shared "
        "encoder call and scan each request rode in, and its wait for them (the window "
        "included). outside ms: client-measured latency minus those (HTTP, JSON, the event "
        "loop, and waiting for a core). CPU ms/req: the server process's (all threads) and "
        "the load generator's CPU over the run per answered request; share of cores: the "
        "load generator's CPU over wall time x cores.",
        "",
        "## Targets (issue 14, service)",
        "",
        *targets(rows),
        "",
        f"Reproduce: `flock /tmp/binsearch-bench.lock python benchmarks/serve.py "
        f"{results['command']}` (after `git worktree add /tmp/binsearch-{results['old_commit']} "
        f"{results['old_commit']}`).",
    ]
    return "\n".join(lines) + "\n"
