"""The ``binsearch eval`` report: the table, the plot, ``results.json`` and ``report.md``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from binsearch.eval.recommend import Recommendation, describe
from binsearch.eval.runner import RECALL_DEPTH


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def format_table(rows: Sequence[dict[str, Any]], k: int = 10) -> str:
    """Markdown: bits, float recall@k (95 % interval) and @100, time per query; judged metrics when present."""
    judged = f"ndcg@{k}" in rows[0]
    head = (
        f"| codec | bits | bits/vector | float recall@{k} (95% CI) | float recall@{RECALL_DEPTH} "
        "| ms/query (batch) | ms/query (alone) |"
    )
    rule = "|---|---:|---:|---|---:|---:|---:|"
    if judged:
        head += f" nDCG@{k} (95% CI) | Recall@{RECALL_DEPTH} |"
        rule += "---|---:|"
    lines = [head, rule]
    for r in rows:
        lo, hi = r[f"float_recall@{k}_ci95"]
        name = r["codec"] + (" +rescore" if r.get("rescore") else "")
        line = (
            f"| {name} | {r['bits']} | {r['bits_per_vector']:,} "
            f"| {r[f'float_recall@{k}']:.3f} ({lo:.3f}–{hi:.3f}) "
            f"| {r[f'float_recall@{RECALL_DEPTH}']:.3f} "
            f"| {_ms(r['search_ms_per_query'])} | {_ms(r['lone_query_ms'])} |"
        )
        if judged:
            nlo, nhi = r[f"ndcg@{k}_ci95"]
            line += (
                f" {r[f'ndcg@{k}']:.4f} ({nlo:.3f}–{nhi:.3f}) | {r[f'recall@{RECALL_DEPTH}']:.3f} |"
            )
        lines.append(line)
    return "\n".join(lines)


def write_report(
    rows: Sequence[dict[str, Any]],
    rec: Recommendation,
    out: str | os.PathLike[str],
    title: str,
    setup: dict[str, Any],
    k: int = 10,
) -> None:
    """``results.json``, ``report.md`` and ``quality.png`` in ``out``.

    ``setup`` (documents, queries, how they were chosen, ...) heads the report.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"setup": setup, "rows": list(rows), "recommendation": rec.to_dict()}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    facts = "\n".join(f"- {key}: {value}" for key, value in setup.items())
    (out / "report.md").write_text(
        f"# {title}\n\n{facts}\n\n{format_table(rows, k)}\n\n{describe(rec)}\n\n"
        "![quality vs bits](quality.png)\n"
    )
    plot_quality(rows, out / "quality.png", title, k, rec)


def _label(row: dict[str, Any]) -> str:
    return row["codec"] + (" +rescore" if row.get("rescore") else "")


def plot_quality(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    title: str,
    k: int = 10,
    rec: Recommendation | None = None,
) -> None:
    """Float recall@k and @100 (and nDCG@k with judgments) against bits per vector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [f"float_recall@{k}", f"float_recall@{RECALL_DEPTH}"]
    if f"ndcg@{k}" in rows[0]:
        metrics.append(f"ndcg@{k}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2))
    for ax, metric in zip(axes, metrics, strict=True):
        for codec in dict.fromkeys(_label(r) for r in rows):
            pts = sorted((r["bits_per_vector"], r[metric]) for r in rows if _label(r) == codec)
            if codec == "float":
                ax.axhline(
                    pts[0][1], color="black", linestyle="--", label=f"float ({pts[0][0]:,} bits)"
                )
            else:
                ax.plot(*zip(*pts, strict=True), marker="o", label=codec)
        if rec is not None and metric == f"float_recall@{k}":
            ax.axhline(rec.target, color="grey", linestyle=":", label=f"target {rec.target}")
            if rec.codec is not None:
                ax.plot(
                    [rec.bits_per_vector],
                    [rec.recall],
                    marker="*",
                    markersize=16,
                    color="gold",
                    markeredgecolor="black",
                    linestyle="none",
                    label=f"recommended: {rec.codec} {rec.bits}-bit"
                    + (" +rescore" if rec.rescore else ""),
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per vector (all stored bits)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
