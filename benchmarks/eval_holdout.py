"""``binsearch eval`` without judgments, checked: held-out estimates, the recommendation, 1M rows.

Three measurements, each a section of ``results/eval/report.md`` (and ``results.json``):

* ``agreement``: SciFact (MiniLM embeddings from ``../shared/data``): float
  recall@10 of every default code on the 300 judged test queries (whole
  corpus searched) beside the same figure on 1,000 held-out documents (the
  estimate ``binsearch eval`` makes without queries). Target: within 0.03.
* ``verify``: the recommendation on the held-out SciFact documents, built by
  its own printed ``binsearch index`` line, then measured on the held-out
  queries (each query's own document dropped from its results).
* ``scale``: ``binsearch eval --embeddings`` on a 1M-row corpus (and on the
  WordNet glosses when ``benchmarks/build_scale_corpus.py`` has cached them), as
  a subprocess under ``/usr/bin/time -v``: wall time and peak RSS. The 1M rows
  are synthetic: SciFact's embeddings as anchors, each new row an anchor plus
  Gaussian noise shaped like the corpus's own covariance, unit length (so
  neighbourhoods exist); written once to the scale cache, outside the repo.

Run: ``python benchmarks/eval_holdout.py [--only agreement,verify,scale]``
(timed figures: under ``flock /tmp/binsearch-bench.lock``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from build_scale_corpus import cache_dir
from common import cpu_name

from binsearch.eval.holdout import Workload
from binsearch.eval.inputs import query_workload
from binsearch.eval.runner import evaluate
from binsearch.eval.sources import open_embeddings

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "results" / "eval"
MINILM = "embeddings/all-MiniLM-L6-v2"
CODECS, BITS = ["grid", "sign", "rabitq"], [1, 2, 4]
NOTES = "## Notes (written by hand after the runs)"


def scifact() -> tuple[Path, Path]:
    root = Path(os.environ.get("BINSEARCH_DATA", DATA)) / "scifact"
    if not (root / MINILM / "corpus.npy").is_file():
        sys.exit(f"SciFact embeddings not found under {root} (set BINSEARCH_DATA)")
    return root, root / MINILM


def text_queries(
    root: Path, source, doc_ids: list[str], rows: np.ndarray, kind: str = "opening"
) -> np.ndarray:
    """Held-out ``rows`` as ``binsearch eval`` queries with them when the text is given:
    their first 12 words (``opening``, the default) or their titles (``title``)."""
    from binsearch.encoder.model import Encoder
    from binsearch.eval.query_text import held_out_texts
    from binsearch.eval.sources import unit_rows

    texts = held_out_texts(root / "corpus.jsonl", rows, source.n, doc_ids, kind)
    if texts is None or not all(texts):
        sys.exit("SciFact's corpus.jsonl does not line up with its embeddings")
    return unit_rows(Encoder("all-MiniLM-L6-v2").encode(texts, 64))


def agreement(holdout: int = 1000) -> dict:
    """Judged queries vs held-out documents: float recall@10 of each code on SciFact.

    The held-out documents query three ways over the same searched corpus (so
    with the same fitted codes): with their embeddings (``--holdout-query
    document``), their titles, and their first 12 words (the default when the
    text is given).
    """
    from binsearch.eval.holdout import holdout_rows
    from binsearch.eval.metrics import bootstrap_ci

    root, emb = scifact()
    source, doc_ids = open_embeddings(emb)
    judged: Workload = query_workload(
        "judged", root, str(emb), None, None, source, doc_ids, None, 64
    )
    print(f"agreement: judged ({len(judged.query_ids)} queries)", flush=True)
    judged_rows, _ = evaluate(judged, CODECS, BITS, progress=False)
    rows = holdout_rows(source.n, holdout, 0)
    kinds = {"document": source.take(rows)}
    for kind in ("title", "opening"):
        kinds[kind] = text_queries(root, source, doc_ids, rows, kind)
    stacked = Workload(
        source,
        np.concatenate(list(kinds.values())),
        [f"{k}:{r}" for k in kinds for r in rows.tolist()],
        rows,
        "held-out",
    )
    print(f"agreement: held out ({holdout} documents, {len(kinds)} query kinds)", flush=True)
    _, recalls = evaluate(stacked, CODECS, BITS, progress=False)
    pairs = []
    for j in judged_rows[1:]:
        rec = recalls[(j["codec"], int(j["bits"]), False)]
        pair = {
            "codec": j["codec"],
            "bits": j["bits"],
            "bits_per_vector": j["bits_per_vector"],
            "judged": j["float_recall@10"],
            "judged_ci95": j["float_recall@10_ci95"],
        }
        for i, kind in enumerate(kinds):
            part = rec[i * holdout : (i + 1) * holdout]
            pair[kind] = float(part.mean())
            pair[f"{kind}_ci95"] = list(bootstrap_ci(part))
            pair[f"{kind}_difference"] = float(part.mean()) - j["float_recall@10"]
        pairs.append(pair)
        print(
            f"  {j['codec']:7s} {j['bits']} judged {j['float_recall@10']:.3f}"
            + "".join(f" {k} {pair[k]:.3f} ({pair[k + '_difference']:+.3f})" for k in kinds)
        )
    return {"pairs": pairs, "judged_rows": judged_rows, "query_kinds": list(kinds)}


def cli(args: list[str], log: Path) -> dict:
    """Run ``binsearch`` as a subprocess under ``/usr/bin/time -v``: wall s, peak RSS MB, output."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "binsearch.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    log.write_text(proc.stdout + "\n---- stderr ----\n" + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"binsearch {' '.join(args)} failed; see {log}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    user = re.search(r"User time \(seconds\): ([\d.]+)", proc.stderr)
    system = re.search(r"System time \(seconds\): ([\d.]+)", proc.stderr)
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(float(user.group(1)) + float(system.group(1)), 1),
        "peak_rss_mb": round(int(rss.group(1)) / 1024),
        "stdout": proc.stdout,
    }


