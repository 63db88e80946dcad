"""Compatible training for varwidth codes: the four combinations of old/new queries and documents.

The old model (all-MiniLM-L6-v2) wrote varwidth document codes; the new one
(all-mpnet-base-v2) queries them through a learned query map
(:func:`binsearch.codes.varwidth_compat.compatible_query_map`), with no
re-indexing. Per dataset and stored bits:

* ``old/old`` and ``new/new``: each model's queries on its own codes;
* ``new-on-old``: the bridge alone, then the listwise map on corpus rows, then
  (where the dataset has queries outside the judged test set, SciFact's 809
  train/dev claims) on corpus rows and those queries;
* ``old-on-new``: the same method the other way round;
* with ``--labels`` (SciFact's ``qrels/train.tsv``, judged train claims only):
  the map also learns from those judgments, and so does an ``old/old`` query map
  (the old model's queries mapped onto its own codes by the same procedure), so
  that the supervised gain is not mistaken for a compatibility gain.

Everything is scored through ``CodedIndex.topk`` (what a collection serves) on
the judged test queries, which no map ever trains on. Float recall@10 is given
against both models' float top-10. Cranfield's 225 queries are all judged test
queries, so there the maps see corpus rows only.

Run: ``python benchmarks/compat_varwidth.py --datasets scifact --budgets 448 --labels``,
``--datasets scifact --budgets 768`` and ``--datasets cranfield``; writes ``results/quality/compat/<dataset>-<budgets>.json`` and
regenerates ``report.md`` from every JSON there.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from quality import paired_ci

from binsearch.codes.varwidth import VarWidthCodec
from binsearch.codes.varwidth_compat import CompatibleQueries, compatible_query_map
from binsearch.collection.coded_index import CodedIndex
from binsearch.collection.corpus import read_qrels
from binsearch.eval.metrics import bootstrap_ci, ndcg_at_k, recall_at_k
from binsearch.eval.quality import EvalData, load_embeddings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OLD, NEW = "all-MiniLM-L6-v2", "all-mpnet-base-v2"


def other_queries(base: Path, judged: set[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Both models' embeddings of the queries outside the judged test set, and their ids."""
    ids = json.loads((base / "embeddings" / OLD / "ids.json").read_text())["query_ids"]
    rows = [i for i, q in enumerate(map(str, ids)) if q not in judged]
    qo = np.load(base / "embeddings" / OLD / "queries.npy")[rows]
    qn = np.load(base / "embeddings" / NEW / "queries.npy")[rows]
    return qn.astype(np.float32), qo.astype(np.float32), [str(ids[i]) for i in rows]


def train_labels(base: Path, qids: list[str], doc_ids: list[str]) -> list[list[int]] | None:
    """Per query of ``qids``, the corpus rows judged relevant in ``qrels/train.tsv``."""
    if not (base / "qrels" / "train.tsv").is_file():
        return None
    qrels = read_qrels(base, "train")
    row = {d: i for i, d in enumerate(doc_ids)}
    return [[row[d] for d in qrels.get(q, {}) if d in row] for q in qids]


class Scorer:
    """nDCG@10, Recall@100 and float recall@10 (against both models) of rankings of ``data``."""

    def __init__(self, old: EvalData, new: EvalData) -> None:
        self.data = old
        self.float_top = {
            "old": np.argsort(-(old.queries @ old.corpus.T), axis=1)[:, :10],
            "new": np.argsort(-(new.queries @ new.corpus.T), axis=1)[:, :10],
        }
        self.rows: list[dict] = []
        self.per_query: dict[str, np.ndarray] = {}

    def add(self, label: str, bits: int, ranked: np.ndarray, note: str) -> dict:
        d = self.data
        runs = [[d.doc_ids[j] for j in r] for r in ranked]
        nd = np.array(
            [ndcg_at_k(r, d.qrels[q], 10) for r, q in zip(runs, d.query_ids, strict=True)]
        )
        rec = np.mean(
            [recall_at_k(r, d.qrels[q], 100) for r, q in zip(runs, d.query_ids, strict=True)]
        )
        overlap = {
            m: float(
                np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(ranked, top, strict=True)])
            )
            for m, top in self.float_top.items()
        }
        row = {
            "combination": label,
            "bits_per_vector": bits,
            "ndcg@10": float(nd.mean()),
            "ndcg_ci95": list(bootstrap_ci(nd)),
            "recall@100": float(rec),
            "float_recall@10_vs_new": overlap["new"],
            "float_recall@10_vs_old": overlap["old"],
            "note": note,
        }
        base = self.per_query.get(f"old/old@{bits}")
        if base is not None:
            row["vs_old_old"] = [float((nd - base).mean()), *paired_ci(nd, base)]
        self.per_query[f"{label}@{bits}"] = nd
        self.rows.append(row)
        print({k: v for k, v in row.items() if k != "ndcg_ci95"}, flush=True)
        return row


