"""Encoding speed: today's torch path against the ONNX Runtime path, in one run.

Two shapes, as the project encodes them:

* documents: SciFact abstracts (``title + " " + text``), a fixed random
  subset (``--docs``, seed 0), split into ``--rounds`` chunks; each chunk is
  encoded by every path in turn, the order alternating per round, so load
  drifts on a shared machine hit both paths alike. Reported: documents/s
  (median over rounds), the median of the per-round ratios, CPU seconds per
  document (``time.process_time``: robust to other jobs taking the cores),
  and mean/min cosine of each path's embeddings to torch's.
* queries: SciFact claims in calls of 1, 8, 16 and 32 texts, the shapes the
  service sends; per-call times interleaved the same way.

``--int8`` adds ONNX Runtime's dynamic int8 quantization of the same export
(per-channel weights), measured the same way: it is the candidate that would
double speed, and it is kept only if its cosine to torch stays >= 0.999.

Writes ``results/encode/{results.json,report.md}``. Run from the repository
root, niced on a shared machine::

    nice -n 10 .venv/bin/python benchmarks/encode.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import cpu_name, median  # noqa: E402

from binsearch.encoder.model import ONNX_MAX_TEXTS, Encoder  # noqa: E402

DATA = Path(os.environ.get("BINSEARCH_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "results" / "encode"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def read_texts(path: Path, document: bool) -> list[str]:
    """SciFact texts in file order: documents as ``title + " " + text``, queries as text."""
    texts = []
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            texts.append((f"{row['title']} {row['text']}" if document else row["text"]).strip())
    return texts


def machine() -> dict:
    """CPU, the SIMD flags that matter to GEMMs, threads, versions, load."""
    from importlib.metadata import version

    import onnxruntime
    import torch

    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.is_file() else ""
    return {
        "cpu": cpu_name(),
        "cpu_flags": " ".join(f for f in FLAGS if f" {f}" in text),
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "sentence_transformers": version("sentence-transformers"),
        "python": platform.python_version(),
        "load_before": list(os.getloadavg()),
    }


def interleaved(
    paths: dict[str, Callable[[list[str]], np.ndarray]], chunks: list[list[str]]
) -> dict[str, dict]:
    """Encode every chunk by every path (order alternating per round): times and embeddings."""
    out = {name: {"wall": [], "cpu": [], "emb": []} for name in paths}
    names = list(paths)
    for i, chunk in enumerate(chunks):
        for name in names if i % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            emb = paths[name](chunk)
            out[name]["wall"].append(time.perf_counter() - wall)
            out[name]["cpu"].append(time.process_time() - cpu)
            out[name]["emb"].append(emb)
    return out


def summarise(runs: dict[str, dict], per_chunk: list[int], unit: str) -> list[dict]:
    """One row per path: rate, ratios against torch, CPU per text, cosine to torch."""
    base = runs["torch"]
    ref = np.concatenate(base["emb"])
    rows = []
    for name, run in runs.items():
        wall, cpu = np.array(run["wall"]), np.array(run["cpu"])
        cos = np.sum(np.concatenate(run["emb"]) * ref, axis=1)
        rows.append(
            {
                "path": name,
                f"{unit}_per_s": median(np.array(per_chunk) / wall),
                "ratio_wall": median(np.array(base["wall"]) / wall),
                "ratio_cpu": median(np.array(base["cpu"]) / cpu),
                "cpu_ms_per_text": 1e3 * float(cpu.sum()) / sum(per_chunk),
                "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()),
                "rounds_ratio_wall": [round(float(r), 3) for r in np.array(base["wall"]) / wall],
            }
        )
    return rows


def int8_path(
    onnx_dir: Path, scratch: Path, threads: int | None
) -> Callable[[list[str]], np.ndarray]:
    """ONNX Runtime's dynamic int8 quantization (per-channel) of the cached export."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from binsearch.encoder.onnx_runtime import OnnxEncoder

    for f in onnx_dir.iterdir():
        if f.name != "model.onnx":
            shutil.copy(f, scratch / f.name)
    quantize_dynamic(
        onnx_dir / "model.onnx",
        scratch / "model.onnx",
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    encoder = OnnxEncoder(scratch, threads=threads)
    return lambda texts: encoder.encode(texts, batch_size=64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=384, help="SciFact abstracts (default 384)")
    parser.add_argument("--rounds", type=int, default=6, help="document chunks (default 6)")
    parser.add_argument("--batch-size", type=int, default=64, help="document batch (default 64)")
    parser.add_argument("--query-calls", type=int, default=24, help="calls per query shape")
    parser.add_argument("--int8", action="store_true", help="also measure int8 dynamic quant")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for both paths (default: every CPU this process may use); 1 measures "
        "each path's own cost, least disturbed by other jobs",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    args = parser.parse_args(argv)
    corpus = DATA / "scifact" / "corpus.jsonl"
    if not corpus.is_file():
        print(f"error: {corpus} not found (set BINSEARCH_DATA)", file=sys.stderr)
        return 2

    torch_enc, onnx_enc = Encoder(backend="torch"), Encoder(backend="onnx")
    if onnx_enc.onnx_encoder() is None:
        print(
            "error: the ONNX Runtime path is unavailable (see the log line above)", file=sys.stderr
        )
        return 1
    if args.threads:
        import torch

        from binsearch.encoder.onnx_runtime import OnnxEncoder

        torch.set_num_threads(args.threads)
        onnx_enc._onnx = OnnxEncoder(onnx_enc.onnx_encoder().directory, threads=args.threads)
    info = machine()
    docs = read_texts(corpus, document=True)
    rng = np.random.default_rng(0)
    docs = [docs[i] for i in rng.choice(len(docs), min(args.docs, len(docs)), replace=False)]
    chunks = [list(c) for c in np.array_split(np.array(docs, dtype=object), args.rounds)]
    bs = args.batch_size
    paths: dict[str, Callable[[list[str]], np.ndarray]] = {
        "torch": lambda t: torch_enc.encode(t, batch_size=bs),
        "onnx": lambda t: onnx_enc.encode(t, batch_size=bs),
    }
    with tempfile.TemporaryDirectory() as scratch:
        if args.int8:
            paths["onnx-int8"] = int8_path(
                onnx_enc.onnx_encoder().directory, Path(scratch), args.threads or None
            )
        for fn in paths.values():  # warm-up: first-call allocations out of the timings
            fn(docs[:4])
        print(f"documents: {len(docs)} in {args.rounds} rounds", flush=True)
        doc_rows = summarise(interleaved(paths, chunks), [len(c) for c in chunks], "docs")

    queries = read_texts(DATA / "scifact" / "queries.jsonl", document=False)
    query_rows = []
    for size in (1, 8, 16, 32):
        calls = [queries[i * size : (i + 1) * size] for i in range(args.query_calls)]
        qpaths = {k: v for k, v in paths.items() if k != "onnx-int8"}
        print(f"queries: {args.query_calls} calls of {size}", flush=True)
        for row in summarise(interleaved(qpaths, calls), [size] * len(calls), "texts"):
            query_rows.append({"batch": size} | row)
    info["load_after"] = list(os.getloadavg())
    result = {
        "machine": info,
        "settings": vars(args) | {"out": str(args.out), "onnx_max_texts": ONNX_MAX_TEXTS},
        "documents": doc_rows,
        "queries": query_rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    (args.out / "report.md").write_text(report(result))
    print(report(result))
    return 0


def report(result: dict) -> str:
    """The markdown page of one run."""
    m, s = result["machine"], result["settings"]
    lines = [
        "# Encoding speed: torch vs ONNX Runtime (all-MiniLM-L6-v2)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, flags: {m['cpu_flags']}; torch {m['torch']} "
        f"({m['torch_threads']} threads, OMP_WAIT_POLICY {m['omp_wait_policy']}), onnxruntime "
        f"{m['onnxruntime']} (same thread count, no spinning), sentence-transformers "
        f"{m['sentence_transformers']}. Load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.1f}' for x in m['load_before'])}, after "
        f"{'/'.join(f'{x:.1f}' for x in m['load_after'])}.",
        "",
        "Ratios are medians of per-round ratios against torch in the same run (paths "
        "interleaved); CPU ratio = torch CPU seconds / path CPU seconds, the figure that other "
        "jobs on the machine disturb least. Cosine = to torch's embeddings of the same texts.",
        "",
        f"## Documents: {s['docs']} SciFact abstracts (seed 0), {s['rounds']} rounds, "
        f"batch {s['batch_size']}",
        "",
        "| path | docs/s | ratio (wall) | ratio (CPU) | CPU ms/doc | cosine mean | cosine min |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["documents"]:
        lines.append(
            f"| {r['path']} | {r['docs_per_s']:.1f} | {r['ratio_wall']:.2f}x | "
            f"{r['ratio_cpu']:.2f}x | {r['cpu_ms_per_text']:.0f} | {r['cosine_mean']:.6f} | "
            f"{r['cosine_min']:.6f} |"
        )
    lines += [
        "",
        f"## Queries: SciFact claims, {s['query_calls']} calls per shape",
        "",
        "| texts per call | path | texts/s | ratio (wall) | ratio (CPU) | CPU ms/text | cosine min |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["queries"]:
        lines.append(
            f"| {r['batch']} | {r['path']} | {r['texts_per_s']:.1f} | {r['ratio_wall']:.2f}x | "
            f"{r['ratio_cpu']:.2f}x | {r['cpu_ms_per_text']:.1f} | {r['cosine_min']:.6f} |"
        )
    lines += [
        "",
        f"`backend='auto'` (the default) sends calls of at most {s['onnx_max_texts']} texts to "
        "ONNX Runtime and larger ones to torch.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