def verify(target: float = 0.95) -> dict:
    """The recommendation for SciFact's bare corpus, built by its printed line and measured."""
    root, emb = scifact()
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "scifact-bare"
        bare.mkdir()
        (bare / "corpus.jsonl").write_bytes((root / "corpus.jsonl").read_bytes())
        report = Path(tmp) / "report"
        run = cli(
            [
                "eval", str(bare / "corpus.jsonl"), "--embeddings", str(emb), "--holdout", "1000",
                "--target", str(target), "--out", str(report),
            ],
            OUT / "verify-eval.log",
        )  # fmt: skip
        rec = json.loads((report / "results.json").read_text())["recommendation"]
        print(run["stdout"], flush=True)
        if rec["command"] is None:
            return {"eval": run, "recommendation": rec}
        argv = shlex.split(rec["command"].replace("INDEX", str(Path(tmp) / "index")))
        cli(argv[1:], OUT / "verify-index.log")
        measured = measure_built(Path(tmp) / "index", emb, 1000, root)
    shown = rec["command"].replace(str(bare), "scifact-bare").replace(str(emb), MINILM)
    return {
        "eval_stdout": run["stdout"]
        .replace(str(bare), "scifact-bare")
        .replace(str(emb), MINILM)
        .replace(str(report), "REPORT"),
        "recommendation": {**rec, "command": shown},
        "built_recall@10": measured,
    }


def measure_built(index: Path, emb: Path, holdout: int, root: Path) -> float:
    """Recall of the float top-10 of the eval's held-out queries in a built collection.

    The queries are the held-out documents' first 12 words, as ``binsearch
    eval`` used them; each query's own document is dropped from both rankings.
    """
    from binsearch import Collection
    from binsearch.eval.holdout import holdout_rows

    source, doc_ids = open_embeddings(emb)
    x = np.load(emb / "corpus.npy")
    ids = json.loads((emb / "ids.json").read_text())["corpus_ids"]
    held = holdout_rows(len(x), holdout, seed=0)
    queries = text_queries(root, source, doc_ids, held)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    recalls = []
    with Collection.open(index, readonly=True) as c:
        for row, q, result in zip(held, queries, c.search(embeddings=queries, k=11), strict=True):
            got = [i for i in result.ids if i != ids[row]][:10]
            sims = unit @ q
            sims[row] = -np.inf
            recalls.append(len({ids[j] for j in np.argsort(-sims)[:10]} & set(got)) / 10)
    return float(np.mean(recalls))


