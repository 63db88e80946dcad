"""Retrieval quality vs bits per vector: the learned binarizer against every baseline, one run.

For SciFact and Cranfield (MiniLM embeddings from ``../shared/data``), on the
judged test queries, without rescoring unless a row says so:

* ``float``: exact cosine search (the ceiling);
* ``sign``, ``residual`` (2 and 4 planes): the training-free codecs, through ``index``;
* ``faiss-binary``: faiss ``IndexBinaryFlat`` on the sign codes (Hamming);
* ``st-binary`` / ``st-binary+rescore``: sentence-transformers'
  ``quantize_embeddings(..., "ubinary")`` searched with its
  ``semantic_search_faiss``, without and with its float rescoring (x2 oversampling);
* ``itq``: a learned rotation (ITQ) then residual planes, training-free at query
  time, queries coded like documents;
* ``rbe-init``: the binarizer at its ITQ starting point with asymmetric queries
  (isolates what training adds);
* ``rbe``: the trained recurrent binarizer, trained on the corpus's own
  embeddings as ``binsearch index --codec rbe`` does;
* ``rabitq``: faiss ``IndexRaBitQ`` (extended RaBitQ for 2 and 4 bits), float
  queries, bits counted from its ``code_size`` (codes + per-vector factors);
* ``grid``: the flagship (:mod:`binsearch.codes.grid`): ITQ rotation, cosine-optimal
  per-vector uniform grid in the plane format, candidates (query map, centred
  unbiased scores) chosen on the corpus's own held-out rows; ``grid+int8``
  re-ranks its best ``4 k`` by stored int8 vectors (their bits counted).

Then the >= 100k corpus (WordNet glosses, built once by
``benchmarks/build_scale_corpus.py`` and cached outside the repo): 1,000 rows
held out as queries, recall of the float top-10 only (no judgments); skipped
with a message when the cache is absent.

Then compatible training: an old ``rbe`` on MiniLM codes the corpus; a new
binarizer for MPNet embeddings is trained against it; new (MPNet) queries are
scored against the old codes, next to both same-version rows.

Every bit stored per document counts (codes, scales, norms). nDCG@10 carries a
bootstrap 95% interval, and each ``rbe`` row a paired bootstrap interval of its
difference to ``residual`` at the nearest bits per vector.

Run: ``python benchmarks/quality.py`` (about 15 minutes on 2 busy cores);
writes ``results/quality/{results.json,report.md,quality_<dataset>.png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from build_scale_corpus import cache_dir
from quality_varwidth import compatible_varwidth, varwidth, varwidth_extra, varwidth_note

from binsearch.codes.codecs import RbeCodec, make_codec
from binsearch.codes.grid import GridCodec
from binsearch.codes.grid_fit import fit_grid
from binsearch.codes.train_binarizer import TrainConfig, train_binarizer
from binsearch.codes.varwidth import VarWidthCodec
from binsearch.collection.coded_index import CodedIndex
from binsearch.eval.metrics import ndcg_at_k, per_query
from binsearch.eval.quality import (
    RECALL_DEPTH,
    EvalData,
    float_topk,
    load_embeddings,
    plot_quality,
    rabitq_search,
    score_run,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OLD_MODEL, NEW_MODEL = "all-MiniLM-L6-v2", "all-mpnet-base-v2"
K = 10


def per_query_ndcg(data: EvalData, ranked: np.ndarray) -> np.ndarray:
    doc_ids = np.asarray(data.doc_ids)
    runs = {q: doc_ids[r].tolist() for q, r in zip(data.query_ids, ranked, strict=True)}
    return per_query(runs, data.qrels, ndcg_at_k, K)


def paired_ci(a: np.ndarray, b: np.ndarray, samples: int = 2000, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95% interval of ``mean(a - b)`` over queries."""
    rng = np.random.default_rng(seed)
    d = a - b
    means = d[rng.integers(0, len(d), size=(samples, len(d)))].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


