"""Which code to build: the fewest bits per vector that reach a recall target.

Among the codes ``binsearch index`` can build (the faiss peer is measured, not
recommended), the recommendation is the one with the fewest stored bits per
vector whose mean recall of the float top-k over the evaluation's queries
reaches the target. Its bootstrap 95 % interval over those queries says how
sure that is; when the interval's lower end falls short of the target, the
smallest code whose lower end clears it is named as the safe choice.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from binsearch.collection.coded_index import RESCORE_FACTOR
from binsearch.eval.metrics import bootstrap_ci
from binsearch.eval.runner import PEERS, run_key

KEY_BYTES = 8  # the int64 key an index keeps per document


@dataclass
class Recommendation:
    """The chosen code (None when no code reaches the target) and how to build it."""

    target: float
    k: int
    codec: str | None = None
    bits: int | None = None
    rescore: bool = False  # reaches the target only when searched with rescore=True
    bits_per_vector: int | None = None
    recall: float | None = None
    ci95: tuple[float, float] | None = None
    confident: bool = False  # the interval's lower end reaches the target too
    safe: dict[str, Any] | None = None  # the smallest code whose lower end does, if different
    best: dict[str, Any] | None = None  # with no code reaching the target: the best one
    command: str | None = None
    documents: int = 0
    memory_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def index_command(
    codec: str,
    bits: int,
    corpus: str | None = None,
    embeddings: str | None = None,
    model: str | None = None,
    skip_empty: bool = False,
    out: str = "INDEX",
) -> str:
    """The ``binsearch index`` line that builds ``codec`` at ``bits`` for the corpus."""
    parts = ["binsearch", "index", corpus or "CORPUS", "--out", out]
    if model:
        parts += ["--model", model]
    if embeddings:
        parts += ["--embeddings", embeddings]
    parts += ["--codec", codec, "--bits", str(bits)]
    if skip_empty:
        parts.append("--skip-empty")
    return " ".join(shlex.quote(p) if p not in ("CORPUS", "INDEX") else p for p in parts)


def index_bytes(documents: int, bits_per_vector: int) -> int:
    """Memory of an index of ``documents`` codes: codes, scales and keys."""
    return int(documents * (bits_per_vector / 8 + KEY_BYTES))


def recommend(
    rows: list[dict[str, Any]],
    per_query_recall: dict[tuple[str, int, bool], np.ndarray],
    target: float,
    k: int,
    documents: int,
    **command: Any,
) -> Recommendation:
    """The smallest buildable code whose mean recall@k reaches ``target``.

    ``rows`` are :func:`binsearch.eval.runner.evaluate` rows; ``documents`` is
    the full corpus's size (the memory figure); ``command`` goes to
    :func:`index_command` (``corpus``, ``embeddings``, ``model``, ``skip_empty``).
    """
    key = f"float_recall@{k}"
    codes = [
        r for r in rows if r["codec"] not in ("float", *PEERS) and run_key(r) in per_query_recall
    ]
    # fewest bits first; at equal bits the higher recall, then no rescoring (cheaper)
    codes.sort(key=lambda r: (r["bits_per_vector"], -r[key], r.get("rescore", False)))
    rec = Recommendation(target=target, k=k, documents=documents)
    reaching = [r for r in codes if r[key] >= target]
    if not reaching:
        if codes:
            top = max(codes, key=lambda r: r[key])
            rec.best = {
                c: top.get(c, False) for c in ("codec", "bits", "bits_per_vector", key, "rescore")
            }
        return rec
    chosen = reaching[0]
    lo, hi = bootstrap_ci(per_query_recall[run_key(chosen)])
    rec.codec, rec.bits, rec.rescore = chosen["codec"], int(chosen["bits"]), run_key(chosen)[2]
    rec.bits_per_vector, rec.recall, rec.ci95 = (
        int(chosen["bits_per_vector"]),
        chosen[key],
        (lo, hi),
    )
    rec.confident = lo >= target
    if not rec.confident:
        for r in reaching[1:]:
            slo, shi = bootstrap_ci(per_query_recall[run_key(r)])
            if slo >= target:
                rec.safe = {
                    "codec": r["codec"],
                    "bits": int(r["bits"]),
                    "bits_per_vector": int(r["bits_per_vector"]),
                    "rescore": run_key(r)[2],
                    "recall": r[key],
                    "ci95": [slo, shi],
                    "command": index_command(r["codec"], int(r["bits"]), **command),
                }
                break
    rec.command = index_command(rec.codec, rec.bits, **command)
    rec.memory_bytes = index_bytes(documents, rec.bits_per_vector)
    return rec


def human_bytes(n: float) -> str:
    """``1.2 GB`` style, powers of 1000."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def describe(rec: Recommendation) -> str:
    """The recommendation as a few lines of text (markdown-safe)."""
    key = f"recall@{rec.k}"
    if rec.codec is None:
        if rec.best is None:
            return f"No buildable code was measured, so none can be recommended for {key} ≥ {rec.target}."
        b = rec.best
        return (
            f"No code measured reaches float {key} ≥ {rec.target}: the best is {b['codec']} at "
            f"{b['bits']} bits per dimension ({b['bits_per_vector']:,} bits per vector, "
            f"{key} {b[f'float_recall@{rec.k}']:.3f}). Try more bits (--bits), --rescore, "
            "or a lower --target."
        )
    lo, hi = rec.ci95
    lines = [
        f"Recommended: {rec.codec}{' with rescoring' if rec.rescore else ''} at {rec.bits} bits per dimension ({rec.bits_per_vector:,} bits "
        f"per vector), the fewest bits reaching float {key} ≥ {rec.target}: {rec.recall:.3f} "
        f"(bootstrap 95 % interval {lo:.3f}–{hi:.3f} over the queries)"
        + (", searched with rescoring." if rec.rescore else "."),
        f"Build it: `{rec.command}`",
        f"Memory for all {rec.documents:,} documents: {human_bytes(rec.memory_bytes)} "
        f"(codes, scales and 8-byte keys).",
    ]
    if rec.rescore:
        lines.append(
            f"Search it with rescoring: `Collection.search(..., rescore=True)` or "
            f'`"rescore": true` in POST /search ({RESCORE_FACTOR}x candidates re-ranked by the '
            "float query against the stored codes; no extra storage)."
        )
    if not rec.confident:
        if rec.safe:
            s = rec.safe
            lines.append(
                f"The interval's lower end is below {rec.target}; the smallest code whose lower end "
                f"clears it is {s['codec']}{' with rescoring' if s['rescore'] else ''} at {s['bits']} bits ({s['bits_per_vector']:,} bits per "
                f"vector, {s['recall']:.3f}, {s['ci95'][0]:.3f}–{s['ci95'][1]:.3f}): `{s['command']}`"
            )
        else:
            lines.append(
                f"The interval's lower end is below {rec.target} and no larger code measured clears "
                "it: more queries (--holdout) would narrow the interval."
            )
    return "\n".join(lines)
