"""The varwidth rows of ``benchmarks/quality.py`` (kept apart to keep that file short)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from binsearch.codes.varwidth import VarWidthCodec
from binsearch.codes.varwidth_compat import CompatibleQueries, compatible_query_map
from binsearch.collection.coded_index import CodedIndex
from binsearch.eval.quality import EvalData, load_embeddings


def varwidth(bench: Any, bits: int, budget: int, timings: dict) -> None:
    """The varwidth codec within ``budget`` stored bits (the grid's, whole words)."""
    started = time.perf_counter()
    codec = VarWidthCodec.fit(bench.data.corpus, budget)
    seconds = time.perf_counter() - started
    timings[f"varwidth-{bits}-{budget}"] = seconds
    bench.add_codec("varwidth", codec, varwidth_note(codec, seconds), **varwidth_extra(codec))


def varwidth_note(codec: VarWidthCodec, seconds: float, cpu: float | None = None) -> str:
    hist = codec.fit_report["directions_by_bits"]
    fit = f"fit {seconds:.0f}s" + ("" if cpu is None else f" wall / {cpu:.0f}s CPU")
    return (
        f"plane widths {'/'.join(map(str, codec.widths))} (+1 offset bit), directions by bits "
        + ", ".join(f"{b}:{n}" for b, n in hist.items())
        + f", {fit}"
    )


def varwidth_extra(codec: VarWidthCodec) -> dict:
    return {
        "plane_widths": codec.widths,
        "directions_by_bits": codec.fit_report["directions_by_bits"],
    }


def compatible_varwidth(
    name: str,
    old_data: EvalData,
    budgets: list[int],
    bench_class: Any,
    data: Path,
    models: tuple[str, str],
) -> list[dict]:
    """Old (MiniLM) varwidth codes, new (MPNet) queries through a learned query map only."""
    base = data / name
    OLD_MODEL, NEW_MODEL = models  # noqa: N806
    new_data = load_embeddings(base, base / "embeddings" / NEW_MODEL)
    if new_data.doc_ids != old_data.doc_ids or new_data.query_ids != old_data.query_ids:
        raise ValueError(f"{name}: the two models' embeddings hold different rows")
    print(f"{name}: varwidth compatible queries, {OLD_MODEL} codes <- {NEW_MODEL} queries")
    bench = bench_class(name, new_data)
    bench.rows[0]["codec"] = "float (new model)"
    for budget in budgets:
        old = VarWidthCodec.fit(old_data.corpus, budget)
        new_same = VarWidthCodec.fit(new_data.corpus, budget)
        old_index = CodedIndex.from_embeddings(old_data.corpus, old)
        bpv = old_index.bits_per_vector
        new_index = CodedIndex.from_embeddings(new_data.corpus, new_same)
        for label, index, queries in (
            ("varwidth old/old", old_index, old_data.queries),
            ("varwidth new/new", new_index, None),
        ):
            q = new_data.queries if queries is None else queries
            _, ranked = index.topk(q, bench.depth)
            bench.add(label, bpv, ranked, f"{budget} bits")
        for steps in (0, 300):
            started = time.perf_counter()
            qmap = compatible_query_map(new_data.corpus, old_data.corpus, old, steps=steps)
            seconds = time.perf_counter() - started
            codec = CompatibleQueries(old, qmap)
            _, ranked = CodedIndex(codec, old_index.index).topk(new_data.queries, bench.depth)
            how = "ridge bridge only" if steps == 0 else f"bridge + {steps} listwise steps"
            bench.add("varwidth new-on-old", bpv, ranked, f"{how}, {seconds:.0f}s")
    for r in bench.rows:
        r["section"] = "compatible"
    return bench.rows