class Bench:
    """Scores rankings of one dataset against its float ranking, and keeps the rows."""

    def __init__(self, name: str, data: EvalData) -> None:
        self.name, self.data = name, data
        self.depth = max(K, RECALL_DEPTH)
        _, self.float_rows = float_topk(data.corpus, data.queries, self.depth)
        self.rows: list[dict] = []
        self.per_query: dict[str, np.ndarray] = {}
        self.add("float", 32 * data.corpus.shape[1], self.float_rows, "exact cosine")

    def add(self, codec: str, bpv: int, ranked: np.ndarray, note: str = "", **extra) -> dict:
        label = f"{codec}@{bpv}"
        row = {
            "dataset": self.name,
            "codec": codec,
            "bits_per_vector": int(bpv),
            "note": note,
            **score_run(self.data, ranked, self.float_rows, K),
            **extra,
        }
        self.per_query[label] = per_query_ndcg(self.data, ranked)
        self.rows.append(row)
        print(
            f"  {codec:22s} {bpv:6d} bits  float-recall@10 {row['float_recall@10']:.3f}  "
            f"nDCG@10 {row['ndcg@10']:.4f}  {note}",
            flush=True,
        )
        return row

    def add_codec(
        self, label: str, codec, note: str = "", symmetric: bool = False, **extra
    ) -> dict:
        index = CodedIndex.from_embeddings(self.data.corpus, codec)
        if symmetric:  # queries coded exactly like documents
            codes = codec.encode(self.data.queries)
            weights = codes.scales
            if weights is None:
                weights = np.ones(codes.words.shape[:2], np.float32)
            _, ranked = index.index.search(codes.words, self.depth, weights)
        else:
            _, ranked = index.topk(self.data.queries, self.depth)
        return self.add(label, index.bits_per_vector, ranked, note, **extra)


def st_binary(bench: Bench, rescore: bool) -> None:
    from sentence_transformers.util.quantization import quantize_embeddings, semantic_search_faiss

    data = bench.data
    packed = quantize_embeddings(data.corpus, precision="ubinary")
    results, _ = semantic_search_faiss(
        data.queries,
        corpus_embeddings=packed,
        corpus_precision="ubinary",
        top_k=bench.depth,
        rescore=rescore,
        rescore_multiplier=2,
    )
    ranked = np.array([[h["corpus_id"] for h in hits] for hits in results], dtype=np.int64)
    note = "float rescoring of 2x candidates" if rescore else "Hamming, faiss"
    bench.add("st-binary+rescore" if rescore else "st-binary", packed.shape[1] * 8, ranked, note)


def faiss_binary(bench: Bench) -> None:
    import faiss

    data = bench.data
    d = data.corpus.shape[1]
    index = faiss.IndexBinaryFlat(d)
    index.add(np.packbits(data.corpus >= 0, axis=1))
    _, ranked = index.search(np.packbits(data.queries >= 0, axis=1), bench.depth)
    bench.add("faiss-binary", d, ranked, "IndexBinaryFlat on sign codes")


def rabitq(bench: Bench, bits: int) -> None:
    ranked, bpv = rabitq_search(bench.data.corpus, bench.data.queries, bits, bench.depth)
    bench.add("rabitq", bpv, ranked, f"faiss IndexRaBitQ, {bits} bit(s), float queries")


def grid(bench: Bench, planes: int, timings: dict) -> GridCodec:
    started = time.perf_counter()
    codec = fit_grid(bench.data.corpus, planes)
    seconds = time.perf_counter() - started
    timings[f"grid-{planes}"] = seconds
    report = codec.fit_report
    note = (
        f"{planes} bit(s)/dim as {report.get('shape', planes)} planes x dims, "
        f"fit {seconds:.0f}s, chose {report['chosen']}"
    )
    if "self_recall@10" in report:
        note += (
            " (self-recall "
            + ", ".join(f"{k} {v:.3f}" for k, v in report["self_recall@10"].items())
            + ")"
        )
    bench.add_codec("grid", codec, note)
    return codec


