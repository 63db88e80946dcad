"""The quality subcommands: ``train-binarizer``, ``eval`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from binsearch.cli.common import (
    DEMO_QUERIES,
    SAMPLE_CORPUS,
    UsageError,
    _int_list,
    _positive_int,
    print_hits,
)
from binsearch.codes.codecs import CODECS, LEARNED_CODECS
from binsearch.encoder.model import DEFAULT_MODEL

PEERS = ("rabitq",)  # measured beside ours in eval tables, not codecs of an index
EVAL_CODECS = ("sign", "residual", "grid", "rabitq")  # eval's default: flagship and peer
DEMO_BITS = [1, 2, 4]


def _eval_codec_list(text: str) -> list[str]:
    """Comma-separated codec names for ``eval``: ours plus the faiss peers."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    known = CODECS + LEARNED_CODECS + PEERS
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown codec(s) {unknown or text!r}; choose from {', '.join(known)}"
        )
    return names


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register this module's subcommands on ``sub`` (their handler in ``func``)."""
    p = sub.add_parser(
        "train-binarizer",
        help="train a recurrent binarizer (rbe codec) on float embeddings",
        description=(
            "Fit the learned binarizer on float embeddings alone (no labels) and save it, "
            "for `binsearch index --codec rbe --binarizer MODEL`. With --old, train a model "
            "whose queries score an older model's codes (compatible training)."
        ),
    )
    p.add_argument("embeddings", help=".npy float32 (n, d), or a folder holding corpus.npy")
    p.add_argument("--bits", type=_positive_int, default=2, help="planes per code (default 2)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--width", type=_positive_int, default=None, help="bits per plane (default: d)")
    p.add_argument("--steps", type=_positive_int, default=200, help="training steps (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--old", default=None, help="frozen older model to stay compatible with (its codes)"
    )
    p.add_argument(
        "--old-embeddings",
        default=None,
        help="with --old: the same rows embedded by the old model's encoder",
    )

    p = sub.add_parser(
        "eval",
        help="retrieval quality vs bits per vector on a BEIR dataset",
        description=(
            "For exact float search and each codec and bit count: bits per vector (every stored bit), "
            "recall of the float model's own top-k, nDCG@k with a bootstrap 95% interval, and Recall@100 "
            "over the judged test queries."
        ),
    )
    p.add_argument(
        "dataset", help="BEIR folder with corpus.jsonl, queries.jsonl and qrels/test.tsv"
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model to encode with (default: {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--embeddings",
        default=None,
        help="folder with precomputed corpus.npy, queries.npy and ids.json (skips the encoder)",
    )
    p.add_argument(
        "--codec",
        type=_eval_codec_list,
        default=list(EVAL_CODECS),
        help=(
            "comma-separated codecs (default: sign,residual,grid,rabitq). grid: the learned "
            "rotation + optimal per-vector grid, fitted on the corpus; rbe: the recurrent "
            "binarizer, trained on the corpus; rabitq: faiss IndexRaBitQ (peer, float queries)"
        ),
    )
    p.add_argument(
        "--bits",
        type=_int_list,
        default=[1, 2, 4],
        help="comma-separated bits per dimension (default: 1,2,4)",
    )
    p.add_argument(
        "--k", type=_positive_int, default=10, help="cut-off for nDCG and float recall (default 10)"
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=64, help="encoder batch size (default 64)"
    )
    p.add_argument(
        "--mode",
        choices=("semantic", "hybrid"),
        default="semantic",
        help="semantic: codecs vs bits (default); hybrid: keyword (BM25), semantic and hybrid "
        "ranking side by side, with the first --codec at the first --bits",
    )
    p.add_argument(
        "--out", default=None, help="report folder: results.json, report.md, quality.png"
    )

    p = sub.add_parser(
        "demo",
        help="index the bundled corpus, print quality vs bits, answer two queries",
        description=(
            "The main job on the built-in default: Cranfield (1,400 aeronautics abstracts) and "
            "all-MiniLM-L6-v2. Prints the learned grid codec beside sign, residual and faiss "
            "RaBitQ at 1, 2 and 4 bits per dimension and plots quality against bits per vector."
        ),
    )
    p.add_argument(
        "--out", default="demo-index", help="where to write the demo index (default: ./demo-index)"
    )
    p.add_argument(
        "--plot",
        default="demo-quality.png",
        help="where to write the quality-vs-bits plot (default: ./demo-quality.png)",
    )


def cmd_train_binarizer(args: argparse.Namespace) -> None:
    from binsearch.codes.binarizer import RecurrentBinarizer, load_embedding_file
    from binsearch.codes.train_binarizer import TrainConfig, train_binarizer

    if bool(args.old) != bool(args.old_embeddings):
        raise UsageError("--old and --old-embeddings go together")
    x = load_embedding_file(args.embeddings)
    old = RecurrentBinarizer.load(args.old) if args.old else None
    old_x = load_embedding_file(args.old_embeddings) if args.old_embeddings else None
    started = time.perf_counter()
    model, losses = train_binarizer(
        x,
        args.bits,
        args.width,
        config=TrainConfig(steps=args.steps, seed=args.seed),
        old=old,
        old_x=old_x,
    )
    model.save(args.out)
    print(
        f"trained a {model.planes} x {model.m}-bit binarizer on {x.shape[0]:,} x {x.shape[1]} "
        f"embeddings in {time.perf_counter() - started:.1f}s (loss {losses[0]:.4f} -> "
        f"{losses[-1]:.4f}); wrote {args.out} (version {model.version})",
        file=sys.stderr,
    )


def cmd_eval(args: argparse.Namespace) -> None:
    from binsearch.eval.quality import (
        encode_dataset,
        evaluate_codecs,
        format_table,
        load_embeddings,
        write_report,
    )

    if args.embeddings:
        data = load_embeddings(args.dataset, args.embeddings)
    else:
        from binsearch.encoder.model import Encoder

        data = encode_dataset(args.dataset, Encoder(args.model), args.batch_size)
    name = Path(args.dataset).resolve().name
    if args.mode == "hybrid":
        _eval_modes(args, data, name)
        return
    rows = evaluate_codecs(data, args.codec, args.bits, args.k)
    print(
        f"{name}: {data.corpus.shape[0]:,} documents, {len(data.query_ids)} judged queries, {data.corpus.shape[1]}-d"
    )
    print(format_table(rows, args.k))
    if args.out:
        write_report(rows, args.out, f"{name}: retrieval quality vs bits per vector", args.k)
        print(f"wrote {args.out}/results.json, report.md, quality.png")


def _eval_modes(args: argparse.Namespace, data: Any, name: str) -> None:
    from binsearch.eval.modes import evaluate_modes, format_modes

    codec = args.codec[0]
    if codec in PEERS:
        raise UsageError(f"--mode hybrid ranks by a binsearch codec, not the peer {codec!r}")
    rows = evaluate_modes(args.dataset, data, codec, args.bits[0], args.k)
    print(
        f"{name}: {data.corpus.shape[0]:,} documents, {len(data.query_ids)} judged queries, "
        f"{data.corpus.shape[1]}-d"
    )
    table = format_modes(rows, args.k)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "modes.json").write_text(json.dumps(rows, indent=1) + "\n")
        (out / "modes.md").write_text(f"# {name}: keyword, semantic and hybrid\n\n{table}\n")
        print(f"wrote {args.out}/modes.json, modes.md")


def cmd_demo(args: argparse.Namespace) -> None:
    from binsearch.collection.collection import Collection
    from binsearch.collection.corpus import read_corpus, read_qrels, read_queries
    from binsearch.encoder.model import Encoder
    from binsearch.eval.quality import EvalData, evaluate_codecs, format_table, plot_quality

    docs = read_corpus(SAMPLE_CORPUS, empty="keep")  # 2 empty abstracts; rows match the qrels
    print(f"binsearch demo: Cranfield, {len(docs):,} aeronautics abstracts, model {DEFAULT_MODEL}")
    encoder = Encoder(DEFAULT_MODEL)
    print("encoding documents ...")
    corpus = encoder.encode([d.content for d in docs], batch_size=64, progress=True)
    out = Path(args.out)
    if (out / "collection.json").is_file():  # the previous demo's collection
        import shutil

        shutil.rmtree(out)
    from binsearch.codes.codecs import make_codec

    # The flagship: the learned grid codec, fitted on the corpus's own embeddings.
    codec = make_codec("grid", corpus.shape[1], 2, train_on=corpus)
    with Collection.create(out, codec, 2, DEFAULT_MODEL, encoder=encoder) as collection:
        documents = [{"title": d.title, "text": d.text} for d in docs]
        collection.add([d.id for d in docs], corpus, documents=documents)
    print(f"wrote the collection (learned grid codec, 2 bits per dimension) to {args.out}")

    queries, qrels = read_queries(SAMPLE_CORPUS), read_qrels(SAMPLE_CORPUS)
    judged = [q for q in queries if q in qrels]
    print(f"encoding {len(judged)} judged queries ...")
    q_emb = encoder.encode([queries[q] for q in judged], batch_size=64, progress=True)
    data = EvalData(corpus, q_emb, [d.id for d in docs], judged, qrels)
    print("fitting the grid codec and scoring every codec (sign, residual, grid, RaBitQ) ...")
    rows = evaluate_codecs(data, list(EVAL_CODECS), DEMO_BITS, 10)
    print("\nretrieval quality vs bits per vector (judged queries, no rescoring):\n")
    print(format_table(rows, 10))
    plot_quality(rows, args.plot, "Cranfield (all-MiniLM-L6-v2): quality vs bits per vector", 10)
    print(f"\nwrote the quality-vs-bits plot: {Path(args.plot).resolve()}")

    with Collection.open(out, encoder=encoder) as collection:
        for query in DEMO_QUERIES:
            print(f"\nquery: {query}")
            result = collection.search([query], 5)[0]
            print_hits(
                [
                    {**doc, "score": float(s)}
                    for doc, s in zip(result.documents(), result.scores, strict=True)
                ]
            )
    print(f'\nnext: binsearch search {args.out} "your question" -k 10')


COMMANDS = {
    "train-binarizer": cmd_train_binarizer,
    "eval": cmd_eval,
    "demo": cmd_demo,
}
