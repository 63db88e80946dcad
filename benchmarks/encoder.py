"""Compressed encoders against the float MiniLM: retrieval quality, fidelity, size, speed.

For each variant the SciFact and Cranfield corpora and judged queries are
re-encoded by that model, then scored by exact cosine search:

* nDCG@10 (bootstrap 95% interval) and recall of the float model's top-10;
* mean cosine of its embeddings to the float ones (corpus and queries);
* size on disk; stored bits per weight over the whole model (every weight
  matrix, embedding tables included, scales and tier indices counted);
* encoding speed and load time against float (medians of repeats).

Variants: ``float`` (the precomputed embeddings of ``../shared/data``),
``int8-dynamic`` (``torch.ao.quantization.quantize_dynamic``, Linear weights
only), ``int8-weight`` (weight-only, per-row absmax), and ``bB`` —
``binsearch compress-encoder --bits B`` with its defaults (``b3``, ``b2``),
and with options by name parts, e.g. ``b3-none-uniform``: ``mN`` (``--minutes
N``), ``none`` (``--distill none``), ``uniform`` (``--table uniform``: every
word-table row alike), ``cran`` (``--sources cranfield``: no WordNet), ``sci``
(``--calibrate`` the SciFact corpus: the user's own corpus). Plus the
end-to-end row: a compressed encoder feeding the learned grid codec (2 planes).

Everything slow is cached under ``--cache`` (models, embeddings), so a rerun
only computes what is missing. Run from the repository root::

    .venv/bin/python benchmarks/encoder.py --timing --report
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_name  # noqa: E402
from binsearch.collection.corpus import read_corpus, read_queries  # noqa: E402
from binsearch.encoder.compress.format import (  # noqa: E402
    directory_size,
    load_compressed,
    read_compressed,
)
from binsearch.encoder.model import Encoder, resolve_model  # noqa: E402
from binsearch.eval.quality import float_topk, load_embeddings, score_run  # noqa: E402

DATA = REPO.parent / "shared" / "data"
DATASETS = ("scifact", "cranfield")
MODEL_DIR = "all-MiniLM-L6-v2"
DEFAULT_VARIANTS = ("float", "int8-dynamic", "b3", "b2")
VARIANT_PARTS = {
    "none": ["--distill", "none"],
    "uniform": ["--table", "uniform"],
    "cran": ["--sources", "cranfield"],
    "sci": ["--calibrate", str(DATA / "scifact")],
}
K = 10


def build_compressed(name: str, cache: Path) -> Path:
    """The model directory of a ``bB[-mN|-none]`` variant: the CLI with its defaults, once."""
    from binsearch.cli.main import main as cli

    out = cache / "models" / name
    if (out / "binsearch_compressed.json").is_file():
        return out
    bits, *rest = name[1:].split("-")
    args = ["compress-encoder", "--bits", bits, "--out", str(out)]
    for part in rest:
        args += VARIANT_PARTS.get(part) or ["--minutes", part[1:]]
    started, cpu = time.perf_counter(), time.process_time()
    load = os.getloadavg()[0]
    if cli(args) != 0:
        sys.exit(f"compress-encoder failed for {name}")
    built = {
        "build_s": time.perf_counter() - started,
        "build_cpu_s": time.process_time() - cpu,
        "build_load": [load, os.getloadavg()[0]],
        "command": "binsearch " + " ".join(args),
    }
    (out.parent / f"{name}.build.json").write_text(json.dumps(built) + "\n")
    return out


def int8_weight_model():
    """Float MiniLM with every Linear weight rounded to per-row absmax int8 (weight-only)."""
    import torch

    model = Encoder(None).model
    sizes = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12).half().float()
                module.weight.copy_((w / scale).round().clamp(-127, 127) * scale)
                sizes += w.numel() + 2 * w.shape[0]  # int8 values + float16 scales
    return model, sizes


def load_variant(name: str, cache: Path):
    """``(sentence-transformers model, size in bytes, bits per Linear weight)``."""
    import torch

    if name == "float":
        _, path = resolve_model(None)
        return Encoder(None).model, weights_size(path), 32.0, 32.0
    if name == "int8-dynamic":
        model = Encoder(None).model
        qmodel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        file = cache / "int8-dynamic.pt"
        torch.save(qmodel.state_dict(), file)
        return qmodel, file.stat().st_size + tokenizer_size(), 8.0, 8.0
    if name == "int8-weight":
        model, linear_bytes = int8_weight_model()
        linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        rest = sum(
            t.numel() * t.element_size()
            for n, t in model.state_dict().items()
            if n.rsplit(".", 1)[0] not in linear or not n.endswith("weight")
        )
        n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        stored = (
            8
            + 16
            * sum(m.weight.shape[0] for m in model.modules() if isinstance(m, torch.nn.Linear))
            / n_linear
        )
        return model, linear_bytes + rest + tokenizer_size(), 8.0, stored
    path = build_compressed(name, cache)
    config = read_compressed(path).config
    bits = config["bits_per_weight"]
    return load_compressed(path), directory_size(path), bits["sign_bits"], bits["stored_bits"]


def weights_size(path: Path) -> int:
    """Bytes a float model needs: weights, config, tokenizer, pooling."""
    skip = {"README.md", ".gitattributes", "data_config.json"}
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name not in skip)


def tokenizer_size() -> int:
    _, path = resolve_model(None)
    return weights_size(path) - (path / "model.safetensors").stat().st_size


def encode_dataset(model, dataset: str, cache: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Corpus and all-query embeddings of ``dataset`` by ``model`` (cached .npy)."""
    folder = cache / "embeddings" / name / dataset
    if (folder / "queries.npy").is_file():
        return np.load(folder / "corpus.npy"), np.load(folder / "queries.npy")
    root = DATA / dataset
    ids = json.loads((root / "embeddings" / MODEL_DIR / "ids.json").read_text())
    docs = {d.id: d.content for d in read_corpus(root, empty="keep")}
    queries = read_queries(root)

    def run(texts):
        out = model.encode(
            texts,
            batch_size=64,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=True,
        )
        return np.ascontiguousarray(out, dtype=np.float32)

    corpus = run([docs[i] for i in ids["corpus_ids"]])
    q = run([queries[i] for i in ids["query_ids"]])
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "corpus.npy", corpus)
    np.save(folder / "queries.npy", q)
    return corpus, q