def int8_rescore(bench: Bench, codec: GridCodec, oversample: int = 4) -> None:
    """The grid's best ``oversample * k`` re-ranked by stored int8 vectors (per-vector scale)."""
    data = bench.data
    index = CodedIndex.from_embeddings(data.corpus, codec)
    _, cand = index.topk(data.queries, max(oversample * K, bench.depth))
    # int8 of randomly rotated vectors (orthonormal, so inner products are kept): rotated
    # rows have a smaller peak than raw MiniLM rows, hence a finer step (measured with the
    # ITQ rotation: peak 2.6 vs 3.2 times the rms on SciFact, full-scan recall 0.996 vs 0.993).
    d = data.corpus.shape[1]
    rotation = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))[0]
    z = data.corpus @ rotation
    peak = np.abs(z).max(1, keepdims=True)
    q8 = np.round(z / peak * 127).astype(np.int8)  # stored: d bytes + a float32 scale
    approx = q8.astype(np.float32) * (peak / 127)
    head = cand[:, : oversample * K]
    scores = np.einsum("qd,qkd->qk", data.queries @ rotation, approx[head])
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.concatenate([np.take_along_axis(head, order, 1), cand[:, oversample * K :]], 1)
    bpv = index.bits_per_vector + 8 * data.corpus.shape[1] + 32
    bench.add(
        "grid+int8-rescore",
        bpv,
        ranked,
        f"{codec.planes}x{codec.m} grid, re-rank of {oversample}k by rotated int8",
    )


def trained(x: np.ndarray, planes: int, m: int | None, steps: int, **kw):
    started = time.perf_counter()
    model, losses = train_binarizer(
        x, planes, m, config=TrainConfig(steps=steps), progress=False, **kw
    )
    return model, time.perf_counter() - started, losses


