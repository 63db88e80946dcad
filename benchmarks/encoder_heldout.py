"""Held-out fidelity of compressed encoders: mean cosine to the float MiniLM on
SciFact text that no calibration source contains (issue 25's note, sections 1, 2, 4).

The held-out set is fixed: 250 SciFact abstracts and 250 SciFact claims drawn
with seed 12345 (the rest of the abstracts are the ``scifact`` calibration
source of the table study). Cosine = mean over those 500 texts of the
compressed model's unit embedding against the float model's.

Two studies, each appending rows to ``--cache``/heldout.jsonl:

* ``models DIR[=LABEL] ...``: whole compressed models (``binsearch
  compress-encoder`` output directories) — the note's sections 2 and 4;
* ``gptq DIR ...``: the Linear weights of a ``--distill none`` model redone by
  GPTQ in natural and in act order, all else fixed (issue 25's 3-bit lever);
* ``table``: the word-embedding table alone quantized (every other weight float,
  or those of ``--linear DIR``), uniform or by rows from token counts of the
  named sources, under ``--budget`` stored bits per table weight — section 1.
  Variants: ``uniformK``; ``rows:SOURCES[^POWER]`` with SOURCES ``+``-joined from
  cranfield, wordnet, scifact, zipf (a prior by vocabulary order) and held (the
  held-out text itself: the oracle), POWER 0.5 by default (the compressor's).

``--report`` writes ``--out``/heldout.md and heldout.json from all cached rows
(the last row of each label). Run from the repository root::

    python benchmarks/encoder_heldout.py models results-local/minilm-3bit --report
    python benchmarks/encoder_heldout.py table --variants uniform2,rows:cranfield+wordnet
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_name  # noqa: E402
from binsearch.collection.corpus import read_corpus, read_queries  # noqa: E402

SCIFACT = REPO.parent / "shared" / "data" / "scifact"
HELD_DOCS = HELD_QUERIES = 250
SEED = 12345
TABLE_BUDGET = 2.0 * (384 + 16) / 384  # a uniform 2-plane table's signs + scales: 2.083
TABLE_VARIANTS = (
    "uniform1",
    "uniform2",
    "rows:cranfield",
    "rows:zipf^1",
    "rows:cranfield+wordnet^1",
    "rows:cranfield+wordnet",
    "rows:cranfield+wordnet+scifact^1",
    "rows:held^1",
)


def scifact_split() -> tuple[list[str], list[str]]:
    """``(held-out texts, the other abstracts)``: 250 + 250 fixed held-out texts."""
    docs = [d.content for d in read_corpus(SCIFACT, empty="skip")]
    queries = list(read_queries(SCIFACT).values())
    rng = np.random.default_rng(SEED)
    di, qi = rng.permutation(len(docs)), rng.permutation(len(queries))
    held = [docs[i] for i in di[:HELD_DOCS]] + [queries[i] for i in qi[:HELD_QUERIES]]
    return held, [docs[i] for i in di[HELD_DOCS:]]


def encode(model, texts: list[str]) -> np.ndarray:
    out = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(out, dtype=np.float32)


def reference(cache: Path, held: list[str]) -> np.ndarray:
    """The float model's embeddings of the held-out texts (cached)."""
    from binsearch.encoder.model import Encoder

    file = cache / "heldout-float.npy"
    if file.is_file():
        return np.load(file)
    ref = encode(Encoder(None).model, held)
    np.save(file, ref)
    return ref