def evaluate(name: str, corpus: np.ndarray, queries: np.ndarray, dataset: str) -> dict:
    """Metrics of one variant's embeddings on one dataset, against the float ones."""
    root = DATA / dataset
    ref = load_embeddings(root, root / "embeddings" / MODEL_DIR)
    ids = json.loads((root / "embeddings" / MODEL_DIR / "ids.json").read_text())
    float_corpus = np.load(root / "embeddings" / MODEL_DIR / "corpus.npy")
    float_queries = np.load(root / "embeddings" / MODEL_DIR / "queries.npy")
    cos = np.concatenate([(corpus * float_corpus).sum(1), (queries * float_queries).sum(1)])
    keep = [ids["query_ids"].index(q) for q in ref.query_ids]
    depth = 100
    _, float_rows = float_topk(ref.corpus, ref.queries, depth)
    _, rows = float_topk(corpus, queries[keep], depth)
    metrics = score_run(ref, rows, float_rows, K)
    metrics["mean_cosine"] = float(cos.mean())
    return metrics


def end_to_end(
    corpus: np.ndarray, queries: np.ndarray, dataset: str, planes: int = 2, codec_name: str = "grid"
) -> dict:
    """Compressed encoder + a ``planes``-plane codec: the whole pipeline's loss. ``grid``
    (default) is the learned grid codec, fitted on the encoder's own corpus embeddings."""
    from binsearch.codes.codecs import make_codec
    from binsearch.collection.coded_index import CodedIndex

    root = DATA / dataset
    ref = load_embeddings(root, root / "embeddings" / MODEL_DIR)
    ids = json.loads((root / "embeddings" / MODEL_DIR / "ids.json").read_text())
    keep = [ids["query_ids"].index(q) for q in ref.query_ids]
    _, float_rows = float_topk(ref.corpus, ref.queries, 100)
    options = {"train_on": corpus} if codec_name == "grid" else {}
    codec = make_codec(codec_name, corpus.shape[1], planes, **options)
    index = CodedIndex.from_embeddings(corpus, codec)
    _, rows = index.topk(queries[keep], 100)
    out = score_run(ref, rows, float_rows, K)
    out["bits_per_vector"] = index.bits_per_vector
    out["codec"] = codec_name
    return out