def run_dataset(
    name: str,
    steps: int,
    compat_planes: list[int],
    rbe_planes: list[int],
    codes_only: bool = False,
    varwidth_compat: list[int] | None = None,
) -> tuple[list[dict], dict]:
    base = DATA / name
    data = load_embeddings(base, base / "embeddings" / OLD_MODEL)
    d = data.corpus.shape[1]
    print(
        f"{name}: {data.corpus.shape[0]:,} docs, {len(data.query_ids)} judged queries", flush=True
    )
    bench = Bench(name, data)
    if not codes_only:
        bench.add_codec("sign", make_codec("sign", d), "Hamming", symmetric=True)
        faiss_binary(bench)
        st_binary(bench, rescore=False)
        st_binary(bench, rescore=True)
        for p in (2, 4):
            bench.add_codec("residual", make_codec("residual", d, p), f"{p} planes", symmetric=True)
    timings: dict[str, float] = {}
    for planes in (1, 2, 4):
        rabitq(bench, planes)
        codec = grid(bench, planes, timings)
        # varwidth at the grid's stored bits (whole words), and at bits x d where that is less
        grid_bits = bench.rows[-1]["bits_per_vector"]
        for budget in sorted({64 * (grid_bits // 64), planes * d}):
            varwidth(bench, planes, budget, timings)
        if planes == 1 and not codes_only:
            int8_rescore(bench, codec)
    if codes_only:
        compat = (
            compatible_varwidth(name, data, varwidth_compat, Bench, DATA, (OLD_MODEL, NEW_MODEL))
            if varwidth_compat
            else []
        )
        return bench.rows + compat, timings

    shapes = [(p, None) for p in rbe_planes]
    for planes, m in shapes:
        width = m or d
        init, _, _ = trained(data.corpus, planes, m, 0)
        bench.add_codec("itq", RbeCodec(init), f"{planes} x {width}", symmetric=True)
        bench.add_codec("rbe-init", RbeCodec(init), f"{planes} x {width}, asymmetric queries")
        model, seconds, losses = trained(data.corpus, planes, m, steps)
        timings[f"{planes}x{width}"] = seconds
        row = bench.add_codec(
            "rbe",
            RbeCodec(model),
            f"{planes} x {width}, trained {seconds:.0f}s, loss {losses[0]:.3f}->{losses[-1]:.3f}",
        )
        _compare_to_residual(bench, row)

    compat = _compatible(name, data, steps, compat_planes) if compat_planes else []
    return bench.rows + compat, timings


def run_scale(
    cache: Path,
    queries: int = 1000,
    rbe_planes: list[int] | None = None,
    codes_only: bool = False,
) -> list[dict]:
    """Recall of the float top-10 on the >= 100k corpus, 1,000 held-out rows as queries.

    Every codec is fitted on the documents only (the held-out rows are never
    seen); ``fit_wall_s`` / ``fit_cpu_s`` on the grid rows are the training
    time per ~117k rows.
    """
    x = np.load(cache / "corpus.npy").astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(x.shape[0])
    q, docs = x[order[:queries]], x[order[queries:]]
    d = docs.shape[1]
    print(f"{cache.name}: {docs.shape[0]:,} docs, {queries} held-out queries", flush=True)
    _, truth = float_topk(docs, q, K)
    rows = []

    def add(codec_name: str, bpv: int, ranked: np.ndarray, note: str, **extra) -> None:
        hits = [len(set(a[:K]) & set(b)) for a, b in zip(ranked, truth, strict=True)]
        rows.append(
            {
                "dataset": cache.name,
                "codec": codec_name,
                "bits_per_vector": int(bpv),
                "float_recall@10": float(np.mean(hits) / K),
                "note": note,
                **extra,
            }
        )
        print(
            f"  {codec_name:10s} {bpv:6d} bits  float-recall@10 {rows[-1]['float_recall@10']:.3f}"
            f"  {note}",
            flush=True,
        )

    def run(codec, symmetric: bool = False) -> tuple[int, np.ndarray]:
        index = CodedIndex.from_embeddings(docs, codec)
        if symmetric:  # queries coded exactly like documents
            codes = codec.encode(q)
            weights = codes.scales
            if weights is None:
                weights = np.ones(codes.words.shape[:2], np.float32)
            _, ranked = index.search(codes.words, K, weights)
        else:
            _, ranked = index.topk(q, K)
        return index.bits_per_vector, ranked

    add("sign", *run(make_codec("sign", d), symmetric=True), "Hamming (= st-binary, faiss-binary)")
    for planes in (1, 2, 4):
        ranked, bpv = rabitq_search(docs, q, planes, K)
        add("rabitq", bpv, ranked, f"{planes} bit(s)")
        wall, cpu = time.perf_counter(), time.process_time()
        codec = fit_grid(docs, planes)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        add(
            "grid",
            *run(codec),
            f"{planes} bit(s)/dim as {codec.fit_report.get('shape')}, fit {wall:.0f}s wall / "
            f"{cpu:.0f}s CPU, {codec.fit_report['chosen']}",
            fit_wall_s=wall,
            fit_cpu_s=cpu,
            self_recall=codec.fit_report.get("self_recall@10"),
        )
        grid_bits = rows[-1]["bits_per_vector"]
        for budget in sorted({64 * (grid_bits // 64), planes * d}):
            wall, cpu = time.perf_counter(), time.process_time()
            vw = VarWidthCodec.fit(docs, budget)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            add(
                "varwidth",
                *run(vw),
                varwidth_note(vw, wall, cpu),
                fit_wall_s=wall,
                fit_cpu_s=cpu,
                **varwidth_extra(vw),
            )
    if codes_only:
        return rows
    for planes in (2, 4):
        add("residual", *run(make_codec("residual", d, planes), symmetric=True), f"{planes} planes")
    for planes in rbe_planes or []:
        model, seconds, _ = trained(docs, planes, None, TrainConfig.steps)
        add("rbe", *run(RbeCodec(model)), f"{planes} plane(s), trained {seconds:.0f}s")
    return rows


def _compare_to_residual(bench: Bench, row: dict) -> None:
    """Paired CI of rbe minus the residual row nearest in bits per vector."""
    residual = [r for r in bench.rows if r["codec"] == "residual"]
    ref = min(residual, key=lambda r: abs(r["bits_per_vector"] - row["bits_per_vector"]))
    a = bench.per_query[f"rbe@{row['bits_per_vector']}"]
    b = bench.per_query[f"residual@{ref['bits_per_vector']}"]
    row["vs_residual"] = {
        "residual_bits_per_vector": ref["bits_per_vector"],
        "ndcg_diff": float((a - b).mean()),
        "ndcg_diff_ci95": paired_ci(a, b),
    }


def _compatible(name: str, old_data: EvalData, steps: int, planes_list: list[int]) -> list[dict]:
    """Old (MiniLM) codes, new (MPNet) queries: the compatible binarizer vs both same-version rows."""
    base = DATA / name
    new_data = load_embeddings(base, base / "embeddings" / NEW_MODEL)
    if new_data.doc_ids != old_data.doc_ids or new_data.query_ids != old_data.query_ids:
        raise ValueError(f"{name}: the two models' embeddings hold different rows")
    print(f"{name}: compatible training, {OLD_MODEL} codes <- {NEW_MODEL} queries", flush=True)
    # float recall is against the *new* float model, the ranking the new queries should reproduce
    bench = Bench(name, new_data)
    bench.rows[0]["codec"] = "float (new model)"
    for planes in planes_list:
        old, _, _ = trained(old_data.corpus, planes, None, steps)
        new_same, _, _ = trained(new_data.corpus, planes, old.m, steps)
        new, seconds, _ = trained(
            new_data.corpus, planes, None, steps, old=old, old_x=old_data.corpus
        )
        old_index = CodedIndex.from_embeddings(old_data.corpus, RbeCodec(old))
        bpv = old_index.bits_per_vector
        for label, model, index, queries in (
            ("old/old", old, old_index, old_data.queries),
            (
                "new/new",
                new_same,
                CodedIndex.from_embeddings(new_data.corpus, RbeCodec(new_same)),
                None,
            ),
            ("new-on-old (compat)", new, old_index, None),
        ):
            q = new_data.queries if queries is None else queries
            _, ranked = CodedIndex(RbeCodec(model), index.index).topk(q, bench.depth)
            bench.add(label, bpv, ranked, f"{planes} plane(s), compat trained {seconds:.0f}s")
        old_sign = make_codec("sign", old_data.corpus.shape[1])
        if planes == 1:  # the training-free codec at the same bits, old model only
            index = CodedIndex.from_embeddings(old_data.corpus, old_sign)
            codes = old_sign.encode(old_data.queries)
            _, ranked = index.search(codes.words, bench.depth)
            bench.add("old sign (training-free)", index.bits_per_vector, ranked, "Hamming")
        else:
            codec = make_codec("residual", old_data.corpus.shape[1], planes)
            index = CodedIndex.from_embeddings(old_data.corpus, codec)
            _, ranked = index.topk(old_data.queries, bench.depth)
            bench.add(
                "old residual (training-free)", index.bits_per_vector, ranked, f"{planes} planes"
            )
    for r in bench.rows:
        r["section"] = "compatible"
    return bench.rows


def format_rows(rows: list[dict]) -> str:
    lines = [
        "| codec | bits/vector | float recall@10 | nDCG@10 (95% CI) | Recall@100 | vs residual: ΔnDCG (paired 95% CI) | note |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for r in rows:
        lo, hi = r["ndcg@10_ci95"]
        vs = ""
        if "vs_residual" in r:
            v = r["vs_residual"]
            a, b = v["ndcg_diff_ci95"]
            vs = f"{v['ndcg_diff']:+.4f} ({a:+.3f}…{b:+.3f}) vs {v['residual_bits_per_vector']}"
        lines.append(
            f"| {r['codec']} | {r['bits_per_vector']:,} | {r['float_recall@10']:.3f} | "
            f"{r['ndcg@10']:.4f} ({lo:.3f}–{hi:.3f}) | {r['recall@100']:.3f} | {vs} | {r['note']} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="scifact,cranfield")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--compat-planes", default="1,2", help="'' skips compatible training")
    parser.add_argument("--rbe-planes", default="1,2,4", help="'' skips the recurrent binarizer")
    parser.add_argument("--scale-cache", default=str(cache_dir("wordnet")))
    parser.add_argument(
        "--scale-rbe-planes", default="1", help="rbe planes on the >= 100k corpus ('' skips)"
    )
    parser.add_argument(
        "--scale-only", action="store_true", help="only the >= 100k corpus (no datasets)"
    )
    parser.add_argument(
        "--codes-only",
        action="store_true",
        help="only float, rabitq, grid and varwidth rows (no sign/residual/st/rbe/compat)",
    )
    parser.add_argument(
        "--varwidth-compat",
        default="448,768",
        help="budgets (bits/vector) of varwidth compatible queries, with --codes-only ('' skips)",
    )
    parser.add_argument(
        "--no-scale", action="store_true", help="skip the >= 100k corpus even when cached"
    )
    parser.add_argument("--out", default=str(REPO / "results" / "quality"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (DATA / "scifact").is_dir():
        raise SystemExit(f"datasets not found at {DATA} (../shared/data beside the repo)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_rows, timings, md = (
        [],
        {},
        ["# Retrieval quality vs bits per vector: learned binarizer and baselines\n"],
    )
    md.append(
        f"MiniLM ({OLD_MODEL}) embeddings, judged test queries, no rescoring unless stated; "
        f"bits/vector counts every stored bit (codes + per-document scales/norms). "
        f"rbe: {args.steps} training steps on the corpus's own embeddings, seed 0. "
        f"Command: `python benchmarks/quality.py {' '.join(sys.argv[1:])}`.\n"
    )
    for name in [] if args.scale_only else args.datasets.split(","):
        rows, t = run_dataset(
            name,
            args.steps,
            _ints(args.compat_planes),
            _ints(args.rbe_planes),
            args.codes_only,
            _ints(args.varwidth_compat),
        )
        timings[name] = t
        all_rows += rows
        main_rows = [r for r in rows if r.get("section") != "compatible"]
        compat_rows = [r for r in rows if r.get("section") == "compatible"]
        plot_quality(
            [{**r, "codec": r["codec"]} for r in main_rows if r["codec"] != "st-binary+rescore"],
            out / f"quality_{name}.png",
            f"{name} ({OLD_MODEL}): quality vs bits per vector",
            K,
        )
        md += [
            f"\n## {name}\n",
            format_rows(main_rows),
            f"\n![{name}](quality_{name}.png)\n",
        ]
        if compat_rows:
            md += [
                f"\n### {name}: compatible training ({OLD_MODEL} document codes, {NEW_MODEL} queries)\n",
                "float recall is against the new model's float top-10.\n",
                format_rows(compat_rows),
                "",
            ]
    scale = Path(args.scale_cache)
    if args.no_scale:
        pass
    elif (scale / "corpus.npy").is_file():
        scale_rows = run_scale(
            scale, rbe_planes=_ints(args.scale_rbe_planes), codes_only=args.codes_only
        )
        all_rows += scale_rows
        md += [
            f"\n## {scale.name} (>= 100k documents, 1,000 held-out rows as queries)\n",
            "| codec | bits/vector | float recall@10 | note |",
            "|---|---:|---:|---|",
            *[
                f"| {r['codec']} | {r['bits_per_vector']:,} | {r['float_recall@10']:.3f} | {r['note']} |"
                for r in scale_rows
            ],
        ]
    else:
        shown = str(scale).replace(str(Path.home()), "~")  # no machine paths in reports
        message = (
            f"scale corpus skipped: no cache at {shown}; build it once with "
            "`nice -n 10 python benchmarks/build_scale_corpus.py` (apt-get install wordnet-base)"
        )
        print(message)
        md.append(f"\n{message}\n")
    md.append(f"\nTraining seconds (wall, shared 2-core machine): `{json.dumps(timings)}`\n")
    (out / "results.json").write_text(
        json.dumps({"rows": all_rows, "train_seconds": timings}, indent=2) + "\n"
    )
    (out / "report.md").write_text("\n".join(md))
    print(f"wrote {out}/report.md")


if __name__ == "__main__":
    main()