def cosines(emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = (emb * ref).sum(1)
    return {
        "cosine": float(cos.mean()),
        "cosine_docs": float(cos[:HELD_DOCS].mean()),
        "cosine_queries": float(cos[HELD_DOCS:].mean()),
    }


def record(cache: Path, row: dict) -> None:
    row = {**row, "load": round(os.getloadavg()[0], 1), "when": time.strftime("%Y-%m-%dT%H:%M")}
    print(json.dumps(row), flush=True)
    with open(cache / "heldout.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def study_models(args: argparse.Namespace, cache: Path, held: list[str], ref: np.ndarray) -> None:
    """Held-out cosine of each compressed model directory."""
    from binsearch.encoder.compress.format import load_compressed, read_compressed

    for spec in args.dirs:
        path, _, label = spec.partition("=")
        config = read_compressed(path).config
        started = time.perf_counter()
        row = cosines(encode(load_compressed(path), held), ref)
        cal = config.get("calibration") or {}
        record(
            cache,
            {
                "study": "model",
                "label": label or Path(path).name,
                **row,
                "stored_bits": config["bits_per_weight"]["stored_bits"],
                "table_budget": (config.get("table_rows") or {}).get("budget"),
                "quantization": config.get("quantization"),
                "distill_steps": cal.get("steps"),
                "running_cosine": cal.get("running_cosine"),
                "encode_s": round(time.perf_counter() - started, 1),
            },
        )


def study_gptq(args: argparse.Namespace, cache: Path, held: list[str], ref: np.ndarray) -> None:
    """GPTQ's column order on a fixed allocation: each ``DIR`` (a ``--distill none``
    model) keeps its embedding tables and plane counts; its Linear weights are redone
    by GPTQ from the float ones on the compressor's own 128 calibration texts (the
    default sources), in natural and in act order."""
    from binsearch.cli.compress import DEFAULT_SOURCES, calibration_sources, calibration_texts
    from binsearch.encoder.compress.format import apply_weights, read_compressed, transformer_of
    from binsearch.encoder.compress.gptq import gptq_model
    from binsearch.encoder.model import Encoder

    texts = calibration_texts(calibration_sources(",".join(DEFAULT_SOURCES), []), 4000)
    rng = np.random.default_rng(0)  # as compress_encoder draws them: probe texts, then GPTQ's
    rng.permutation(len(texts))
    calib = [texts[i] for i in rng.permutation(len(texts))[:128]]
    for spec in args.dirs:
        path, _, label = spec.partition("=")
        stored = read_compressed(path)
        for act_order in (False, True):
            model = Encoder(None).model
            auto = transformer_of(model)
            linear = {
                n: int(r["choice"])
                for n, r in stored.config["allocation"].items()
                if isinstance(auto.get_submodule(n[: -len(".weight")]), torch_linear())
            }
            state = stored.state_dict()
            apply_weights(auto, {n: v for n, v in state.items() if n not in linear})
            started = time.perf_counter()
            gptq_model(model, calib, linear, progress=False, act_order=act_order)
            seconds = time.perf_counter() - started
            order = "act order" if act_order else "natural order"
            row = cosines(encode(model, held), ref)
            record(
                cache,
                {
                    "study": "gptq",
                    "label": f"{label or Path(path).name}, GPTQ {order}",
                    **row,
                    "gptq_weights": len(linear),
                    "gptq_s": round(seconds, 1),
                },
            )


def torch_linear():
    from torch import nn

    return nn.Linear


def table_counts(tokenizer, rows: int, rest: list[str], held: list[str]) -> dict:
    """Token counts of each table-study source."""
    from binsearch.cli.common import SAMPLE_CORPUS
    from binsearch.cli.compress import read_wordnet
    from binsearch.encoder.compress.rows import token_counts

    cran = [d.content for d in read_corpus(SAMPLE_CORPUS, empty="skip")]
    texts = {"cranfield": cran, "wordnet": read_wordnet(), "scifact": rest, "held": held}
    counts = {s: token_counts(tokenizer, t, rows) for s, t in texts.items() if t}
    counts["zipf"] = 1.0 / (100.0 + np.arange(rows))
    return counts


def study_table(args: argparse.Namespace, cache: Path, held: list[str], ref: np.ndarray) -> None:
    """The word table alone, uniform or by rows, the rest float (or ``--linear``'s)."""
    from binsearch.encoder.compress.compressor import compress_weights, word_embedding_name
    from binsearch.encoder.compress.format import (
        CompressedEncoder,
        apply_weights,
        read_compressed,
        transformer_of,
    )
    from binsearch.encoder.compress.rows import (
        coverage,
        plan_rows,
        quantize_rows,
        row_errors,
        row_importance,
    )
    from binsearch.encoder.model import Encoder

    model = Encoder(None).model
    auto = transformer_of(model)
    name = word_embedding_name(auto)
    w = dict(auto.named_parameters())[name].detach().numpy().copy()
    if args.linear:
        state = read_compressed(args.linear).state_dict({name: w.shape})
        apply_weights(auto, {n: v for n, v in state.items() if n != name})
    _, rest = scifact_split()
    counts = table_counts(model.tokenizer, w.shape[0], rest, held)
    special = model.tokenizer.all_special_ids
    wanted = [v for v in args.variants.split(",") if v]
    importance = {}
    for v in wanted:
        if v.startswith("rows:"):
            sources, _, power = v[5:].partition("^")
            parts = [counts[s] for s in sources.split("+")]
            importance[v] = row_importance(parts, special, float(power or 0.5))
    errors = None
    if importance:  # planes 5..8 fitted on the 8,000 rows most important to any variant
        top = set()
        for imp in importance.values():
            top.update(np.argsort(-imp, kind="stable")[:8000].tolist())
        errors = row_errors(w, np.array(sorted(top)))
    for v in wanted:
        started = time.perf_counter()
        if v.startswith("uniform"):
            k = int(v[len("uniform") :])
            q = CompressedEncoder(compress_weights({name: w}, k, progress=False))
            widths = np.full(w.shape[0], k)
        else:
            widths = plan_rows(errors, importance[v], w.shape[1], args.budget)
            q = CompressedEncoder(quantize_rows(w, widths, name))
        apply_weights(auto, q.state_dict({name: w.shape}))
        row = cosines(encode(model, held), ref)
        record(
            cache,
            {
                "study": "table",
                "label": v + (f" @{args.budget:.2f}" if v.startswith("rows") else ""),
                "linear": args.linear and Path(args.linear).name,
                **row,
                "table_bits": q.bits_per_weight()["stored_bits"],
                "held_coverage": coverage(widths, counts["held"]),
                "s": round(time.perf_counter() - started, 1),
            },
        )


def write_report(cache: Path, out: Path) -> None:
    rows: dict[tuple, dict] = {}
    for line in (cache / "heldout.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[(r["study"], r.get("linear"), r["label"])] = r
    out.mkdir(parents=True, exist_ok=True)
    (out / "heldout.json").write_text(json.dumps(list(rows.values()), indent=2) + "\n")
    lines = [
        "# Held-out fidelity of compressed encoders (SciFact text never calibrated on)",
        "",
        f"{HELD_DOCS} SciFact abstracts + {HELD_QUERIES} claims (seed {SEED}); mean cosine of "
        "each model's embeddings to the float all-MiniLM-L6-v2 ones. "
        f"CPU: {cpu_name()}. Written by `python benchmarks/encoder_heldout.py ... --report`.",
        "",
        "## Whole models (`binsearch compress-encoder` directories)",
        "",
        "| model | stored bits/weight | table bits | GPTQ weights | distill steps "
        "| held-out cosine (docs / queries) | load |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for (study, _, label), r in rows.items():
        if study == "model":
            gptq = (r.get("quantization") or {}).get("gptq_weights")
            lines.append(
                f"| {label} | {r['stored_bits']:.3f} | {r.get('table_budget') or '—'} "
                f"| {gptq if gptq is not None else '—'} | {r.get('distill_steps') or 0} "
                f"| **{r['cosine']:.4f}** ({r['cosine_docs']:.3f} / {r['cosine_queries']:.3f}) "
                f"| {r['load']} |"
            )
    lines += [
        "",
        "## GPTQ column order on a fixed allocation (same tables, planes, calibration texts)",
        "",
        "| model | GPTQ weights | GPTQ s | held-out cosine (docs / queries) | load |",
        "|---|---:|---:|---|---:|",
    ]
    for (study, _, label), r in rows.items():
        if study == "gptq":
            lines.append(
                f"| {label} | {r['gptq_weights']} | {r['gptq_s']:.0f} | **{r['cosine']:.4f}** "
                f"({r['cosine_docs']:.3f} / {r['cosine_queries']:.3f}) | {r['load']} |"
            )
    lines += [
        "",
        "## The word table alone (other weights float, or a model's)",
        "",
        "| table | other weights | table stored bits | held-out cosine | held-out tokens at 1 plane |",
        "|---|---|---:|---:|---:|",
    ]
    for (study, linear, label), r in rows.items():
        if study == "table":
            one = r["held_coverage"].get("1", {}).get("token_share", 0.0)
            lines.append(
                f"| {label} | {linear or 'float'} | {r['table_bits']:.3f} "
                f"| {r['cosine']:.4f} | {one:.1%} |"
            )
    (out / "heldout.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", choices=("models", "table", "gptq", "report"))
    parser.add_argument("dirs", nargs="*", help="models, gptq: compressed directories, DIR[=LABEL]")
    parser.add_argument("--variants", default=",".join(TABLE_VARIANTS))
    parser.add_argument("--budget", type=float, default=TABLE_BUDGET)
    parser.add_argument("--linear", default=None, help="table: other weights from this model")
    parser.add_argument("--cache", default=str(REPO / "results-local" / "encoder-cache"))
    parser.add_argument("--out", default=str(REPO / "results" / "encoder"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--report", action="store_true", help="then write the report")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not (SCIFACT / "corpus.jsonl").is_file():
        sys.exit(f"needs the shared SciFact data at {SCIFACT}")
    import torch

    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.study != "report":
        held, _ = scifact_split()
        ref = reference(cache, held)
        studies = {"models": study_models, "table": study_table, "gptq": study_gptq}
        studies[args.study](args, cache, held, ref)
    if args.report or args.study == "report":
        write_report(cache, Path(args.out))


if __name__ == "__main__":
    main()
