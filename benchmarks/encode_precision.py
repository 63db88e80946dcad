"""Encoding precision paths side by side, in one run: speed, fidelity, retrieval.

Every path encodes the same SciFact abstracts (``title + " " + text``, a fixed
random subset, seed 0) split into ``--rounds`` chunks, each chunk by every path
in turn, the order alternating per round (load drift on a shared machine hits
all paths alike). Paths:

* ``st-fp32``: plain sentence-transformers ``encode`` in float32 -- what
  ``binsearch index`` ran before precisions existed (the peer, ratio 1.00x);
* ``bf16``: the model cast to bfloat16 (:func:`binsearch.encoder.precision.to_precision`);
* ``autocast-bf16``: the float32 model under ``torch.autocast("cpu", bfloat16)``;
* ``int8``: torch dynamic int8, weights per output channel;
* ``mixed``: int8 on the layers that tolerate it (per-layer sensitivity on the
  probe texts), bf16 elsewhere (:mod:`binsearch.encoder.mixed`);
* ``bf16-workers``: bf16 tokenised ahead and run one batch per thread side by
  side, torch on one thread each -- what ``binsearch index`` now runs;
* ``onnx-fp32`` / ``onnx-int8``: the project's ONNX Runtime export, and ONNX
  Runtime's dynamic int8 (per channel) of it, where onnxruntime is installed.

Reported per path: documents/s (median over rounds), the median of per-round
ratios against ``st-fp32`` (wall and CPU), mean/min cosine to ``st-fp32``'s
embeddings, and the recall@10 of fp32's own top-10 for SciFact's test claims
searched in the subset (every path encodes the claims too). Then ``auto``: what
a fresh :class:`~binsearch.encoder.precision.PrecisionChooser` chooses here
(and how long it measured), and SciFact nDCG@10 over the whole corpus with the
chosen path against the published float32 embeddings (``--no-ndcg`` skips the
corpus encoding).

``--compressed DIR`` adds a ``binsearch compress-encoder`` directory in fp32
and bf16 (its cosine is to the float model, so it shows the compression's loss).

Writes ``results/encode/precision/{precision.json,report.md}``. Timed figures
on a shared machine under the bench lock::

    flock /tmp/binsearch-bench.lock python benchmarks/encode_precision.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import cpu_name, median  # noqa: E402

from binsearch.encoder import Encoder  # noqa: E402
from binsearch.encoder import precision as P  # noqa: E402

DATA = Path(os.environ.get("BINSEARCH_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "results" / "encode" / "precision"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")
Path_ = Callable[[list[str]], np.ndarray]


def read_jsonl(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f]


def doc_text(row: dict) -> str:
    return f"{row.get('title', '')} {row.get('text', '')}".strip()


def machine(threads: int) -> dict:
    """CPU, the flags that matter to GEMMs, threads, versions, load."""
    from importlib.metadata import version

    import torch

    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.is_file() else ""
    return {
        "cpu": cpu_name(),
        "cpu_flags": " ".join(f for f in FLAGS if f" {f}" in text),
        "threads": threads,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "sentence_transformers": version("sentence-transformers"),
        "load_before": list(os.getloadavg()),
    }


def build_paths(encoder: Encoder, scratch: Path, threads: int, batch: int) -> dict[str, Path_]:
    """The paths to compare, each ``texts -> float32 unit rows``."""
    import torch

    st = encoder.model
    paths: dict[str, Path_] = {
        "st-fp32": lambda t: st.encode(
            t, batch_size=batch, normalize_embeddings=True, show_progress_bar=False
        ),
    }
    bf16 = P.to_precision(st, "bf16")
    paths["bf16"] = lambda t: P.encode_normalized(bf16, t, batch)

    def autocast(t: list[str]) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return P.encode_normalized(st, t, batch)

    paths["autocast-bf16"] = autocast
    int8 = P.to_precision(st, "int8")
    paths["int8"] = lambda t: P.encode_normalized(int8, t, batch)
    mixed = P.to_precision(st, "mixed")  # plan measured now, on the probe texts
    paths["mixed"] = lambda t: P.encode_normalized(mixed, t, batch)
    bf16_enc = Encoder(backend="torch", precision="bf16")

    def workers(t: list[str]) -> np.ndarray:
        from binsearch.encoder.batches import Workers

        with Workers(threads) as w:  # what `binsearch index` runs: a batch per core
            return bf16_enc.encode_tokenized(bf16_enc.tokenize_bulk(t, batch), workers=w)

    paths["bf16-workers"] = workers
    paths.update(onnx_paths(encoder, scratch, threads, batch))
    return paths


def compressed_paths(directory: Path, batch: int) -> dict[str, Path_]:
    """A compressed encoder directory, dequantized, in fp32 and in bf16."""
    out: dict[str, Path_] = {}
    for precision in ("fp32", "bf16"):
        enc = Encoder(str(directory), backend="torch", precision=precision)
        out[f"compressed-{precision}"] = lambda t, e=enc: e.encode(t, batch_size=batch)
    return out


def onnx_paths(encoder: Encoder, scratch: Path, threads: int, batch: int) -> dict[str, Path_]:
    """ONNX Runtime fp32 (the cached export) and its dynamic int8, when available."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from binsearch.encoder.onnx_runtime import OnnxEncoder
    except ImportError:
        return {}
    exported = encoder.onnx_encoder()
    if exported is None:
        return {}
    fp32 = OnnxEncoder(exported.directory, threads=threads)
    for f in exported.directory.iterdir():
        if f.name != "model.onnx":
            shutil.copy(f, scratch / f.name)
    quantize_dynamic(
        exported.directory / "model.onnx",
        scratch / "model.onnx",
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    int8 = OnnxEncoder(scratch, threads=threads)
    return {
        "onnx-fp32": lambda t: fp32.encode(t, batch_size=batch),
        "onnx-int8": lambda t: int8.encode(t, batch_size=batch),
    }


def interleaved(paths: dict[str, Path_], chunks: list[list[str]]) -> dict[str, dict]:
    """Every chunk by every path, order alternating per round: times and embeddings."""
    out = {name: {"wall": [], "cpu": [], "emb": []} for name in paths}
    names = list(paths)
    for i, chunk in enumerate(chunks):
        for name in names if i % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            emb = paths[name](chunk)
            out[name]["wall"].append(time.perf_counter() - wall)
            out[name]["cpu"].append(time.process_time() - cpu)
            out[name]["emb"].append(np.asarray(emb, dtype=np.float32))
    return out


def top10(docs: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = queries @ docs.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :10]


def summarise(runs: dict[str, dict], per_chunk: list[int], queries: dict[str, np.ndarray]):
    """One row per path against ``st-fp32``: rates, ratios, cosine, recall of its top-10."""
    base = runs["st-fp32"]
    ref = np.concatenate(base["emb"])
    ref_top = top10(ref, queries["st-fp32"])
    rows = []
    for name, run in runs.items():
        wall, cpu = np.array(run["wall"]), np.array(run["cpu"])
        emb = np.concatenate(run["emb"])
        cos = np.sum(emb * ref, axis=1)
        top = top10(emb, queries[name])
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, ref_top, strict=True)])
        rows.append(
            {
                "path": name,
                "docs_per_s": median(np.array(per_chunk) / wall),
                "ratio_wall": median(np.array(base["wall"]) / wall),
                "ratio_cpu": median(np.array(base["cpu"]) / cpu),
                "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()),
                "recall10_of_fp32": float(recall),
                "rounds_ratio_wall": [round(float(r), 3) for r in np.array(base["wall"]) / wall],
            }
        )
    return rows