def speed(model, texts: list[str], repeats: int = 3) -> float:
    """Median texts per second over ``repeats`` encodes of ``texts``."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.encode(texts, batch_size=64, convert_to_numpy=True)
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates)


def load_time(name: str, cache: Path, repeats: int = 5) -> float:
    """Median seconds to load the variant's directory into a ready model."""
    if name == "float":
        _, path = resolve_model(None)
    elif name.startswith("b"):
        path = cache / "models" / name
    else:
        return float("nan")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        Encoder(str(path)).model  # noqa: B018 - the load is what is timed
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--cache", default=str(REPO / "results-local" / "encoder-cache"))
    parser.add_argument("--out", default=str(REPO / "results" / "encoder"))
    parser.add_argument("--e2e", default="b3", help="variant for the end-to-end row")
    parser.add_argument("--speed-texts", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--timing", action="store_true", help="measure speed and load time")
    parser.add_argument("--report", action="store_true", help="write the report from the cache")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not (DATA / "scifact" / "corpus.jsonl").is_file():
        sys.exit(f"needs the shared datasets at {DATA}")
    cache = Path(args.cache)
    (cache / "rows").mkdir(parents=True, exist_ok=True)
    variants = [v for v in args.variants.split(",") if v]
    datasets = [d for d in args.datasets.split(",") if d]
    for name in variants:
        run_variant(name, datasets, cache, args)
    if args.report:
        rows = {}
        order = list(dict.fromkeys([*variants, *DEFAULT_VARIANTS]))
        for name in order + sorted(p.stem for p in (cache / "rows").glob("*.json")):
            file = cache / "rows" / f"{name}.json"
            if file.is_file() and name not in rows:
                rows[name] = json.loads(file.read_text())
        write_report(rows, Path(args.out), args.e2e)


def run_variant(name: str, datasets: list[str], cache: Path, args: argparse.Namespace) -> None:
    """Evaluate (and time) one variant; one cached JSON row per variant, merged into it."""
    row_file = cache / "rows" / f"{name}.json"
    row = json.loads(row_file.read_text()) if row_file.is_file() else {}
    print(f"== {name}", file=sys.stderr, flush=True)
    model = None
    for dataset in datasets:
        if name == "float":
            root = DATA / dataset / "embeddings" / MODEL_DIR
            corpus, queries = np.load(root / "corpus.npy"), np.load(root / "queries.npy")
        else:
            if model is None:
                model, *info = load_variant(name, cache)
            corpus, queries = encode_dataset(model, dataset, cache, name)
        row[dataset] = evaluate(name, corpus, queries, dataset)
        if name in (args.e2e, "float"):
            row[f"{dataset}_e2e"] = end_to_end(corpus, queries, dataset)
        print(name, dataset, json.dumps(row[dataset]), file=sys.stderr, flush=True)
    if model is None:
        model, *info = load_variant(name, cache)
    size, bits, stored = info
    row.update(size_bytes=size, bits=bits, stored_bits=stored)
    if (cache / "models" / name / "binsearch_compressed.json").is_file():
        config = read_compressed(cache / "models" / name).config
        row["table_rows"] = config.get("table_rows")
        row["quantization"] = config.get("quantization")
        row["calibration"] = config.get("calibration")
    build = cache / "models" / f"{name}.build.json"
    if build.is_file():
        row.update(json.loads(build.read_text()))
    if args.timing:
        texts = [d.content for d in read_corpus(DATA / "scifact", empty="skip")]
        row["texts_per_s"] = speed(model, texts[: args.speed_texts])
        row["load_s"] = load_time(name, cache)
    row_file.write_text(json.dumps(row, indent=2) + "\n")


def write_report(results: dict, out: Path, e2e: str) -> None:
    """``results.json``, ``report.md`` and ``encoder.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    float_speed = results.get("float", {}).get("texts_per_s")
    lines = [
        "# Compressed encoders vs float all-MiniLM-L6-v2",
        "",
        "Corpus and queries re-encoded by each model; exact cosine search; judged test queries. "
        "Bits = sign bits per weight over every weight matrix (stored = with float16 scales and "
        "tier indices; int8 rows count Linear weights only); cosine = mean over "
        "corpus and queries vs the float embeddings; float R@10 = recall of the float model's top-10.",
        "",
        f"CPU: {cpu_name()}; load average when the report was written: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "| variant | bits/weight (stored) | size MB | SciFact nDCG@10 (95% CI) | SciFact float R@10 "
        "| SciFact cosine | Cranfield nDCG@10 | Cranfield cosine | texts/s (vs float) | load s "
        "| build s wall / CPU |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        s, c = r.get("scifact", {}), r.get("cranfield", {})
        lo, hi = s.get("ndcg@10_ci95", [None, None])
        ci = f" ({lo:.3f}–{hi:.3f})" if lo is not None else ""
        rate = r.get("texts_per_s")
        rel = f" ({rate / float_speed:.2f}x)" if rate and float_speed else ""
        lines.append(
            f"| {name} | {r['bits']:.2f} ({r['stored_bits']:.2f}) | {r['size_bytes'] / 1e6:.1f} "
            f"| {fmt(s.get('ndcg@10'))}{ci} | {fmt(s.get('float_recall@10'), '.3f')} "
            f"| {fmt(s.get('mean_cosine'))} | {fmt(c.get('ndcg@10'))} | {fmt(c.get('mean_cosine'))} "
            f"| {fmt(rate, '.1f')}{rel} | {fmt(r.get('load_s'), '.2f')} "
            f"| {fmt(r.get('build_s'), '.0f')} / {fmt(r.get('build_cpu_s'), '.0f')} |"
        )
    e2e_rows = [(n, results[n]) for n in ("float", e2e) if n in results]
    if any("scifact_e2e" in r for _, r in e2e_rows):
        lines += [
            "",
            "End to end: encoder + learned grid codec (fitted on that encoder's corpus "
            "embeddings), 2 planes; float R@10 "
            "against the float encoder's exact float top-10:",
            "",
            "| encoder + codec | dataset | bits/vector | nDCG@10 | float R@10 | Recall@100 |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, row in e2e_rows:
            for dataset in DATASETS:
                r = row.get(f"{dataset}_e2e")
                if r:
                    lines.append(
                        f"| {name} + {r.get('codec', 'residual')} x2 | {dataset} "
                        f"| {r.get('bits_per_vector', '—')} | {r['ndcg@10']:.4f} "
                        f"| {r['float_recall@10']:.3f} | {r['recall@100']:.3f} |"
                    )
    lines += table_rows_section(results)
    lines += ["", "![nDCG@10 and size vs bits per weight](encoder.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    plot(results, out / "encoder.png")


def table_rows_section(results: dict) -> list[str]:
    """The word table's allocation curve of each row-wise variant: rows at each
    width and the share of each calibration source's tokens they carry."""
    lines: list[str] = []
    for name, r in results.items():
        info = r.get("table_rows")
        if not info:
            continue
        sources = list(info["coverage"])
        lines += [
            "",
            f"Word table of `{name}` by rows ({info['budget']} stored bits per weight of the "
            "table): rows at each plane count, and the share of each calibration source's "
            "tokens they carry:",
            "",
            "| planes | rows | " + " | ".join(f"{s} tokens" for s in sources) + " |",
            "|---:|---:|" + "---:|" * len(sources),
        ]
        first = info["coverage"][sources[0]]
        for k in first:
            shares = " | ".join(f"{info['coverage'][s][k]['token_share']:.1%}" for s in sources)
            lines.append(f"| {k} | {first[k]['rows']:,} | {shares} |")
    return lines


def fmt(value: float | None, spec: str = ".4f") -> str:
    """``value`` formatted, or a dash when it was not measured."""
    return "—" if value is None or value != value else format(value, spec)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in results.items():
        x = r["stored_bits"]
        if "scifact" in r:
            axes[0].scatter(x, r["scifact"]["ndcg@10"], label=name)
            axes[0].annotate(name, (x, r["scifact"]["ndcg@10"]), fontsize=7)
        axes[1].scatter(x, r["size_bytes"] / 1e6)
        axes[1].annotate(name, (x, r["size_bytes"] / 1e6), fontsize=7)
    for ax, label in zip(axes, ("SciFact nDCG@10", "model size on disk (MB)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("stored bits per weight")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].axhline(0.632, color="gray", linestyle=":", label="target 3 bits (0.632)")
    axes[0].axhline(0.613, color="gray", linestyle="--", label="target 2 bits (0.613)")
    axes[0].legend(fontsize=7)
    axes[1].axhline(12, color="gray", linestyle=":")
    fig.suptitle("Compressed all-MiniLM-L6-v2: retrieval and size vs bits per weight")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