def run_dataset(name: str, budgets: list[int], steps: int, labels: bool) -> dict:
    base = DATA / name
    old = load_embeddings(base, base / "embeddings" / OLD)
    new = load_embeddings(base, base / "embeddings" / NEW)
    if new.doc_ids != old.doc_ids or new.query_ids != old.query_ids:
        raise ValueError(f"{name}: the two models' embeddings hold different rows")
    qn, qo, qids = other_queries(base, set(old.query_ids))
    judged = train_labels(base, qids, old.doc_ids) if labels else None
    scorer = Scorer(old, new)
    timings: dict[str, float] = {}

    def compat(label, bits, codec, index, queries, note, **kw) -> None:
        started = time.perf_counter()
        qmap = compatible_query_map(*kw.pop("rows"), codec, steps=kw.pop("steps", steps), **kw)
        seconds = time.perf_counter() - started
        timings[f"{label} {note} @{bits}"] = seconds
        _, ranked = CodedIndex(CompatibleQueries(codec, qmap), index.index).topk(queries, 100)
        scorer.add(label, bits, ranked, f"{note}, fit {seconds:.0f}s")

    for budget in budgets:
        old_codec = VarWidthCodec.fit(old.corpus, budget)
        new_codec = VarWidthCodec.fit(new.corpus, budget)
        old_index = CodedIndex.from_embeddings(old.corpus, old_codec)
        new_index = CodedIndex.from_embeddings(new.corpus, new_codec)
        bits = old_index.bits_per_vector
        scorer.add("old/old", bits, old_index.topk(old.queries, 100)[1], "old codec, old queries")
        scorer.add(
            "new/new", bits, new_index.topk(new.queries, 100)[1], "re-indexed by the new model"
        )
        pairs = (qn, qo) if len(qn) else None
        to_old = {"rows": (new.corpus, old.corpus)}
        compat(
            "new-on-old",
            bits,
            old_codec,
            old_index,
            new.queries,
            "bridge only",
            steps=0,
            **to_old,
            pairs=pairs,
        )
        compat(
            "new-on-old", bits, old_codec, old_index, new.queries, "listwise, corpus rows", **to_old
        )
        if pairs is not None:
            compat(
                "new-on-old",
                bits,
                old_codec,
                old_index,
                new.queries,
                "listwise, corpus rows + other queries",
                **to_old,
                pairs=pairs,
            )
        compat(
            "old-on-new",
            bits,
            new_codec,
            new_index,
            old.queries,
            "listwise, corpus rows" + (" + other queries" if pairs else ""),
            rows=(old.corpus, new.corpus),
            pairs=None if pairs is None else (qo, qn),
        )
        if judged is not None and budget == budgets[0]:
            note = "listwise + train judgments, corpus rows + other queries"
            compat(
                "new-on-old",
                bits,
                old_codec,
                old_index,
                new.queries,
                note,
                **to_old,
                pairs=pairs,
                labels=judged,
            )
            compat(
                "old/old",
                bits,
                old_codec,
                old_index,
                old.queries,
                note + " (old query map)",
                rows=(old.corpus, old.corpus),
                pairs=(qo, qo),
                labels=judged,
            )
    return {
        "dataset": name,
        "models": {"old": OLD, "new": NEW},
        "judged_test_queries": len(old.query_ids),
        "other_queries": len(qn),
        "steps": steps,
        "rows": scorer.rows,
        "fit_seconds": timings,
        "loadavg_end": os.getloadavg(),
    }


def fmt(x: float) -> str:
    return f"{x:.4f}"


def write_report(out: Path) -> None:
    lines = [
        "# Compatible training for varwidth codes: new-model queries on old-model codes",
        "",
        f"Old model {OLD} (its varwidth document codes are never re-indexed), new model {NEW}. "
        "Judged test queries only, scored through `CodedIndex.topk`; no map trains on them. "
        "Commands: `nice -n 19 python benchmarks/compat_varwidth.py --datasets scifact --budgets 448 "
        "--labels`, `... --datasets scifact --budgets 768` and `... --datasets cranfield`. Δ vs old/old: paired bootstrap 95% interval over queries.",
    ]
    for path in sorted(out.glob("*.json")):
        res = json.loads(path.read_text())
        lines += [
            "",
            f"## {res['dataset']}",
            "",
            f"{res['judged_test_queries']} judged test queries; {res['other_queries']} other "
            f"queries (both models' embeddings, no judgments used unless stated); "
            f"{res['steps']} listwise steps.",
            "",
            "| combination | bits/vector | nDCG@10 (95% CI) | Δ vs old/old (95% CI) | Recall@100 | float recall@10 vs new | vs old | how |",
            "|---|---:|---|---|---:|---:|---:|---|",
        ]
        for r in res["rows"]:
            lo, hi = r["ndcg_ci95"]
            delta = ""
            if "vs_old_old" in r:
                d, a, b = r["vs_old_old"]
                delta = f"{d:+.4f} ({a:+.4f}–{b:+.4f})"
            lines.append(
                f"| {r['combination']} | {r['bits_per_vector']:,} | {fmt(r['ndcg@10'])} "
                f"({lo:.3f}–{hi:.3f}) | {delta} | {r['recall@100']:.3f} | "
                f"{r['float_recall@10_vs_new']:.3f} | {r['float_recall@10_vs_old']:.3f} | {r['note']} |"
            )
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["scifact", "cranfield"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[448, 768])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--labels", action="store_true", help="also train on qrels/train.tsv")
    parser.add_argument("--out", default=str(REPO / "results" / "quality" / "compat"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        res = run_dataset(name, args.budgets, args.steps, args.labels)
        tag = "-".join(map(str, args.budgets))
        (out / f"{name}-{tag}.json").write_text(json.dumps(res, indent=2) + "\n")
    write_report(out)
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