def ndcg_scifact(encoder: Encoder, batch: int) -> dict:
    """SciFact nDCG@10: the published float32 embeddings vs the auto encoder's corpus."""
    from binsearch.eval.metrics import ndcg_at_k
    from binsearch.eval.quality import load_embeddings

    data = load_embeddings(DATA / "scifact", DATA / "scifact" / "embeddings" / "all-MiniLM-L6-v2")
    corpus = {r["_id"]: doc_text(r) for r in read_jsonl(DATA / "scifact" / "corpus.jsonl")}
    queries = {r["_id"]: r["text"] for r in read_jsonl(DATA / "scifact" / "queries.jsonl")}
    start = time.perf_counter()
    docs = encoder.encode([corpus[d] for d in data.doc_ids], batch_size=batch, progress=True)
    seconds = time.perf_counter() - start
    q = encoder.encode([queries[i] for i in data.query_ids], batch_size=batch)

    def score(doc_emb: np.ndarray, q_emb: np.ndarray) -> float:
        order = np.argsort(-(q_emb @ doc_emb.T), axis=1, kind="stable")[:, :10]
        return float(
            np.mean(
                [
                    ndcg_at_k([data.doc_ids[j] for j in row], data.qrels[qid], 10)
                    for qid, row in zip(data.query_ids, order, strict=True)
                ]
            )
        )

    cos = np.sum(docs * data.corpus, axis=1)
    return {
        "precision": encoder.precision_used,
        "docs": len(docs),
        "encode_s": seconds,
        "docs_per_s": len(docs) / seconds,
        "ndcg10_fp32_published": score(data.corpus, data.queries),
        "ndcg10_chosen": score(docs, q),
        "cosine_to_published_mean": float(cos.mean()),
        "cosine_to_published_min": float(cos.min()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=256, help="SciFact abstracts (default 256)")
    parser.add_argument("--rounds", type=int, default=4, help="chunks, interleaved (default 4)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ORT threads (2)")
    parser.add_argument("--no-ndcg", action="store_true", help="skip the whole-corpus nDCG")
    parser.add_argument(
        "--compressed", type=Path, default=None, help="a compress-encoder directory to add"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    args = parser.parse_args(argv)
    corpus_file = DATA / "scifact" / "corpus.jsonl"
    if not corpus_file.is_file():
        print(f"error: {corpus_file} not found (set BINSEARCH_DATA)", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    docs = [doc_text(r) for r in read_jsonl(corpus_file)]
    rng = np.random.default_rng(0)
    docs = [docs[i] for i in rng.choice(len(docs), min(args.docs, len(docs)), replace=False)]
    chunks = [list(c) for c in np.array_split(np.array(docs, dtype=object), args.rounds)]
    claims = [r["text"] for r in read_jsonl(DATA / "scifact" / "queries.jsonl")][:300]
    with tempfile.TemporaryDirectory() as scratch:
        # a fresh chooser, as on a machine that never ran binsearch: its measuring time counts
        cache = Path(scratch) / "precision.json"
        auto = Encoder(
            backend="torch", precision="auto", precision_chooser=P.PrecisionChooser(cache)
        )
        start = time.perf_counter()
        auto.encode(docs[:16], batch_size=args.batch_size)
        choose_s = time.perf_counter() - start
        choice = auto.precision_choice
        onnx_dir = Path(scratch) / "onnx-int8"
        onnx_dir.mkdir()
        paths = build_paths(Encoder(backend="onnx"), onnx_dir, args.threads, args.batch_size)
        if args.compressed is not None:
            paths.update(compressed_paths(args.compressed, args.batch_size))
        for fn in paths.values():  # warm-up: first-call allocations out of the timings
            fn(docs[:4])
        print(f"documents: {len(docs)} in {args.rounds} rounds, paths {list(paths)}", flush=True)
        runs = interleaved(paths, chunks)
        q_emb = {name: np.asarray(fn(claims), dtype=np.float32) for name, fn in paths.items()}
        rows = summarise(runs, [len(c) for c in chunks], q_emb)
    result = {
        "machine": info,
        # no paths of this machine in the results: the folder names only
        "settings": vars(args)
        | {"out": args.out.name, "compressed": args.compressed and args.compressed.name},
        "paths": rows,
        "auto": {
            "precision": choice.precision if choice else None,
            "reason": choice.reason if choice else None,
            "first_call_s": choose_s,
            "measurements": [vars(m) for m in choice.measurements] if choice else [],
        },
    }
    if not args.no_ndcg:
        result["ndcg"] = ndcg_scifact(auto, args.batch_size)
    result["machine"]["load_after"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(result, indent=1))
    (args.out / "report.md").write_text(report(result))
    print(report(result))
    return 0


def report(result: dict) -> str:
    """The markdown page of one run."""
    m, s, a = result["machine"], result["settings"], result["auto"]
    load = "/".join(f"{x:.1f}" for x in m["load_before"])
    after = "/".join(f"{x:.1f}" for x in m["load_after"])
    lines = [
        "# Encoding precision paths (all-MiniLM-L6-v2)",
        "",
        f"Machine: {m['cpu']}, flags: {m['cpu_flags']}; torch {m['torch']} "
        f"(CPU capability {m['torch_cpu_capability']}), {m['threads']} threads; "
        f"sentence-transformers {m['sentence_transformers']}. Load average (1/5/15 min) "
        f"before {load}, after {after}.",
        "",
        f"{s['docs']} SciFact abstracts (seed 0) in {s['rounds']} interleaved rounds, batch "
        f"{s['batch_size']}. Ratios: medians of per-round ratios against `st-fp32` in the "
        "same run. Cosine: to `st-fp32`'s embeddings of the same abstracts. Recall@10: of "
        "`st-fp32`'s own top-10 for 300 SciFact claims searched among these abstracts.",
        "",
        "| path | docs/s | vs fp32 (wall) | vs fp32 (CPU) | cosine mean | cosine min "
        "| recall@10 of fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["paths"]:
        lines.append(
            f"| {r['path']} | {r['docs_per_s']:.1f} | {r['ratio_wall']:.2f}x | "
            f"{r['ratio_cpu']:.2f}x | {r['cosine_mean']:.6f} | {r['cosine_min']:.6f} | "
            f"{r['recall10_of_fp32']:.3f} |"
        )
    lines += [
        "",
        f"## `auto` on this machine: **{a['precision']}**",
        "",
        f"{a['reason']}. A fresh chooser's first call (measuring included, 16 abstracts "
        f"encoded after it) took {a['first_call_s']:.1f} s.",
        "",
        "| candidate | CPU s on the probe texts (1 thread) | cosine mean | cosine min | "
        "eligible | note |",
        "|---|---:|---:|---:|---|---|",
    ]
    for x in a["measurements"]:
        cpu = "-" if x["cpu_s"] is None else f"{x['cpu_s']:.3f}"
        measured = not x["note"].startswith(("not measured", "unavailable"))
        cos = [f"{x[k]:.6f}" if measured else "-" for k in ("cosine_mean", "cosine_min")]
        plan = f" ({len(x['layers'])} layers in int8)" if x.get("layers") else ""
        lines.append(
            f"| {x['precision']} | {cpu} | {cos[0]} | {cos[1]} | "
            f"{'yes' if x['eligible'] else 'no'} | {x['note']}{plan} |"
        )
    n = result.get("ndcg")
    if n:
        lines += [
            "",
            f"## SciFact nDCG@10, whole corpus ({n['docs']} abstracts)",
            "",
            "| embeddings | nDCG@10 |",
            "|---|---:|",
            f"| published float32 | {n['ndcg10_fp32_published']:.4f} |",
            f"| `auto` ({n['precision']}), encoded here at {n['docs_per_s']:.1f} docs/s | "
            f"{n['ndcg10_chosen']:.4f} |",
            "",
            f"Cosine of the chosen path's corpus to the published embeddings: mean "
            f"{n['cosine_to_published_mean']:.6f}, min {n['cosine_to_published_min']:.6f}.",
        ]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