def synthetic(n: int, seed: int = 0) -> Path:
    """``n`` synthetic 384-d rows around SciFact's embeddings, cached as a .npy (built once)."""
    out = cache_dir(f"synthetic-{n // 1000}k")
    path = out / "corpus.npy"
    if path.is_file():
        return path
    _, emb = scifact()
    anchors = np.load(emb / "corpus.npy").astype(np.float64)
    centred = anchors - anchors.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    shape = (s[:, None] * vt) / np.sqrt(len(anchors))  # x ~ z @ shape has the corpus's covariance
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (n, anchors.shape[1])}
        )
        for start in range(0, n, 65536):
            m = min(65536, n - start)
            x = (
                anchors[rng.integers(0, len(anchors), m)]
                + 0.5 * rng.standard_normal((m, len(s))) @ shape
            )
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            f.write(x.astype("<f4").tobytes())
    tmp.replace(path)
    return path


def scale(n: int, names: tuple[str, ...] = ("synthetic", "wordnet")) -> list[dict]:
    """``binsearch eval --embeddings`` at ``n`` synthetic rows and on WordNet when cached."""
    corpora = [("synthetic", synthetic(n))] if "synthetic" in names else []
    wordnet = cache_dir("wordnet") / "corpus.npy"
    if wordnet.is_file() and "wordnet" in names:
        corpora.append(("wordnet", wordnet))
    rows = []
    for name, path in corpora:
        report = OUT / f"scale-{name}"
        print(f"scale: {name} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
        run = cli(
            ["eval", "--embeddings", str(path), "--out", str(report)], OUT / f"scale-{name}.log"
        )
        for part in ("stdout.txt", "report.md", "results.json"):  # no paths of this machine
            text = run["stdout"] if part == "stdout.txt" else (report / part).read_text()
            text = text.replace(str(path), f"{name}/corpus.npy").replace(f"{REPO}/", "")
            (report / part).write_text(text)
        meta = json.loads((report / "results.json").read_text())
        rows.append(
            {
                "corpus": name,
                "documents": meta["setup"]["documents"],
                "wall_s": run["wall_s"],
                "cpu_s": run["cpu_s"],
                "peak_rss_mb": run["peak_rss_mb"],
                "rows": meta["rows"],
                "recommendation": meta["recommendation"],
            }
        )
        print(f"  wall {run['wall_s']} s, cpu {run['cpu_s']} s, peak RSS {run['peak_rss_mb']} MB")
    return rows


def _table(rows: list[dict]) -> str:
    head = "| codec | bits | bits/vector | float recall@10 (95% CI) | float recall@100 | ms/query (batch) | ms/query (alone) |"
    lines = [head, "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["float_recall@10_ci95"]
        alone = "–" if r["lone_query_ms"] is None else f"{r['lone_query_ms']:.2f}"
        lines.append(
            f"| {r['codec']} | {r['bits']} | {r['bits_per_vector']:,} | {r['float_recall@10']:.3f} "
            f"({lo:.3f}–{hi:.3f}) | {r['float_recall@100']:.3f} | {r['search_ms_per_query']:.3f} | {alone} |"
        )
    return "\n".join(lines)


def _as_kinds(pair: dict) -> dict:
    """An agreement row of an earlier run (documents only, as ``held_out``) in today's keys."""
    if "document" in pair or "held_out" not in pair:
        return pair
    return {
        **pair,
        "document": pair["held_out"],
        "document_ci95": pair["held_out_ci95"],
        "document_difference": pair["difference"],
    }


def write_markdown(results: dict, path: Path) -> None:
    """``report.md`` from ``results.json``'s sections."""
    m = results["machine"]

    def load(name: str) -> str:
        run = results.get("machines", {}).get(name)
        if not run:
            return ""
        return f"Load average {run['load_at_start']:.1f} at start, {run['load_at_end']:.1f} at the end.\n"

    text = [
        "# `binsearch eval` without judgments: held-out estimates, recommendation, scale\n",
        f"Machine: {m['cpu']}, {m['cores']} cores (avx2 avx512f/bw/vl avx512_vnni "
        "avx512_vpopcntdq), shared with other work: each section gives its load average.\n",
        "Produced by `python benchmarks/eval_holdout.py`.\n",
    ]
    if "agreement" in results:
        text += [
            "## Held-out estimate vs judged queries (SciFact, MiniLM)\n",
            "Float recall@10 of each code: on the 300 judged test queries (all 5,183 documents "
            "searched) and on 1,000 documents held out of the corpus (seed 0, 4,183 searched, "
            "the same fitted codes for every query kind), queried by their embeddings "
            "(`--holdout-query document`, the only choice without text), by their titles, and "
            "by their first 12 words (`opening`, the default when the text is given). "
            "Target: within 0.03.\n",
            load("agreement"),
            "| codec | bits | bits/vector | judged queries (95% CI) | held-out documents (95% CI) | difference | their titles (95% CI) | difference | their first 12 words (95% CI) | difference |",
            "|---|---:|---:|---|---|---:|---|---:|---|---:|",
        ]
        pairs = [_as_kinds(p) for p in results["agreement"]["pairs"]]
        for p in pairs:
            cells = [f"{p['judged']:.3f} ({p['judged_ci95'][0]:.3f}–{p['judged_ci95'][1]:.3f})"]
            for kind in ("document", "title", "opening"):
                if kind not in p:
                    cells += ["–", "–"]
                    continue
                lo, hi = p[f"{kind}_ci95"]
                cells += [f"{p[kind]:.3f} ({lo:.3f}–{hi:.3f})", f"{p[kind + '_difference']:+.3f}"]
            text.append(
                f"| {p['codec']} | {p['bits']} | {p['bits_per_vector']:,} | "
                + " | ".join(cells)
                + " |"
            )
        for kind in ("document", "title", "opening"):
            if kind not in pairs[0]:
                continue
            worst = max(abs(p[f"{kind}_difference"]) for p in pairs)
            text.append(f"\nLargest difference, {kind} queries: {worst:.3f}.")
        text.append("")
    if "verify" in results:
        v = results["verify"]
        rec = v["recommendation"]
        text += [
            "## The recommendation, built by its own command (SciFact's bare corpus.jsonl)\n",
            load("verify"),
            "`binsearch eval scifact-bare/corpus.jsonl --embeddings "
            f"{MINILM} --holdout 1000 --target {rec['target']}` printed:\n",
            "```\n" + v.get("eval_stdout", "").strip() + "\n```\n",
        ]
        if "built_recall@10" in v:
            text.append(
                f"Built with that line (all 5,183 documents) and searched with the 1,000 held-out "
                f"documents' first 12 words (each query's own document dropped): float recall@10 "
                f"**{v['built_recall@10']:.3f}** against the target {rec['target']} "
                f"(estimate {rec['recall']:.3f}).\n"
            )
    for s in results.get("scale", []):
        run = s.get("machine")
        text += [
            f"## Scale: {s['corpus']}, {s['documents']}\n",
            load("scale")
            if run is None
            else f"Load average {run['load_at_start']:.1f} at start, {run['load_at_end']:.1f} at the end.\n",
            f"`binsearch eval --embeddings {s['corpus']}/corpus.npy` with the default codes: "
            f"wall **{s['wall_s']:.0f} s**, CPU {s['cpu_s']:.0f} s, peak RSS **{s['peak_rss_mb']:,} MB**.\n",
            _table(s["rows"]) + "\n",
        ]
    notes = ""  # the hand-written notes under the generated sections survive a rerun
    if path.is_file() and NOTES in path.read_text():
        notes = "\n" + NOTES + path.read_text().split(NOTES, 1)[1]
    path.write_text("\n".join(text) + "\n" + notes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="agreement,verify,scale")
    ap.add_argument("--rows", type=int, default=1_000_000, help="synthetic corpus size")
    ap.add_argument(
        "--scale-corpora",
        default="synthetic,wordnet",
        help="corpora of the scale section (wordnet only when its cache is built)",
    )
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "results.json"
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_at_start": os.getloadavg()[0]}
    parts, done = args.only.split(","), {}
    if "agreement" in parts:
        done["agreement"] = agreement()
    if "verify" in parts:
        done["verify"] = verify()
    if "scale" in parts:
        done["scale"] = scale(args.rows, tuple(args.scale_corpora.split(",")))
    machine["load_at_end"] = os.getloadavg()[0]
    # Sections run as separate invocations: merge into what is there now.
    results = json.loads(path.read_text()) if path.is_file() else {}
    if "scale" in done:  # one corpus at a time: keep the others' figures, each with its load
        for entry in done["scale"]:
            entry.setdefault("machine", machine)
        kept = {s["corpus"]: s for s in results.get("scale", [])}
        kept.update({s["corpus"]: s for s in done["scale"]})
        done["scale"] = list(kept.values())
    for name, section in done.items():  # each section also alone, with the load it ran under
        (OUT / f"{name}.json").write_text(json.dumps({"machine": machine, name: section}, indent=2))
    results.update(done)
    results.setdefault("machines", {}).update({name: machine for name in done})
    results["machine"] = machine
    path.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, OUT / "report.md")
    print(f"wrote {path} and {OUT / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
